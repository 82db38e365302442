"""The jobs launch.convert submits: one ConvertTask per (split, task) of the array, and the MergeJob that depends on
it. Both are picklable callables run by submitit (on SLURM or the local executor): a task stopped by SIGTERM exits
75 and keeps its finished shards; at the time limit it requeues itself through checkpoint(); either resumes from its
journal.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import submitit

from launch.job import EXIT_PREEMPTED
from shards.convert import ConvertError, convert
from shards.parts import ConvertOptions, merge_split
from shards.sources import Source
from shards.splitdir import Part, PartsMissing
from shards.verify import verify_split

PROGRESS_EVERY_S = 60.0
"""A running task logs one progress line this often."""


def cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children (the conversion's worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def exit_now(code: int, message: str = "") -> NoReturn:
    """Leave the process at once, from anywhere (a signal handler inside a C callback included).

    Safe because the writer is: finished shards are fsynced and journaled before anything else happens, and
    a resumed task drops whatever the journal does not vouch for. An exception raised by a signal handler
    would not be: one that lands in a C callback (soundfile's I/O) is printed and ignored.
    """
    if message:
        print(message, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class StopSignals:
    """A task's signal handlers: SIGTERM exits (75); the time-limit signal runs submitit's requeue, then exits."""

    name: str
    time_limit: signal.Signals
    requeue: Callable[[int, types.FrameType | None], object] | int | None

    @classmethod
    def install(cls, name: str) -> StopSignals:
        time_limit = signal.Signals(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))
        handlers = cls(name, time_limit, signal.getsignal(time_limit))
        signal.signal(signal.SIGTERM, handlers.on_term)
        if time_limit != signal.SIGTERM:
            signal.signal(time_limit, handlers.on_time_limit)
        return handlers

    def on_term(self, signum: int, frame: types.FrameType | None) -> None:
        exit_now(
            EXIT_PREEMPTED,
            f"[convert] {self.name}: stopped by SIGTERM; finished shards are kept, a rerun resumes",
        )

    def on_time_limit(self, signum: int, frame: types.FrameType | None) -> None:
        print(f"[convert] {self.name}: time limit; requeueing, the next run resumes", flush=True)
        try:
            if callable(self.requeue):
                self.requeue(signum, frame)  # submitit: checkpoint() -> DelayedSubmission, requeue, sys.exit
        except SystemExit as e:
            exit_now(e.code if isinstance(e.code, int) else 1)
        except BaseException as e:  # e.g. no requeue left: submitit says why
            exit_now(1, f"[convert] {self.name}: not requeued: {e}")
        exit_now(EXIT_PREEMPTED)


@dataclass
class ConvertTask:
    """One array element: converts its part of one split; requeued at the time limit, it resumes."""

    source: Source
    split: str
    out: Path
    options: ConvertOptions
    part: Part
    workers: int = 1
    restarts: int = 0
    """Requeues through checkpoint() at the time limit (SLURM counts all requeues in SLURM_RESTART_COUNT)."""

    @property
    def name(self) -> str:
        return f"{self.source.name}/{self.split} task {self.part.task}/{self.part.tasks}"

    def __call__(self) -> dict[str, Any]:
        StopSignals.install(self.name)
        restarts = max(self.restarts, int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        part = self.part
        print(
            f"[convert] {self.name} on {socket.gethostname()}: entries [{part.start}, {part.stop}) of "
            f"{part.entries}, {self.workers} workers, run {restarts + 1}",
            flush=True,
        )
        t0, cpu0 = time.monotonic(), cpu_seconds()
        last = [t0]

        def progress(entries: int, samples: int, seconds: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                done = entries - part.start
                print(
                    f"[convert] {self.name}: {done}/{part.stop - part.start} entries, {samples} samples, "
                    f"{seconds / 3600:.2f} h of audio",
                    flush=True,
                )

        result = convert(
            self.source,
            self.split,
            self.out,
            **self.options.kwargs(),
            workers=self.workers,
            on_progress=progress,
            part=part,
        )
        wall = time.monotonic() - t0
        resumed = f", resumed after {result.resumed_shards} shards" if result.resumed_shards else ""
        print(
            f"[convert] {self.name}: {result.status}: {result.num_samples} samples in {result.num_shards} "
            f"shards, {len(result.skipped)} skipped, {result.total_seconds / 3600:.2f} h of audio, "
            f"{wall:.1f} s{resumed}",
            flush=True,
        )
        return {
            "split": self.split,
            "task": part.task,
            "status": result.status,
            "num_samples": result.num_samples,
            "num_shards": result.num_shards,
            "audio_seconds": result.total_seconds,
            "wall_seconds": round(wall, 3),
            "cpu_seconds": round(cpu_seconds() - cpu0, 3),
            "resumed_shards": result.resumed_shards,
        }

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit at the time limit: the same task again; it resumes from its journal."""
        return submitit.helpers.DelayedSubmission(replace(self, restarts=self.restarts + 1))


@dataclass
class MergeJob:
    """The final step: merge each split's parts into manifest.json and verify it; fails naming what is missing."""

    source: Source
    splits: list[str]
    out: Path
    options: ConvertOptions
    verify_workers: int = 1

    def __call__(self) -> list[dict[str, Any]]:
        done, errors = [], []
        for split in self.splits:
            where = f"{self.source.name}/{split}"
            try:
                manifest = merge_split(self.source, split, self.out, self.options)
            except PartsMissing as e:
                errors.append(str(e))
                continue
            split_dir = Path(self.out) / self.source.name / split
            report = verify_split(split_dir, workers=self.verify_workers)
            if not report.ok:
                errors.append(
                    f"{where}: tools.verify found {len(report.problems)} problem(s), the first: {report.problems[0]}"
                )
                continue
            print(
                f"[merge] {where}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards, "
                f"{len(manifest['skipped'])} skipped, {manifest['total_seconds'] / 3600:.2f} h of audio; "
                f"verified -> {split_dir}",
                flush=True,
            )
            done.append(
                {"split": split, "num_samples": manifest["num_samples"], "shards": len(manifest["shards"])}
            )
        if errors:
            raise ConvertError("; ".join(errors))
        return done

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """At the time limit (a long verification): run again; merged splits are kept and verified again."""
        return submitit.helpers.DelayedSubmission(self)
