"""One item -> samples, in the conversion's worker processes: decode, downmix, resample, cut into ``max_seconds``
segments (regions cut with them), encode FLAC. Bad audio raises ItemError, whose message is the `skipped` reason
(shards.convert drives this over a source's listing and writes the shards).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from shards.audio import AudioError, audio_info, encode_flac, iter_segments, read_audio
from shards.schema import Region, Sample, SchemaError, validate_sample
from shards.sources.base import Candidate, Item, describe_candidates, resolve_audio

MIN_TAIL_SECONDS = 1.0
"""A last segment shorter than this (or than half of max_seconds) is dropped from a segmented file."""
MIN_CUT_REGION_SECONDS = 0.1
"""A region cut by a segment boundary is kept only if at least this much of it stays in the segment."""
LOSSLESS = (".wav", ".flac")


class ItemError(Exception):
    """One item cannot become a sample; the message is its `skipped` reason."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to turn one item into samples."""

    item: Item
    key: str
    dataset: str
    split: str
    sample_rate: int
    max_seconds: float
    root: Path
    """The source's --src; skip reasons name files relative to it, so manifests do not depend on it."""
    truncated: int = 0
    """How many of the item's texts were cut to the caption cap (counted once the item is written)."""


class Outcome(NamedTuple):
    """What a worker made of one item: samples, or the skip reason; and the naming its audio matched."""

    samples: list[tuple[Sample, bytes]]
    error: str | None
    naming: str | None


def cut_regions(regions: Iterable[Region], start: float, end: float) -> list[Region]:
    """Regions inside [start, end), shifted to the segment; cut ones under MIN_CUT_REGION_SECONDS go."""
    out = []
    for r in regions:
        onset, offset = max(r.onset, start), min(r.offset, end)
        if offset <= onset:
            continue
        if (onset > r.onset or offset < r.offset) and offset - onset < MIN_CUT_REGION_SECONDS:
            continue
        out.append(Region(r.text, round(onset - start, 6), round(offset - start, 6), dict(r.meta)))
    return out


def wav_declared_seconds(path: Path) -> float | None:
    """Duration a WAV header declares (libsndfile clamps it to the bytes present, hiding truncation)."""
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size + (size & 1))
                if len(fmt) < 12:
                    return None
                byte_rate = struct.unpack("<I", fmt[8:12])[0]
            elif cid == b"data":
                if not byte_rate or size in (0, 0xFFFFFFFF):
                    return None
                return size / byte_rate
            else:
                f.seek(size + (size & 1), 1)


def decodable_seconds(path: Path) -> float:
    """How much of a file decodes before the first error (for the reason of a failed item)."""
    try:
        f = sf.SoundFile(str(path))
    except Exception:
        return 0.0
    done = 0
    with f:
        block = max(1, f.samplerate // 10)
        try:
            while (n := len(f.read(block, dtype="float32", always_2d=True))) == block:
                done += n
            done += n
        except Exception:
            pass
        return done / f.samplerate


def windows(
    path: Path, header_seconds: float, max_seconds: float, sample_rate: int
) -> Iterator[tuple[float, np.ndarray, int]]:
    """(start, mono audio at `sample_rate`, rate) of consecutive windows of at most `max_seconds`.

    A file whose header says it fits in one window (the common case) is decoded and resampled in one
    go, the cheapest way; longer ones stream one window at a time so hours never sit in memory.
    """
    if header_seconds <= max_seconds:
        x, sr = read_audio(path, sample_rate)
        if x.size <= round(max_seconds * sr):
            yield 0.0, x, sr
            return
        del x  # the header understated the length: stream it after all
    yield from iter_segments(path, max_seconds, sample_rate)


def cap_texts(item: Item, max_chars: int) -> tuple[Item, int]:
    """`item` with captions and region texts cut to `max_chars` characters, and how many were cut."""
    cut = 0

    def capped(text: str) -> str:
        nonlocal cut
        if len(text) <= max_chars:
            return text
        cut += 1
        return text[:max_chars].rstrip()

    captions = tuple(capped(c) for c in item.captions)
    strong = tuple(dataclasses.replace(r, text=capped(r.text)) for r in item.strong)
    return (dataclasses.replace(item, captions=captions, strong=strong) if cut else item), cut


def convert_item(job: Job, found: Candidate | None = None) -> list[tuple[Sample, bytes]]:
    """Decode, downmix, resample, segment and encode one item; ItemError says why it cannot be used.

    `found` is the item's resolved audio (resolved here if not given).
    """
    item = job.item
    found = found or resolve_audio(item)
    if found is None:
        raise ItemError(f"missing audio: {describe_candidates(item.audio, job.root)}")
    path = found.path
    if path.stat().st_size == 0:
        raise ItemError(f"empty audio: {path} is 0 bytes")
    try:
        header_seconds, _ = audio_info(path)
    except AudioError as e:
        kind = "empty audio" if "empty audio" in str(e) else "undecodable audio"
        raise ItemError(f"{kind}: {e}") from None
    segments: list[tuple[float, float, bytes]] = []  # (start, seconds, flac)
    try:
        for start, x, sr in windows(path, header_seconds, job.max_seconds, job.sample_rate):
            segments.append((start, x.size / sr, encode_flac(x, sr)))
    except AudioError as e:
        good = decodable_seconds(path)
        if good > 0:
            raise ItemError(
                f"truncated audio: {path} decodes {good:.2f}s of {header_seconds:.2f}s, then: {e}"
            ) from None
        raise ItemError(f"undecodable audio: {e}") from None
    decoded = sum(s for _, s, _ in segments)
    if decoded <= 0:
        raise ItemError(f"empty audio: {path} has no samples")
    lossless = path.suffix.lower() in LOSSLESS
    expected = (wav_declared_seconds(path) if path.suffix.lower() == ".wav" else None) or header_seconds
    tolerance = max(0.1, 0.02 * expected) if lossless else max(0.5, 0.1 * expected)
    if expected - decoded > tolerance:
        raise ItemError(
            f"truncated audio: {path} decodes to {decoded:.2f}s but its header says {expected:.2f}s"
        )
    segmented = len(segments) > 1
    if segmented and segments[-1][1] < min(MIN_TAIL_SECONDS, job.max_seconds / 2):
        segments.pop()
    out = []
    for i, (start, seconds, flac) in enumerate(segments):
        strong = cut_regions(item.strong, start, start + seconds)
        if not item.captions and not strong:
            continue  # a strong-only segment without any region teaches nothing
        meta = dict(item.meta)
        if segmented:
            meta["segment"] = {"index": i, "start": round(start, 6)}
        sample = Sample(
            key=f"{job.key}-seg{i:03d}" if segmented else job.key,
            dataset=job.dataset,
            split=job.split,
            source_id=item.source_id,
            duration=seconds,
            sample_rate=job.sample_rate,
            captions=list(item.captions),
            strong=strong,
            meta=meta,
        )
        try:
            validate_sample(sample)
        except SchemaError as e:
            raise ItemError(f"bad sample: {e}") from None
        out.append((sample, flac))
    if not out:
        raise ItemError(f"bad region: no region starts before the end of the audio ({decoded:.2f}s)")
    return out


def run_job(job: Job) -> Outcome:
    """Worker entry point: (samples, None, naming), or ([], skip reason, naming). Never raises for bad input."""
    found = None
    try:
        found = resolve_audio(job.item)
        return Outcome(convert_item(job, found), None, found.naming if found else None)
    except ItemError as e:
        reason = str(e)
    except Exception as e:  # a decoder bug on one odd file must not stop a multi-day conversion
        reason = f"error: {type(e).__name__}: {e}"
    return Outcome([], reason.replace(f"{job.root}{os.sep}", ""), found.naming if found else None)
