"""Per sample: decode the window that is used, resample, crop the regions with it; clips -> an int16 batch."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch

from shards.audio import resample
from shards.records import CorruptSample, Record
from shards.schema import stable_id
from shards.transfer import BatchBuffers

RESAMPLE_CONTEXT = 0.05
"""Seconds of audio decoded on each side of a window that is resampled, so filter edges fall outside it."""
OVERLAP_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# Per sample: decode the window, resample, crop regions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """A decoded window of one sample, ready to collate."""

    key: str
    source: str
    audio: np.ndarray
    start: float
    captions: list[str]
    caption: str
    regions: list[tuple[str, float, float]] = field(default_factory=list)


def crop_regions(
    regions: Sequence[tuple[str, float, float]], start: float, length: float, min_overlap: float
) -> list[tuple[str, float, float]]:
    """Regions seen through the window [start, start+length), in seconds from the window start.

    A region is clipped to the window and kept when the part inside covers at least `min_overlap` of what
    could fit (its own length, or the window's when the region is longer than the window).
    """
    end = start + length
    out = []
    for text, onset, offset in regions:
        a, b = max(onset, start), min(offset, end)
        if b - a <= 0 or b - a + OVERLAP_EPS < min_overlap * min(offset - onset, length):
            continue
        out.append((text, a - start, b - start))
    return out


def pick_crop(
    rng: np.random.Generator,
    total: int,
    window: int,
    sample_rate: int,
    regions: Sequence[tuple[str, float, float]],
    min_overlap: float,
    tries: int = 3,
) -> tuple[int, list[tuple[str, float, float]]]:
    """Random window start (in samples) for a clip of `total` samples, and the regions it keeps.

    Uniform over all starts; when regions exist but none survives `tries` draws, the window is centred on
    a random region (which then survives).
    """
    start = 0
    length = window / sample_rate
    for _ in range(tries):
        start = int(rng.integers(0, total - window + 1))
        kept = crop_regions(regions, start / sample_rate, length, min_overlap)
        if kept or not regions:
            return start, kept
    _, onset, offset = regions[int(rng.integers(len(regions)))]
    centre = (onset + offset) / 2 * sample_rate
    start = int(min(max(round(centre - window / 2), 0), total - window))
    return start, crop_regions(regions, start / sample_rate, length, min_overlap)


def output_frames(f: sf.SoundFile, sample_rate: int) -> int:
    """Length of the file in samples at `sample_rate`."""
    return f.frames if f.samplerate == sample_rate else f.frames * sample_rate // f.samplerate


def read_window(f: sf.SoundFile, sample_rate: int, start: int, length: int) -> np.ndarray:
    """Mono int16 samples [start, start+length) at `sample_rate`; decodes only that part (plus context)."""
    sr = f.samplerate
    if sr == sample_rate:
        f.seek(start)
        x = f.read(length, dtype="int16")
        return x if x.ndim == 1 else x.mean(axis=1).round().astype(np.int16)
    first = start * sr // sample_rate
    context = math.ceil(RESAMPLE_CONTEXT * sr)
    pre = min(context, first)
    count = math.ceil(length * sr / sample_rate) + pre + context
    f.seek(first - pre)
    x = f.read(count, dtype="float32", always_2d=True).mean(axis=1)
    y = resample(x, sr, sample_rate)
    skip = round(pre * sample_rate / sr)
    y = y[skip : skip + length]
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def load_clip(
    record: Record,
    source: str,
    sample_rate: int,
    window: int | None,
    min_overlap: float,
    rng: np.random.Generator | None = None,
    need: str | None = None,
    caption_index: int | None = None,
) -> Clip | None:
    """Decode and crop one record.

    With `rng` (training) the window start is random and one caption is picked (caption `caption_index` when
    given); without it (evaluation) the window starts at 0. `window` None keeps the whole clip. `need`
    "weak"/"strong": return None for a sample without captions/regions. Undecodable audio raises CorruptSample.
    """
    sample = record.sample
    if need == "weak" and not sample.captions:
        return None
    regions = [(r.text, float(r.onset), float(r.offset)) for r in sample.strong]
    if need == "strong" and not regions:
        return None
    try:
        with sf.SoundFile(io.BytesIO(record.flac)) as f:
            total = output_frames(f, sample_rate)
            if total <= 0:
                raise CorruptSample(f"{record.url}: {sample.key}.flac: empty audio")
            length = total if window is None else min(window, total)
            if rng is not None and need == "strong":
                start, kept = (
                    pick_crop(rng, total, length, sample_rate, regions, min_overlap)
                    if length < total
                    else (0, crop_regions(regions, 0.0, length / sample_rate, min_overlap))
                )
            else:
                start = int(rng.integers(0, total - length + 1)) if rng is not None else 0
                kept = crop_regions(regions, start / sample_rate, length / sample_rate, min_overlap)
            audio = read_window(f, sample_rate, start, length)
    except CorruptSample:
        raise
    except Exception as e:
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "audio bytes", str(e))
        raise CorruptSample(f"{record.url}: {sample.key}.flac: cannot decode: {reason}") from None
    if need == "strong" and not kept:
        return None
    caption = ""
    if rng is not None and sample.captions:
        if caption_index is None:
            caption_index = int(rng.integers(len(sample.captions)))
        caption = sample.captions[caption_index]
    return Clip(sample.key, source, audio, start / sample_rate, list(sample.captions), caption, kept)


# ---------------------------------------------------------------------------------------------------------------------
# Mixup
# ---------------------------------------------------------------------------------------------------------------------


def draw_mixup(rng: np.random.Generator, n: int, prob: float, alpha: float) -> list[float | None]:
    """Per clip of a batch of `n`: its mixing weight λ ~ Beta(alpha, alpha) with probability `prob`, else None."""
    mixed = rng.random(n) < prob
    lambdas = rng.beta(alpha, alpha, size=n)
    return [float(lam) if m else None for m, lam in zip(mixed, lambdas)]


def join_captions(first: str, second: str) -> str:
    """The caption of a mixed clip: "A dog barks." + "Rain falls." -> "A dog barks and rain falls."."""
    first = first.rstrip()
    end = ""
    while first and first[-1] in ".!?":
        end, first = first[-1] + end, first[:-1]
    second = second.strip().rstrip(".!?")
    if len(second) > 1 and not second[1].isupper():  # keep acronyms ("TV", "A/C") as they are
        second = second[:1].lower() + second[1:]
    return f"{first.rstrip()} and {second}{end[:1]}"


def mix_clips(clips: Sequence[Clip], lambdas: Sequence[float | None]) -> list[Clip]:
    """Mixup inside a batch: clip i with a weight λ_i becomes round(λ_i·a_i + (1-λ_i)·a_j), j = B-1-i (LAION-CLAP's
    do_mixup pairs each clip with the flipped batch), zero-padded to the longer of the two; its caption becomes
    join_captions(caption_i, caption_j) and its key KEY_i+KEY_j (a new audio). Clips with λ None stay as they are."""
    n = len(clips)
    out = []
    for i, (clip, lam) in enumerate(zip(clips, lambdas, strict=True)):
        other = clips[n - 1 - i]
        if lam is None or other is clip:
            out.append(clip)
            continue
        length = max(len(clip.audio), len(other.audio))
        a = np.zeros(length, np.float64)
        b = np.zeros(length, np.float64)
        a[: len(clip.audio)] = clip.audio
        b[: len(other.audio)] = other.audio
        audio = np.clip(np.round(lam * a + (1.0 - lam) * b), -32768, 32767).astype(np.int16)
        caption = join_captions(clip.caption, other.caption)
        out.append(Clip(f"{clip.key}+{other.key}", clip.source, audio, clip.start, [caption], caption))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------------


def collate(
    clips: Sequence[Clip],
    kind: str,
    length: int | None,
    eval_mode: bool = False,
    buffers: BatchBuffers | None = None,
) -> dict:
    """Clips -> a batch with int16 audio and lengths (see BatchReceiver); strong/eval batches carry regions."""
    n = length if length is not None else max(len(c.audio) for c in clips)
    audio, ack = (
        buffers.take(len(clips), n)
        if buffers is not None
        else (torch.empty(len(clips), n, dtype=torch.int16), None)
    )
    rows = audio.numpy()
    lengths = np.zeros(len(clips), np.int64)
    for i, clip in enumerate(clips):
        rows[i, : len(clip.audio)] = clip.audio
        rows[i, len(clip.audio) :] = 0
        lengths[i] = len(clip.audio)
    # small fields travel as numpy (pickled inline); a tensor would cost a shared-memory segment each
    batch = {
        "kind": kind,
        "audio": audio,
        "lengths": lengths,
        "captions": [c.captions for c in clips] if eval_mode else [c.caption for c in clips],
        "keys": [c.key for c in clips],
        "sources": [c.source for c in clips],
        "clip_ids": np.array([stable_id(c.key) for c in clips], dtype=np.int64),
        "crop_starts": np.array([c.start for c in clips], dtype=np.float32),
    }
    if ack is not None:
        batch["_ack"] = ack
    if kind == "strong" or eval_mode:
        regions = [(i, r) for i, c in enumerate(clips) for r in c.regions]
        batch["region_text"] = [r[0] for _, r in regions]
        batch["region_text_ids"] = np.array([stable_id(r[0]) for _, r in regions], dtype=np.int64)
        batch["region_clip"] = np.array([i for i, _ in regions], dtype=np.int64)
        batch["onsets"] = np.array([r[1] for _, r in regions], dtype=np.float32)
        batch["offsets"] = np.array([r[2] for _, r in regions], dtype=np.float32)
    return batch
