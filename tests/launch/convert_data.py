"""Raw data and comparisons for the launch.convert tests: the synthetic Clotho/TACOS layouts, split contents."""

from __future__ import annotations

import csv
import json
import struct
import tarfile
from pathlib import Path

from tools.convert import main as tools_convert
from tools.synthetic import main as synthetic

RATE = 16000
OPTIONS = ("--sample-rate", str(RATE), "--samples-per-shard", "2")


def make_raw(root: Path, clips: int = 30) -> Path:
    """tools.synthetic's Clotho and TACOS layouts (3 s clips at 16 kHz) under root/clotho and root/tacos."""
    assert synthetic(["--out", str(root), "--clips", str(clips), "--seed", "0", "--seconds", "3"]) == 0
    return root


def clotho_files(raw: Path, split: str) -> list[Path]:
    """The audio files of a Clotho split, in the order its captions CSV lists them (= listing order)."""
    with (raw / "clotho" / "clotho_csv_files" / f"clotho_captions_{split}.csv").open(encoding="utf-8") as f:
        names = [row["file_name"] for row in csv.DictReader(f)]
    return [raw / "clotho" / "clotho_audio_files" / split / name for name in names]


def write_long_wav(path: Path, hours: float = 72.0, rate: int = 8000) -> None:
    """A sparse mono 16-bit WAV of `hours` of silence (the most a WAV holds at 8 kHz): converting and resampling
    it keeps a task busy for minutes, so a test can act on the task while it is in the middle of its range."""
    data = round(hours * 3600 * rate) * 2
    assert data < 2**32 - 64, "a RIFF WAV holds at most 4 GiB"
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header = (
        b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data)
    )
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + data)


def one_process(raw: Path, out: Path, dataset: str, *flags: str) -> Path:
    """The reference: `tools.convert DATASET` in this process, one worker; returns OUT/DATASET."""
    src = raw / dataset.replace("-", "_")
    assert (
        tools_convert([dataset, "--src", str(src), "--out", str(out), *OPTIONS, "--workers", "1", *flags])
        == 0
    )
    return out / dataset


def samples(split_dir: Path) -> list[tuple[str, bytes]]:
    """(member name, bytes) of every tar member of a split, in manifest and tar order."""
    manifest = json.loads((split_dir / "manifest.json").read_text(encoding="utf-8"))
    out = []
    for info in manifest["shards"]:
        with tarfile.open(split_dir / info["name"]) as tar:
            out += [(m.name, tar.extractfile(m).read()) for m in tar]
    return out


def content(split_dir: Path) -> dict:
    """What a split holds up to shard boundaries: the manifest without its shard list, and the samples."""
    manifest = json.loads((split_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest.pop("shards")
    return {"manifest": manifest, "samples": samples(split_dir)}


def split_files(split_dir: Path) -> dict[str, bytes]:
    """Every file of a split folder by name (shards, manifest and anything else left there)."""
    return {p.name: p.read_bytes() for p in sorted(split_dir.iterdir())}
