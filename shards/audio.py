"""Audio I/O shared by the converters, the reader, verification and the tools.

Decoding is soundfile (libsndfile: WAV, FLAC, MP3, OGG); resampling is soxr (high quality);
shards store mono 16-bit FLAC.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
"""File types the tools look for in audio folders (what libsndfile decodes)."""


class AudioError(ValueError):
    """Audio that cannot be used (missing, empty, undecodable); the message says which and why."""


def list_audio_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Audio files (by suffix, any case) in `folder`, or in it and all its subfolders; sorted by relative path,
    hidden files (".name", e.g. macOS "._x.wav" resource forks) left out."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in AUDIO_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def to_mono(x: np.ndarray) -> np.ndarray:
    """[N] or [N, C] -> [N] float32 (channel mean)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        # A matrix-vector product is ~6x faster than mean(axis=1) on interleaved [N, C] frames.
        x = x[:, 0] if x.shape[1] == 1 else x @ np.full(x.shape[1], 1.0 / x.shape[1], np.float32)
    return x


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling of a mono float signal (soxr 'HQ')."""
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x.astype(np.float32, copy=False), sr_in, sr_out, quality="HQ").astype(
        np.float32, copy=False
    )


def audio_info(path: str | Path) -> tuple[float, int]:
    """(duration seconds, sample rate) from the header, without decoding."""
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises a plain RuntimeError/LibsndfileError
        raise AudioError(f"{path}: cannot read audio header: {e}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: empty audio (0 frames)")
    return info.frames / info.samplerate, info.samplerate


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode a whole file to mono float32, resampled to `sample_rate` if given."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio: {e}") from None
    if x.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 frames)")
    x = to_mono(x)
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or Inf")
    if sample_rate is not None and sr != sample_rate:
        x, sr = resample(x, sr, sample_rate), sample_rate
    return x, sr


def iter_segments(
    path: str | Path, max_seconds: float, sample_rate: int | None = None
) -> Iterator[tuple[float, np.ndarray, int]]:
    """Yield (start_seconds, mono float32 segment, rate) of consecutive `max_seconds` windows.

    Only one window (plus the resampler's state) is in memory at a time, so hour-long recordings
    stream. Each window is resampled on its own with a streaming soxr resampler, so segment
    boundaries carry no edge artefacts.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:
        raise AudioError(f"{path}: cannot decode audio: {e}") from None
    with f:
        sr_in = f.samplerate
        sr_out = sample_rate or sr_in
        block = max(1, round(max_seconds * sr_in))
        stream = (
            soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality="HQ") if sr_out != sr_in else None
        )
        start = 0.0
        pending = np.zeros(0, np.float32)
        out_len = max(1, round(max_seconds * sr_out))
        while True:
            try:
                x = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:
                raise AudioError(f"{path}: cannot decode audio at {start:.1f}s: {e}") from None
            last = x.shape[0] < block
            y = to_mono(x)
            if stream is not None:
                y = stream.resample_chunk(y, last=last)
            pending = np.concatenate([pending, y]) if pending.size else y
            while pending.size >= out_len or (last and pending.size):
                seg, pending = pending[:out_len], pending[out_len:]
                if not np.isfinite(seg).all():
                    raise AudioError(f"{path}: audio contains NaN or Inf near {start:.1f}s")
                yield start, seg, sr_out
                start += seg.size / sr_out
            if last:
                break
        if start == 0.0:
            raise AudioError(f"{path}: empty audio (0 frames)")


def encode_flac(x: np.ndarray, sample_rate: int) -> bytes:
    """Mono float32 in [-1, 1] -> 16-bit FLAC bytes (clipped, not wrapped)."""
    pcm = np.clip(np.round(np.asarray(x, np.float32) * 32767.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes, dtype: str = "float32") -> tuple[np.ndarray, int]:
    """FLAC (or any libsndfile format) bytes -> mono array of `dtype` ('float32' or 'int16'), rate."""
    try:
        x, sr = sf.read(io.BytesIO(data), dtype=dtype, always_2d=True)
    except Exception as e:
        raise AudioError(f"cannot decode audio bytes: {e}") from None
    if x.shape[1] == 1:
        return x[:, 0], sr
    return to_mono(x).astype(dtype) if dtype != "float32" else to_mono(x), sr
