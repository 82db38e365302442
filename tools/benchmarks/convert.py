"""Conversion throughput: the real converter against a bare loop over the same files, same run; and in tasks.

Both decode a generated Clotho-layout dataset (44.1 kHz stereo WAV, or MP3 with --format mp3, as YouTube
downloads are), downmix, resample to 32 kHz (soxr HQ) and encode 16-bit FLAC, with the same number of
worker processes; the converter also lists the CSV, allocates keys, segments, validates, writes tar
shards with checksums, the journal and the manifest. Throughput is audio seconds per wall second;
`ratio` is converter / bare loop (the worst over the worker counts), so 1.0 means the sharding machinery
costs nothing. `cpu_ratio` compares CPU seconds (this process and its worker processes), which a busy
machine disturbs less than wall time.

Tasks (--tasks 1 2): the split converted as launch.convert --local does it, T tasks of one worker each
through submitit's local executor. Per task: audio seconds per second of the task's own conversion time
(`per_task_audio_s_per_s`, the mean over tasks); together: all audio over the slowest task's time
(`tasks_audio_s_per_s`) and over the wall time from submitting to the last task's end, process start-up
included (`end_to_end_audio_s_per_s`); all audio over the CPU seconds the tasks used (`audio_s_per_cpu_s`:
what one core-second converts, which a busy machine disturbs least). `task_scaling` is the tasks' throughput
over the single-task run's, same run; merge + verify are timed apart (`merge_verify_s`).

    python -m tools.benchmarks.convert [--clips 24] [--seconds 20] [--workers 1 2] [--tasks 1 2]
                                       [--format wav|mp3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import submitit

from launch.convert_jobs import ConvertTask
from shards.audio import encode_flac, read_audio
from shards.convert import convert
from shards.parts import ConvertOptions, merge_split, plan_split
from shards.sources import SOURCES
from shards.splitdir import write_plan
from shards.verify import verify_split

SOURCE_RATE = 44100
TARGET_RATE = 32000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clips", type=int, default=24, help="clips in the generated dataset (default %(default)s)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per clip (default %(default)s)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per measurement, best kept (default %(default)s)"
    )
    parser.add_argument(
        "--tasks",
        type=int,
        nargs="*",
        default=[1, 2],
        help="task counts to measure through launch.convert's local path, one worker each (default 1 2; "
        "none: skip)",
    )
    parser.add_argument(
        "--format",
        choices=("wav", "mp3"),
        default="wav",
        help="the generated clips' format (mp3: 44.1 kHz stereo MPEG layer III; default %(default)s)",
    )


def make_dataset(root: Path, clips: int, seconds: float, fmt: str = "wav") -> list[Path]:
    """A Clotho development split of noisy stereo tones (WAV or MP3); returns the audio files."""
    rng = np.random.default_rng(0)
    audio_dir = root / "clotho_audio_files" / "development"
    audio_dir.mkdir(parents=True)
    n = round(seconds * SOURCE_RATE)
    t = np.arange(n) / SOURCE_RATE
    rows, files = [], []
    for i in range(clips):
        x = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(n)
        stereo = np.stack([x, 0.8 * x + 0.02 * rng.standard_normal(n)], axis=1).astype(np.float32)
        name = f"bench clip {i:04d}.{fmt}"
        if fmt == "mp3":
            sf.write(audio_dir / name, stereo, SOURCE_RATE, format="MP3", subtype="MPEG_LAYER_III")
        else:
            sf.write(audio_dir / name, stereo, SOURCE_RATE, subtype="PCM_16")
        rows.append(f'"{name}",a generated clip number {i},c2,c3,c4,c5\n')
        files.append(audio_dir / name)
    csv_dir = root / "clotho_csv_files"
    csv_dir.mkdir()
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    (csv_dir / "clotho_captions_development.csv").write_text(header + "".join(rows), encoding="utf-8")
    return files


def bare_one(path: Path) -> bytes:
    """The baseline's whole job for one file: decode, downmix, resample, encode."""
    x, sr = read_audio(path, TARGET_RATE)
    return encode_flac(x, sr)


def bare_loop(files: list[Path], workers: int) -> int:
    """Decode+resample+encode every file (in `workers` spawned processes when > 1); returns FLAC bytes."""
    if workers == 1:
        return sum(len(bare_one(f)) for f in files)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(len(b) for b in pool.map(bare_one, files))


def timed(fn: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children) of one call."""

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    wall, used = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - wall, cpu() - used


def run_in_tasks(root: Path, tasks: int, audio_seconds: float) -> dict[str, Any]:
    """One conversion of the development split in `tasks` local submitit tasks of one worker, then the merge."""
    out = root / "tasks-out"
    shutil.rmtree(out, ignore_errors=True)
    source, options = SOURCES["clotho"](root / "raw"), ConvertOptions(sample_rate=TARGET_RATE)
    plan = plan_split(source, "development", out, options, tasks)
    write_plan(plan.out_dir, plan.record)
    executor = submitit.LocalExecutor(folder=root / "submitit")
    executor.update_parameters(timeout_min=60)
    t0 = time.perf_counter()
    jobs = [executor.submit(ConvertTask(source, "development", out, options, part, 1)) for part in plan.todo]
    results = [job.result() for job in jobs]
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    merge_split(source, "development", out, options)
    report = verify_split(plan.out_dir, workers=tasks)
    merge_verify = time.perf_counter() - t1
    if not report.ok:
        raise RuntimeError(f"the merged split does not verify: {report.problems[0]}")
    slowest = max(r["wall_seconds"] for r in results)
    return {
        "name": f"tasks x{tasks}",
        "tasks": tasks,
        "audio_seconds": audio_seconds,
        "per_task_audio_s_per_s": round(
            sum(r["audio_seconds"] / r["wall_seconds"] for r in results) / len(results), 1
        ),
        "tasks_audio_s_per_s": round(audio_seconds / slowest, 1),
        "end_to_end_audio_s_per_s": round(audio_seconds / wall, 1),
        "audio_s_per_cpu_s": round(audio_seconds / sum(r["cpu_seconds"] for r in results), 1),
        "merge_verify_s": round(merge_verify, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure; returns {"rows": [...], "ratio": worst converter/bare throughput ratio, "task_scaling": ...}."""
    with tempfile.TemporaryDirectory(prefix="sonotext-bench-convert-") as tmp:
        root = Path(tmp)
        files = make_dataset(root / "raw", args.clips, args.seconds, args.format)
        audio_seconds = args.clips * args.seconds
        bare_loop(files[:2], 1)  # warm the page cache and the codecs
        rows = []
        for workers in args.workers:
            out = root / "out"

            def ours(workers: int = workers, out: Path = out) -> None:
                shutil.rmtree(out, ignore_errors=True)
                convert(
                    SOURCES["clotho"](root / "raw"),
                    "development",
                    out,
                    sample_rate=TARGET_RATE,
                    workers=workers,
                )

            # interleaved and best-of-n, so load from other processes hits both sides alike
            runs = [(timed(lambda w=workers: bare_loop(files, w)), timed(ours)) for _ in range(args.repeat)]
            (t_bare, cpu_bare), (t_ours, cpu_ours) = (min(r[0] for r in runs), min(r[1] for r in runs))
            rows.append(
                {
                    "name": f"convert x{workers}",
                    "workers": workers,
                    "audio_seconds": audio_seconds,
                    "bare_s": round(t_bare, 3),
                    "convert_s": round(t_ours, 3),
                    "bare_audio_s_per_s": round(audio_seconds / t_bare, 1),
                    "convert_audio_s_per_s": round(audio_seconds / t_ours, 1),
                    "ratio": round(t_bare / t_ours, 3),
                    "bare_cpu_s": round(cpu_bare, 3),
                    "convert_cpu_s": round(cpu_ours, 3),
                    "cpu_ratio": round(cpu_bare / cpu_ours, 3),
                }
            )
        task_rows = []
        for tasks in args.tasks or []:
            runs = [run_in_tasks(root, tasks, audio_seconds) for _ in range(args.repeat)]
            task_rows.append(max(runs, key=lambda r: r["tasks_audio_s_per_s"]))
    base = rows[0]
    for r in rows:
        r["convert_speedup"] = round(r["convert_audio_s_per_s"] / base["convert_audio_s_per_s"], 2)
        r["bare_speedup"] = round(r["bare_audio_s_per_s"] / base["bare_audio_s_per_s"], 2)
    result: dict[str, Any] = {"rows": rows + task_rows, "ratio": min(r["ratio"] for r in rows)}
    if task_rows:
        single = next((r for r in task_rows if r["tasks"] == 1), task_rows[0])
        for r in task_rows:
            r["task_scaling"] = round(r["tasks_audio_s_per_s"] / single["tasks_audio_s_per_s"], 2)
            r["end_to_end_scaling"] = round(
                r["end_to_end_audio_s_per_s"] / single["end_to_end_audio_s_per_s"], 2
            )
        result["task_scaling"] = task_rows[-1]["task_scaling"]
    return result


def format_table(result: dict[str, Any]) -> str:
    groups = (
        (
            "name",
            "bare_audio_s_per_s",
            "convert_audio_s_per_s",
            "ratio",
            "cpu_ratio",
            "bare_speedup",
            "convert_speedup",
        ),
        (
            "name",
            "per_task_audio_s_per_s",
            "tasks_audio_s_per_s",
            "end_to_end_audio_s_per_s",
            "audio_s_per_cpu_s",
            "task_scaling",
            "end_to_end_scaling",
            "merge_verify_s",
        ),
    )
    lines = []
    for cols in groups:
        rows = [r for r in result["rows"] if cols[1] in r]
        if rows:
            lines.append("  ".join(f"{c:>24}" for c in cols))
            lines += ["  ".join(f"{r[c]!s:>24}" for c in cols) for r in rows]
    lines.append(f"ratio (converter / bare loop, worst): {result['ratio']}")
    if "task_scaling" in result:
        lines.append(f"task scaling (most tasks / one task): {result['task_scaling']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.benchmarks.convert", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
