"""Measuring the GPU benchmark's steps: a device timeline, NVML utilisation, the trainer's step, one row of figures."""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from tools.benchmarks.gpu_figures import mfu
from trainer.config import Config


class Timeline:
    """Named marks on the device's timeline: CUDA events on a GPU (when the GPU got there), wall time on CPU.

    A span is named by the mark that ends it and runs from the previous mark, so consecutive marks partition
    the time; on a GPU a span includes the time the GPU sat idle waiting for the host to queue work.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def spans_ms(self) -> dict[str, float]:
        """Total milliseconds per span name."""
        if self.cuda:
            torch.cuda.synchronize()
        totals: dict[str, float] = defaultdict(float)
        for (_, start), (name, end) in itertools.pairwise(self.marks):
            totals[name] += start.elapsed_time(end) if self.cuda else 1000.0 * (end - start)
        return dict(totals)


class UtilisationSampler:
    """NVML GPU utilisation sampled in a thread while running (torch.cuda.utilization needs pynvml)."""

    def __init__(self, device: torch.device, period: float = 0.05):
        self.device = device
        self.period = period
        self.samples: list[float] = []
        self.available = device.type == "cuda" and _nvml_works(device)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilisationSampler:
        if self.available:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(torch.cuda.utilization(self.device) / 100.0)

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def _nvml_works(device: torch.device) -> bool:
    try:
        torch.cuda.utilization(device)
    except Exception:  # pynvml missing, or NVML unsupported here (containers, MIG): the column stays empty
        return False
    return True


class StepRunner:
    """The trainer's step on one model: trainer.step.train_step under the trainer's Accelerator, parts timed."""

    def __init__(self, model, cfg: Config, device: torch.device, precision: str):
        from trainer.distributed import build_accelerator
        from trainer.optim import build_optimizer

        self.cfg = cfg
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.accelerator = build_accelerator(cfg, cpu=device.type == "cpu")
        self.model, self.optimizer = self.accelerator.prepare(model, build_optimizer(model, cfg.optim))
        self.tokenize = model.tokenize

    def autocast(self):
        """The trainer's autocast context (the run's mixed precision)."""
        return self.accelerator.autocast()

    def step(self, batch: dict[str, Any], timeline: Timeline | None = None) -> float:
        """One optimizer step on `batch` (as trainer.loop does it), marking forward/backward/optimizer; the loss."""
        from trainer.step import train_step

        mark = timeline.mark if timeline is not None else None
        result = train_step(
            self.accelerator, self.model, self.optimizer, self.tokenize, batch, self.cfg, mark
        )
        return sum(result.loss.parts.values())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeat: int = 10) -> float:
    """TFLOP/s of an n x n x n matrix product in `dtype` on `device` (random data, best of `repeat`)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeat):
        timeline = Timeline(device)
        timeline.mark("start")
        a @ b
        timeline.mark("matmul")
        best = min(best, timeline.spans_ms()["matmul"] / 1000.0)
    return 2 * n**3 / best / 1e12


def measure(
    runner: StepRunner,
    stream_factory: Callable[[int], Iterable[dict]],
    workers: int,
    warmup: int,
    steps: int,
    flops: int,
    peak: float,
    progress: Any,
) -> dict[str, Any]:
    """Train `warmup` + `steps` steps on batches of a fresh loader with `workers` processes; one row of figures.

    The warmup is at least 2 steps per loader process: the DataLoader's workers start together and queue 2
    batches each, a burst that would otherwise make the first timed steps look fed faster than they can be.
    """
    from trainer.step import move_batch

    device = runner.device
    batches: Iterator[dict] = iter(stream_factory(workers))
    try:
        for _ in range(max(warmup, 2 * workers)):
            runner.step(move_batch(next(batches), device))
            progress.update(1)
        synchronize(device)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        timeline = Timeline(device)
        losses, waited = [], 0.0
        with UtilisationSampler(device) as util:
            start = time.perf_counter()
            timeline.mark("start")
            for _ in range(steps):
                t = time.perf_counter()
                raw = next(batches)
                waited += time.perf_counter() - t
                batch = move_batch(raw, device)
                timeline.mark("data")
                losses.append(runner.step(batch, timeline))
                progress.update(1)
            synchronize(device)
            wall = time.perf_counter() - start
        spans = {k: v / steps for k, v in timeline.spans_ms().items()}
        peak_bytes = torch.cuda.max_memory_allocated(device) if cuda else None
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    compute_ms = spans["forward"] + spans["backward"]
    busy_ms = compute_ms + spans["optimizer"]
    batch_size = runner.cfg.data.batch_size
    return {
        "workers": workers,
        "samples/s": batch_size * steps / wall,
        "step_ms": 1000.0 * wall / steps,
        "data_ms": spans["data"],
        "wait_ms": 1000.0 * waited / steps,
        "fwd_ms": spans["forward"],
        "bwd_ms": spans["backward"],
        "opt_ms": spans["optimizer"],
        "busy": busy_ms / (busy_ms + spans["data"]),
        "util": util.mean(),
        "peak_gb": peak_bytes / 2**30 if peak_bytes is not None else None,
        "step_gb": (peak_bytes - resident) / 2**30 if peak_bytes is not None else None,
        "tflops": flops / (compute_ms / 1000.0) / 1e12,
        "mfu": mfu(flops, compute_ms / 1000.0, peak),
        "mfu_step": mfu(flops, wall / steps, peak),
        "loss": losses[-1],
        "finite": all(math.isfinite(v) for v in losses),
    }
