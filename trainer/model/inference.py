"""Inference with an AudioTextModel: audio (waveforms or files, any sample rate) and texts -> joint-space embeddings,
and the similarity of texts with every frame of a clip over time.

Everything runs in batches, in eval mode without autograd, on the model's device and in its dtype; results come back
as float32 CPU tensors. Files are decoded and resampled to the model's rate by shards.audio (soxr, as the converters
do); waveforms at another rate are resampled the same way. Clips of one batch are zero-padded to the longest and
masked; padding moves a shorter clip's embedding only slightly (its last spectrogram frames see zeros instead of
reflected audio), and clips of equal length (a dataset of 5 s clips) are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

AudioItem = str | Path | np.ndarray | Tensor
"""A file path, or a mono waveform [N] (numpy or torch)."""


@dataclass
class FrameScores:
    """How well each text matches each moment of one clip."""

    scores: Tensor
    """[Q, F] cosine similarity of text q with frame f (real-audio frames only)."""
    times: Tensor
    """[F] start of each frame in seconds; frame f covers [times[f], times[f] + 1 / frame_rate)."""
    frame_rate: float
    """Frames per second (the audio encoder's)."""
    texts: list[str]


def as_items(audio: Any) -> list[AudioItem]:
    """One path or waveform, a [B, N] batch, or a sequence of paths/waveforms -> a list of single clips."""
    if isinstance(audio, (str, Path)):
        return [audio]
    if isinstance(audio, (np.ndarray, Tensor)):
        if audio.ndim == 1:
            return [audio]
        if audio.ndim == 2:
            return list(audio)
        raise ValueError(f"audio: expected a waveform [N] or a batch [B, N], got shape {tuple(audio.shape)}")
    if isinstance(audio, Sequence):
        items = list(audio)
        if not items:
            raise ValueError("audio: no clips given")
        return items
    raise TypeError(f"audio: expected paths or waveforms, got {type(audio).__name__}")


def load_clip(
    item: AudioItem, sample_rate: int | None, rate: int, max_seconds: float | None = None
) -> np.ndarray:
    """A clip as mono float32 at `rate`: a file decoded and resampled, or a waveform at `sample_rate` resampled."""
    from shards.audio import read_audio, resample

    if isinstance(item, (str, Path)):
        x, _ = read_audio(item, rate)
    else:
        x = item.detach().float().cpu().numpy() if isinstance(item, Tensor) else np.asarray(item, np.float32)
        if x.ndim != 1:
            raise ValueError(
                f"audio: each waveform must be mono [N], got shape {x.shape} (mix channels down first)"
            )
        if x.size == 0:
            raise ValueError("audio: empty waveform")
        if sample_rate is None:
            raise ValueError("sample_rate: required for waveforms (files carry their own)")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate: must be > 0, got {sample_rate}")
        x = resample(x.astype(np.float32, copy=False), sample_rate, rate)
    if max_seconds is not None:
        x = x[: max(1, round(max_seconds * rate))]
    return x


def pad_batch(clips: Sequence[np.ndarray]) -> dict[str, Tensor]:
    """Clips zero-padded into {"audio" [B, N] float32, "audio_mask" [B, N] bool (True = real audio)}."""
    n = max(len(x) for x in clips)
    audio = torch.zeros(len(clips), n)
    mask = torch.zeros(len(clips), n, dtype=torch.bool)
    for i, x in enumerate(clips):
        audio[i, : len(x)] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        mask[i, : len(x)] = True
    return {"audio": audio, "audio_mask": mask}


def audio_batch(
    items: Sequence[AudioItem], sample_rate: int | None, rate: int, max_seconds: float | None = None
) -> dict[str, Tensor]:
    """Decoded, resampled clips padded into one batch (see `load_clip`, `pad_batch`)."""
    return pad_batch([load_clip(item, sample_rate, rate, max_seconds) for item in items])


def _chunks(
    items: Sequence[Any], size: int, progress: bool, desc: str
) -> Iterator[tuple[int, Sequence[Any]]]:
    """(start index, items[start : start + size]) over `items`, with a tqdm bar when `progress`."""
    if size <= 0:
        raise ValueError(f"batch_size: must be > 0, got {size}")
    starts = range(0, len(items), size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", total=len(starts))
    for i in starts:
        yield i, items[i : i + size]


def _audio_forward(model, items, sample_rate, batch_size, max_seconds, progress, skipped=None):
    """(indices into items, model output) per batch. With a `skipped` list, files that cannot be decoded are left
    out and listed there as (path, reason); without one they raise."""
    from shards.audio import AudioError
    from trainer.embed import eval_mode, forward_batch, model_device

    device = model_device(model)
    with eval_mode(model):
        for start, chunk in _chunks(items, batch_size, progress, "audio"):
            clips, index = [], []
            for i, item in enumerate(chunk, start):
                try:
                    clips.append(load_clip(item, sample_rate, model.sample_rate, max_seconds))
                except AudioError as e:
                    if skipped is None:
                        raise
                    skipped.append((str(item), str(e)))
                    continue
                index.append(i)
            if clips:
                yield index, forward_batch(model, pad_batch(clips), None, device)


def embed_audio(
    model,
    audio: Any,
    sample_rate: int | None = None,
    batch_size: int = 16,
    max_seconds: float | None = None,
    progress: bool = False,
) -> Tensor:
    """[N, D] L2-normalised clip embeddings of `audio` (paths, waveforms at `sample_rate`, or a [B, N] batch)."""
    outputs = _audio_forward(model, as_items(audio), sample_rate, batch_size, max_seconds, progress)
    return torch.cat([out.audio_clip.float().cpu() for _, out in outputs])


def embed_files(
    model,
    paths: Sequence[str | Path],
    batch_size: int = 16,
    max_seconds: float | None = None,
    progress: bool = False,
) -> tuple[Tensor, list[int], list[tuple[str, str]]]:
    """Clip embeddings of many files, going on past files that cannot be decoded: (embeddings [K, D] of the files
    that could be, their indices in `paths`, (path, reason) for each of the others)."""
    skipped: list[tuple[str, str]] = []
    parts, kept = [], []
    for index, out in _audio_forward(model, list(paths), None, batch_size, max_seconds, progress, skipped):
        parts.append(out.audio_clip.float().cpu())
        kept += index
    embeddings = torch.cat(parts) if parts else torch.zeros(0, model.model_config.embed_dim)
    return embeddings, kept, skipped


def embed_text(model, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Tensor:
    """[T, D] L2-normalised embeddings of `texts`."""
    from trainer.embed import eval_mode, forward_batch, model_device

    if isinstance(texts, str):
        raise TypeError("texts: expected a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts: no texts given")
    device = model_device(model)
    parts = []
    with eval_mode(model):
        for _, chunk in _chunks(texts, batch_size, progress, "text"):
            parts.append(forward_batch(model, None, chunk, device).text.float().cpu())
    return torch.cat(parts)


def frame_scores(
    model,
    audio: Any,
    sample_rate: int | None = None,
    texts: Sequence[str] = (),
    batch_size: int = 16,
    max_seconds: float | None = None,
    progress: bool = False,
) -> list[FrameScores]:
    """For each clip of `audio`: the cosine similarity of every text with every real-audio frame, with frame times."""
    text = embed_text(model, texts)
    results = []
    for _, out in _audio_forward(model, as_items(audio), sample_rate, batch_size, max_seconds, progress):
        frames = out.audio_frames.float().cpu()
        rate = float(out.frame_rate)
        for emb, mask in zip(frames, out.frame_mask.cpu()):
            index = torch.nonzero(mask).squeeze(1)
            results.append(FrameScores(text @ emb[index].T, index.double() / rate, rate, list(texts)))
    return results
