"""Small shards in the DESIGN format (tar of KEY.flac + KEY.json, manifest.json) for reader/mixing tests.

Audio is an int16 ramp: the sample at position n of a clip has value (n % 32768) - 16384, so a cropped
window tells exactly where it starts.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shards.audio import encode_flac

MTIME = 1_700_000_000


def ramp(n: int) -> np.ndarray:
    """int16 ramp of n samples: value at position i is (i % 32768) - 16384."""
    return ((np.arange(n) % 32768) - 16384).astype(np.int16)


def ramp_position(value: float) -> int:
    """Position in the clip of a float sample taken from a ramp clip (inverse of `ramp`)."""
    return round(value * 32768) + 16384


def sample_meta(
    key: str,
    seconds: float,
    sample_rate: int,
    captions: list[str],
    strong: list[tuple[str, float, float]] = (),
    dataset: str = "toy",
    split: str = "train",
) -> dict:
    return {
        "key": key,
        "dataset": dataset,
        "split": split,
        "source_id": f"{key}.wav",
        "duration": seconds,
        "sample_rate": sample_rate,
        "captions": list(captions),
        "strong": [{"text": t, "onset": a, "offset": b} for t, a, b in strong],
        "meta": {},
    }


def flac_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """int16 samples -> FLAC bytes that decode to exactly these values."""
    return encode_flac(pcm.astype(np.float32) / 32767.0, sample_rate)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar with the given (name, bytes) members, fixed mtime/owner like the production writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))


def write_tars(
    folder: Path,
    samples: list[tuple[dict, np.ndarray]],
    per_shard: int,
    sample_rate: int,
    manifest: bool = True,
    prefix: str = "toy-train",
) -> Path:
    """Write (meta, int16 audio) samples as hand-made tars `{prefix}-NNNNNN.tar` (+ manifest.json) into `folder`.

    Not the production writer (tests.helpers.write_split is): reader tests need shards without a manifest,
    without checksums, or with exact int16 ramps."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for s, first in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[first : first + per_shard]
        members = []
        for meta, pcm in chunk:
            members.append((f"{meta['key']}.flac", flac_bytes(pcm, sample_rate)))
            members.append((f"{meta['key']}.json", json.dumps(meta).encode("utf-8")))
        name = f"{prefix}-{s:06d}.tar"
        write_tar(folder / name, members)
        entries.append(
            {
                "name": name,
                "num_samples": len(chunk),
                "seconds": sum(len(p) / sample_rate for _, p in chunk),
                "bytes": (folder / name).stat().st_size,
                "sha256": "",
            }
        )
    if manifest:
        doc = {
            "dataset": samples[0][0]["dataset"],
            "split": samples[0][0]["split"],
            "sample_rate": sample_rate,
            "num_samples": len(samples),
            "total_seconds": sum(e["seconds"] for e in entries),
            "shards": entries,
            "skipped": [],
        }
        (folder / "manifest.json").write_text(json.dumps(doc))
    return folder


def make_samples(
    name: str,
    n: int,
    sample_rate: int,
    seconds: tuple[float, float] = (0.5, 1.0),
    strong: bool = False,
    seed: int = 0,
) -> list[tuple[dict, np.ndarray]]:
    """`n` ramp samples with keys `{name}-{i:04d}`, two captions each; strong ones get 1-3 regions."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dur = round(float(rng.uniform(*seconds)) * sample_rate) / sample_rate
        regions = []
        if strong:
            for j in range(int(rng.integers(1, 4))):
                a = float(rng.uniform(0, dur * 0.8))
                b = float(min(dur, a + rng.uniform(0.05, dur / 2)))
                regions.append((f"{name} event {(i + j) % 5}", round(a, 4), round(b, 4)))
        meta = sample_meta(
            f"{name}-{i:04d}",
            dur,
            sample_rate,
            [f"{name} clip {i} first", f"{name} clip {i} second"],
            regions,
            dataset=name,
        )
        out.append((meta, ramp(round(dur * sample_rate))))
    return out


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """A weak source (2 sources x 4 shards) and a strong source (3 shards), 8 kHz, 0.5-1 s clips."""
    root = tmp_path_factory.mktemp("toy")
    write_tars(root / "wa", make_samples("wa", 40, 8000, seed=1), 10, 8000, prefix="wa-train")
    write_tars(root / "wb", make_samples("wb", 40, 8000, seed=2), 10, 8000, prefix="wb-train")
    write_tars(root / "st", make_samples("st", 30, 8000, strong=True, seed=3), 10, 8000, prefix="st-train")
    return root


@pytest.fixture(scope="session")
def kit():
    """This module's helpers (ramp, write_tars, make_samples, ...) for tests that build their own shards."""
    return sys.modules[__name__]
