"""Loader throughput: the training pipeline against a bare soundfile decode of the same FLAC files, same run.

The pipeline (shards.mixing.MixedStream: tar read, JSON, FLAC decode of the window, crop, collate, int16 across
processes, float32 in the consumer) reads shards written by the real shard writer; the baseline only decodes
the same clips from loose .flac files with soundfile, with W processes. A third loader follows LAION-CLAP's
approach (webdataset pipeline, per-sample decode to float32, random crop, default collation of float32
batches across processes; soundfile stands in for torchaudio, which is not a dependency).

`ratio` = pipeline samples/s with the most workers measured (W) ÷ bare decode samples/s with W processes.
`cpu_ratio` compares CPU time per sample instead (this process and its worker processes, from /proc on
Linux), which other load on a shared machine disturbs much less than wall time. Each figure is the best of
`--repeat` runs; the loaders are measured interleaved so drifting load affects them alike.

Streaming: `--serve` serves the generated shards from `tools.serve` (its own process, 127.0.0.1) and measures the
same pipeline reading them over http against reading the files; `--url URL --local DIR` does the same for a split
you host (http(s), s3, gs, hf) and its copy on disk. There `ratio` = samples/s over the url ÷ from the files, and
`cpu_ratio` = CPU per sample from the files ÷ over the url (the server's CPU not counted).

    python -m tools.bench loader [--clips 64] [--seconds 10] [--workers 0 1 2] [--json PATH]
    python -m tools.bench loader --serve [--workers 0 2 4]
    python -m tools.bench loader --url https://host/shards/x/train --local /data/shards/x/train
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from shards.audio import encode_flac
from shards.mixing import MixedStream
from shards.schema import Sample
from shards.writer import ShardWriter
from tools.bench import format_table
from trainer.config import DataConfig, SourceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", type=int, default=64, help="clips generated (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per clip (default %(default)s)")
    parser.add_argument(
        "--sample-rate", type=int, default=32000, help="shard and model rate (default %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default %(default)s)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the clips per measurement")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="DataLoader workers to measure (default 0 1 2)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement, best kept (default 2)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="streaming: read the generated shards from a loopback HTTP server (tools.serve) vs from the files",
    )
    parser.add_argument(
        "--url", default=None, help="streaming: a split folder (or pattern) url to read, vs --local"
    )
    parser.add_argument("--local", default=None, help="with --url: the same shards on disk (the baseline)")


def make_data(root: Path, clips: int, seconds: float, sample_rate: int) -> list[Path]:
    """Noisy tone clips as loose FLAC files and as shards (4 per split); returns the loose files."""
    rng = np.random.default_rng(0)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    files = []
    (root / "flac").mkdir(parents=True)
    with ShardWriter(
        root / "shards", "bench", "train", sample_rate, max_samples=max(1, clips // 4)
    ) as writer:
        for i in range(clips):
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t + i)
            x = 0.3 * envelope * np.sin(2 * np.pi * (150 + 29 * i) * t) + 0.03 * rng.standard_normal(n)
            flac = encode_flac(x.astype(np.float32), sample_rate)
            path = root / "flac" / f"clip{i:04d}.flac"
            path.write_bytes(flac)
            files.append(path)
            sample = Sample(
                key=f"bench-clip{i:04d}",
                dataset="bench",
                split="train",
                source_id=path.name,
                duration=n / sample_rate,
                sample_rate=sample_rate,
                captions=[f"a generated tone number {i}", "a humming tone with noise"],
            )
            writer.write(sample, flac)
    return files


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------


def _decode_files(paths: list[str]) -> int:
    for p in paths:
        sf.read(p, dtype="float32")
    return len(paths)


def cpu_seconds(exclude: frozenset[int] = frozenset()) -> float:
    """CPU time of this process and its live child processes (worker processes; Linux /proc, else self only),
    leaving out the children in `exclude` (a server we started)."""
    total = time.process_time()
    proc = Path("/proc")
    if not proc.is_dir():
        return total
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and int(stat.parent.name) not in exclude:
            # fields after the command: state, ppid, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


EXCLUDED: set[int] = set()
"""Child processes whose CPU time is not ours (the loopback server of --serve)."""


def bare_decode(files: list[Path], processes: int, passes: int) -> tuple[float, float]:
    """(samples/s, CPU ms/sample) of decoding every file `passes` times with soundfile in `processes` processes."""
    names = [str(f) for f in files] * passes
    if processes <= 1:
        return _measure(lambda: _decode_files(names), len(names))
    chunks = [names[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_decode_files, [[]] * processes))  # start the processes before timing
        return _measure(lambda: sum(pool.map(_decode_files, chunks)), len(names))


def _measure(work: Any, samples: int) -> tuple[float, float]:
    exclude = frozenset(EXCLUDED)
    cpu, start = cpu_seconds(exclude), time.perf_counter()
    work()
    wall, cpu = time.perf_counter() - start, cpu_seconds(exclude) - cpu
    return samples / wall, cpu / samples * 1e3


def pipeline(root: Path, workers: int, samples: int, args: argparse.Namespace) -> tuple[float, float]:
    """Samples/s of MixedStream batches over root/shards (see `stream_rate`)."""
    return stream_rate(str(root / "shards"), workers, samples, args)


def stream_rate(urls: str, workers: int, samples: int, args: argparse.Namespace) -> tuple[float, float]:
    """Samples/s of MixedStream batches from `urls` (after each worker's first batch, which includes start-up)."""
    cfg = DataConfig(
        sample_rate=args.sample_rate,
        clip_seconds=args.seconds,
        batch_size=args.batch_size,
        num_workers=workers,
        weak=[SourceConfig("bench", urls, 1.0)],
        strong=[],
        strong_every=0,
        shuffle_buffer=8,
    )
    return _timed(iter(MixedStream(cfg, seed=0)), max(1, workers), samples, args.batch_size)


def laion_style(root: Path, workers: int, samples: int, args: argparse.Namespace) -> tuple[float, float]:
    """Samples/s of a LAION-CLAP-style webdataset loader over the same shards."""
    urls = sorted(str(p) for p in (root / "shards").glob("*.tar"))
    window = round(args.seconds * args.sample_rate)

    def preprocess(sample: dict) -> dict:
        audio, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        if len(audio) > window:
            start = random.randint(0, len(audio) - window)
            audio = audio[start : start + window]
        else:
            audio = np.pad(audio, (0, window - len(audio)))
        meta = json.loads(sample["json"])
        return {"waveform": torch.from_numpy(audio), "text": random.choice(meta["captions"])}

    dataset = (
        wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None)
        .shuffle(8)
        .map(preprocess)
        .batched(args.batch_size, collation_fn=_collate_float)
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return _timed(iter(loader), max(1, workers), samples, args.batch_size)


def _collate_float(samples: list[dict]) -> dict:
    return {"waveform": torch.stack([s["waveform"] for s in samples]), "text": [s["text"] for s in samples]}


def _touch(batch: dict) -> None:
    """Read one value per memory page of the audio, as a consumer would (pages of shared memory fault in)."""
    audio = batch["audio" if "audio" in batch else "waveform"]
    float(audio.reshape(-1)[::1024].sum())


def _timed(batches: Any, warmup: int, samples: int, batch_size: int) -> tuple[float, float]:
    for _ in range(warmup):
        next(batches)
    n = max(1, samples // batch_size)
    try:
        return _measure(lambda: [_touch(next(batches)) for _ in range(n)], n * batch_size)
    finally:  # generator (ours) or DataLoader iterator: stop the worker processes now
        close = getattr(batches, "close", None) or getattr(batches, "_shutdown_workers", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.serve or args.url:
        return run_streaming(args)
    root = Path(tempfile.mkdtemp(prefix="sonotext-bench-loader-"))
    try:
        files = make_data(root, args.clips, args.seconds, args.sample_rate)
        samples = args.clips * args.passes
        names = ("bare soundfile decode", "sonotext pipeline", "LAION-CLAP-style webdataset")
        rate: dict[tuple[str, int], float] = {}
        cpu: dict[tuple[str, int], float] = {}
        for _ in range(args.repeat):
            for w in args.workers:
                for name in names:
                    if name == names[0]:
                        r, c = bare_decode(files, max(1, w), args.passes)
                    elif name == names[1]:
                        r, c = pipeline(root, w, samples, args)
                    else:
                        r, c = laion_style(root, w, samples, args)
                    rate[name, w] = max(rate.get((name, w), 0.0), r)
                    cpu[name, w] = min(cpu.get((name, w), math.inf), c)
        rows = [
            {
                "loader": name,
                "workers": w,
                "samples/s": rate[name, w],
                "audio s/s": rate[name, w] * args.seconds,
                "vs bare": rate[name, w] / rate[names[0], w],
                "cpu ms/sample": cpu[name, w],
                "cpu vs bare": cpu[names[0], w] / cpu[name, w],
            }
            for w in args.workers
            for name in names
        ]
        top = max(args.workers)
        return {
            "rows": rows,
            "ratio": rate[names[1], top] / rate[names[0], top],
            "cpu_ratio": cpu[names[0], top] / cpu[names[1], top],
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming: the same pipeline over a url vs over the files
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def served(folder: Path) -> Iterator[str]:
    """`python -m tools.serve FOLDER --port 0` in its own process (its CPU left out of ours): its url."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.serve", str(folder), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    EXCLUDED.add(proc.pid)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r"at (http://\S+?)/?$", line.strip())
        if not found:
            raise RuntimeError(f"tools.serve did not start: {line!r}")
        yield found.group(1)
    finally:
        proc.kill()
        proc.wait()
        EXCLUDED.discard(proc.pid)


def run_streaming(args: argparse.Namespace) -> dict[str, Any]:
    """--serve / --url: the pipeline over the url vs over the same shards on disk."""
    if args.serve and args.url:
        raise SystemExit("--serve and --url: choose one (--serve makes the data and serves it itself)")
    if args.url and not args.local:
        raise SystemExit("--url needs --local: the same shards on disk, for the baseline")
    if args.serve:
        root = Path(tempfile.mkdtemp(prefix="sonotext-bench-loader-"))
        try:
            make_data(root, args.clips, args.seconds, args.sample_rate)
            with served(root) as url:
                return compare_streaming(str(root / "shards"), f"{url}/shards", "http (loopback)", args)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return compare_streaming(args.local, args.url, args.url, args)


def compare_streaming(local: str, url: str, label: str, args: argparse.Namespace) -> dict[str, Any]:
    samples = args.clips * args.passes
    sources = {"local files": local, label: url}
    rate: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}
    for _ in range(args.repeat):
        for w in args.workers:
            for name, urls in sources.items():
                r, c = stream_rate(urls, w, samples, args)
                rate[name, w] = max(rate.get((name, w), 0.0), r)
                cpu[name, w] = min(cpu.get((name, w), math.inf), c)
    rows = [
        {
            "loader": f"sonotext pipeline, {name}",
            "workers": w,
            "samples/s": rate[name, w],
            "audio s/s": rate[name, w] * args.seconds,
            "vs local": rate[name, w] / rate["local files", w],
            "cpu ms/sample": cpu[name, w],
        }
        for w in args.workers
        for name in sources
    ]
    top = max(args.workers)
    return {
        "rows": rows,
        "ratio": rate[label, top] / rate["local files", top],
        "cpu_ratio": cpu["local files", top] / cpu[label, top],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    print(format_table(result["rows"]))
    print(f"ratio: {result['ratio']:.3f}  cpu_ratio: {result['cpu_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
