"""GPU training benchmark: a realistic audio-text model fed by the real loader — samples/s, step breakdown, memory, MFU.

The model is AST-base (or LAION-CLAP's HTSAT) + RoBERTa-base, random init from their configs, trained with the
trainer's own step (trainer.step.train_step under the trainer's Accelerator: autocast, compute_loss, backward,
gradient clipping, AdamW from trainer.optim; Accelerate's GradScaler in fp16) on batches from
shards.mixing.MixedStream over synthetic shards (synthetic.layouts -> the Clotho converter).

Each step is split on the device's own timeline (CUDA events; wall clock on CPU) into data (waiting for the
loader + host-to-device copy), forward (tokenize + both towers + loss), backward, optimizer (clip + AdamW).
Rows: the model with and without gradient checkpointing at `--workers` loader processes, then the loader check:
the same training with each of `--loader-workers`, showing how much of the step the GPU waits for data.

- FLOPs: counted once with torch.utils.flop_counter over one forward+backward (matmuls, convolutions,
  attention), with checkpointing off, so recomputation never counts as useful work.
- tflops = FLOPs per step / (forward + backward time); mfu = tflops / peak; mfu_step uses the whole step time.
- peak: --peak-tflops, else the dense bf16 tensor peak of the GPU model (PEAK_TFLOPS), else a matmul measured
  in this run. `matmul_tflops` (an n x n x n product in the run's precision) is always measured.
- peak_gb: torch.cuda.max_memory_allocated over the timed steps; step_gb: that peak minus what stays allocated
  between steps (weights, optimizer state), i.e. activations + gradients + temporaries.
- busy: (forward + backward + optimizer) / step on the device timeline; util: NVML's GPU utilisation sampled
  during the steps (only when pynvml is installed).

`ratio` = mfu of the bf16 model without checkpointing (goal >= 0.40); `memory_ratio` = peak memory with ÷ without
checkpointing (goal <= 0.5). The tiny mode (hidden 32, one layer, 1 s clips, batch 2, 2 steps) runs in seconds on
CPU and exercises every code path.

    python -m tools.bench gpu [--audio ast|clap_htsat] [--batch-size 64] [--steps 20] [--workers 8] [--json PATH]
    python -m tools.bench gpu --device cpu --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from trainer.config import Config, load_config

PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    # Dense (no sparsity) bf16 tensor-core peak per GPU from NVIDIA's datasheets; the first matching pattern wins.
    (r"H100.*PCIe", 756.0),
    (r"H[12]00.*NVL", 835.0),
    (r"H100|H200", 989.4),  # SXM / HBM3 boards and GH200
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA30\b", 165.0),
    (r"\bA10\b", 125.0),
)

MFU_TARGET = 0.40
MEMORY_TARGET = 0.5
ROBERTA_VOCAB = 50265

MODELS: dict[str, list[str]] = {
    # AST-base (768 wide, 12 layers, 12 heads, 128 mel bins, 1024-frame windows).
    "ast": [
        "model.audio.name=ast",
        "model.audio.hidden_size=768",
        "model.audio.num_layers=12",
        "model.audio.num_heads=12",
        "model.audio.n_mels=128",
    ],
    # LAION-CLAP's HTSAT (Swin: 96 wide patches, depths 2-2-6-2, 4..32 heads, 64 mel bins; 768 out).
    "clap_htsat": [
        "model.audio.name=clap_htsat",
        "model.audio.hidden_size=96",
        "model.audio.num_layers=4",
        "model.audio.num_heads=4",
        "model.audio.n_mels=64",
        "model.audio.overrides={depths: [2, 2, 6, 2]}",
    ],
}
TEXT = [  # RoBERTa-base with its full vocabulary
    "model.text.name=roberta",
    "model.text.hidden_size=768",
    "model.text.num_layers=12",
    "model.text.num_heads=12",
    f"model.text.overrides={{vocab_size: {ROBERTA_VOCAB}}}",
    "model.embed_dim=512",
]
TINY_MODELS: dict[str, list[str]] = {
    "ast": [
        "model.audio.name=ast",
        "model.audio.hidden_size=32",
        "model.audio.num_layers=1",
        "model.audio.num_heads=2",
        "model.audio.n_mels=32",
        "model.audio.overrides={max_length: 128}",
    ],
    "clap_htsat": [
        "model.audio.name=clap_htsat",
        "model.audio.hidden_size=16",
        "model.audio.num_layers=2",
        "model.audio.num_heads=2",
        "model.audio.n_mels=32",
    ],
}
TINY_TEXT = [
    "model.text.name=roberta",
    "model.text.hidden_size=32",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "model.text.max_length=16",
    "model.embed_dim=32",
]


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved benchmark settings (the tiny mode fills in small defaults)."""

    device: torch.device
    tiny: bool
    audio: str
    precision: str
    batch_size: int
    seconds: float
    sample_rate: int
    steps: int
    warmup: int
    workers: int
    loader_workers: tuple[int, ...]
    loader_steps: int
    checkpointing: tuple[bool, ...]
    peak_tflops: float | None
    matmul_size: int
    clips: int
    data: str | None
    seed: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cpus = os.cpu_count() or 1
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu for a dry run)")
    parser.add_argument(
        "--tiny", action="store_true", help="hidden 32, 1 layer, 1 s clips, batch 2, 2 steps: a CPU dry run"
    )
    parser.add_argument("--audio", choices=sorted(MODELS), default="ast", help="audio tower (default ast)")
    parser.add_argument(
        "--precision", choices=["bf16", "fp16", "no"], default="bf16", help="autocast dtype (default bf16)"
    )
    parser.add_argument("--batch-size", type=_positive_int, help="clips per step (default 64; tiny 2)")
    parser.add_argument("--seconds", type=_positive_float, help="clip seconds (default 10; tiny 1)")
    parser.add_argument(
        "--sample-rate", type=_positive_int, help="shard and model sample rate (default 32000; tiny 16000)"
    )
    parser.add_argument("--steps", type=_positive_int, help="timed steps per model row (default 20; tiny 2)")
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        help="untimed steps first, at least 2 per loader process (default 3; tiny 1)",
    )
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        help=f"loader processes for the model rows (default {min(8, cpus)}: min(8, CPUs); tiny 0)",
    )
    parser.add_argument(
        "--loader-workers",
        type=_non_negative_int,
        nargs="*",
        help="loader processes of the loader check; none skips it (default 0 2 4 8; tiny 0 2)",
    )
    parser.add_argument(
        "--loader-steps", type=_positive_int, help="timed steps per loader row (default 20; tiny 2)"
    )
    parser.add_argument(
        "--checkpointing",
        choices=["both", "off", "on"],
        default="both",
        help="gradient checkpointing rows to measure (default both: needed for memory_ratio)",
    )
    parser.add_argument(
        "--peak-tflops", type=_positive_float, help="device peak TFLOP/s for MFU (default: table by GPU name)"
    )
    parser.add_argument("--clips", type=_positive_int, help="synthetic clips generated (default 64; tiny 6)")
    parser.add_argument(
        "--data",
        help="existing shards to read instead of generating (a folder or brace pattern of captioned shards)",
    )
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")


def _checked(cast, test, what: str):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def resolve(args: argparse.Namespace) -> Settings:
    """Settings from parsed arguments; a device or precision this machine cannot run is a one-line error."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(
            f"error: --device {args.device!r} is not a torch device (e.g. cuda, cuda:1, cpu)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device {args.device}: no CUDA device is visible (torch {torch.__version__}); "
            "use --device cpu --tiny for a dry run"
        )
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"error: --device {args.device}: only cuda and cpu are supported")
    if args.precision == "fp16" and device.type != "cuda":
        raise SystemExit("error: --precision fp16 needs a CUDA device; use bf16 or no on CPU")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise SystemExit(
                f"error: --device {args.device}: only {torch.cuda.device_count()} CUDA devices are visible"
            )
        torch.cuda.set_device(device)
    tiny = args.tiny
    cpus = os.cpu_count() or 1

    def pick(value, full, small):
        return value if value is not None else (small if tiny else full)

    loader = pick(args.loader_workers, [0, 2, 4, 8], [0, 2])
    if args.data is not None:
        from shards.shardlist import ShardError, expand_urls

        try:
            expand_urls(args.data)
        except ShardError as e:
            raise SystemExit(f"error: --data: {e}") from None
    return Settings(
        device=device,
        tiny=tiny,
        audio=args.audio,
        precision=args.precision,
        batch_size=pick(args.batch_size, 64, 2),
        seconds=pick(args.seconds, 10.0, 1.0),
        sample_rate=pick(args.sample_rate, 32000, 16000),
        steps=pick(args.steps, 20, 2),
        warmup=pick(args.warmup, 3, 1),
        workers=pick(args.workers, min(8, cpus), 0),
        loader_workers=tuple(loader),
        loader_steps=pick(args.loader_steps, 20, 2),
        checkpointing={"both": (False, True), "off": (False,), "on": (True,)}[args.checkpointing],
        peak_tflops=args.peak_tflops,
        matmul_size=512 if tiny else 8192,
        clips=pick(args.clips, 64, 6),
        data=args.data,
        seed=args.seed,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Pure figures
# ---------------------------------------------------------------------------------------------------------------------


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 tensor-core peak (TFLOP/s) of a GPU from its CUDA device name, or None if not in the table."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: FLOPs done in `seconds` as a fraction of `peak_tflops` (TFLOP/s)."""
    return flops / seconds / (peak_tflops * 1e12)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _attention_mapping() -> dict[Any, Any]:
    """FlopCounterMode formulas for the CPU flash-attention kernels, which torch's table lacks (CUDA's are there)."""
    aten = torch.ops.aten
    mapping = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward_flops),
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula
    return mapping


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts attention on CPU."""
    return FlopCounterMode(display=False, custom_mapping=_attention_mapping())


def module_flops(counter: FlopCounterMode, suffix: str) -> int:
    """FLOPs the counter attributed to the module whose name ends with `suffix` (0 if none)."""
    for name, ops in counter.get_flop_counts().items():
        if name.endswith(suffix):
            return int(sum(ops.values()))
    return 0


def check_run(run_dir: str | Path, window: int = 3) -> dict[str, Any]:
    """Loss trend of a training run's metrics.jsonl: finite everywhere, and lower over the last `window` records
    than over the first `window`."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (did the run start?)")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(records) < 2:
        raise ValueError(f"{path}: {len(records)} metrics records; need at least 2 to see a trend")
    losses = [r.get("loss") for r in records]
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses)
    k = max(1, min(window, len(records) // 2))
    first = statistics.fmean(losses[:k]) if finite else math.nan
    last = statistics.fmean(losses[-k:]) if finite else math.nan
    memory = [r["max_memory_mb"] for r in records if r.get("max_memory_mb") is not None]
    return {
        "run": str(run_dir),
        "last_step": int(records[-1]["step"]),
        "records": len(records),
        "finite": finite,
        "loss_first": first,
        "loss_last": last,
        "decreased": bool(finite and last < first),
        "max_memory_mb": max(memory) if memory else None,
        "samples_per_s": statistics.fmean(r["samples_per_s"] for r in records[k:] or records),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------------------


def make_shards(root: Path, clips: int, seconds: float, sample_rate: int, workers: int) -> str:
    """Synthetic Clotho-layout clips -> the real converter -> shards; returns the development split's folder."""
    from shards.convert import convert
    from shards.sources.clotho import Clotho
    from synthetic.layouts import MIN_SECONDS, generate

    raw, out = root / "raw", root / "shards"
    generate(raw, clips, seed=0, seconds=max(seconds, MIN_SECONDS), sample_rate=sample_rate, workers=workers)
    # Enough shards that every loader process owns whole shards.
    result = convert(
        Clotho(raw / "clotho"),
        "development",
        out,
        sample_rate=sample_rate,
        samples_per_shard=max(1, clips // 24),
        workers=workers,
    )
    return str(result.out_dir)


def build_config(s: Settings, urls: str) -> Config:
    models, text = (TINY_MODELS, TINY_TEXT) if s.tiny else (MODELS, TEXT)
    overrides = [
        f"data.sample_rate={s.sample_rate}",
        f"data.clip_seconds={s.seconds}",
        f"data.batch_size={s.batch_size}",
        f"data.weak=[{{name: bench, urls: '{urls}', weight: 1.0}}]",
        "data.strong_every=0",
        f"data.shuffle_buffer={max(16, s.batch_size)}",
        f"run.seed={s.seed}",
        "optim.lr=1e-4",
        f"train.mixed_precision={s.precision}",
        "train.grad_clip=1.0",
        "wandb.mode=disabled",
        *models[s.audio],
        *text,
    ]
    return load_config(None, overrides)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure; returns {"rows": [...], "ratio": mfu without checkpointing, "memory_ratio": ..., ...}."""
    from tqdm import tqdm

    from shards.mixing import MixedStream
    from trainer.model import build_model
    from trainer.step import move_batch
    from trainer.vocab import collect_tokenizer_texts

    s = resolve(args)
    device = s.device
    torch.manual_seed(s.seed)
    with tempfile.TemporaryDirectory(prefix="sonotext-bench-gpu-") as tmp:
        urls = s.data or make_shards(
            Path(tmp), s.clips, s.seconds, s.sample_rate, workers=max(1, min(8, os.cpu_count() or 1))
        )
        cfg = build_config(s, urls)

        def stream_factory(workers: int) -> MixedStream:
            return MixedStream(dataclasses.replace(cfg.data, num_workers=workers), seed=s.seed)

        model = build_model(cfg.model, cfg.loss, s.sample_rate, collect_tokenizer_texts(cfg))
        model.to(device).train()
        runner = StepRunner(model, cfg, device, s.precision)
        params = sum(p.numel() for p in model.parameters())

        # FLOPs of one step, counted once without checkpointing (recomputation is not model work).
        model.set_gradient_checkpointing(False)
        batches = iter(stream_factory(0))
        batch = move_batch(next(batches), device)
        batches.close()
        # The optimizer and the clipping add no matmul, convolution or attention FLOPs: this is forward + backward.
        with flop_counter() as counter:
            runner.step(batch)
        flops = counter.get_total_flops()
        with flop_counter() as forward, torch.no_grad(), runner.autocast():
            tokens = {k: v.to(device) for k, v in model.tokenize(batch["captions"]).items()}
            model(batch["audio"], batch["audio_mask"], tokens["input_ids"], tokens["attention_mask"])
        del batch

        matmul_dtype = runner.dtype or torch.float32
        matmul = measure_matmul_tflops(device, matmul_dtype, s.matmul_size)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak, source = s.peak_tflops, "--peak-tflops"
        if peak is None:
            peak, source = peak_tflops_for(name), "datasheet"
        if peak is None:
            peak, source = matmul, "measured matmul"

        total = sum(max(s.warmup, 2 * s.workers) + s.steps for _ in s.checkpointing)
        total += sum(max(s.warmup, 2 * w) + s.loader_steps for w in s.loader_workers)
        rows = []
        with tqdm(total=total, desc="bench gpu", unit="step", disable=not sys.stderr.isatty()) as progress:
            for ckpt in s.checkpointing:
                model.set_gradient_checkpointing(ckpt)
                row = measure(runner, stream_factory, s.workers, s.warmup, s.steps, flops, peak, progress)
                rows.append({"name": "model", "ckpt": "on" if ckpt else "off", **row})
            model.set_gradient_checkpointing(False)
            for w in s.loader_workers:
                row = measure(runner, stream_factory, w, s.warmup, s.loader_steps, flops, peak, progress)
                rows.append({"name": "loader", "ckpt": "off", **row})

    by_ckpt = {r["ckpt"]: r for r in rows if r["name"] == "model"}
    memory_ratio = None
    if {"on", "off"} <= by_ckpt.keys() and by_ckpt["off"]["peak_gb"]:
        memory_ratio = by_ckpt["on"]["peak_gb"] / by_ckpt["off"]["peak_gb"]
    base = by_ckpt.get("off", by_ckpt.get("on"))
    result: dict[str, Any] = {
        "rows": rows,
        "ratio": base["mfu"] if base else None,
        "mfu": base["mfu"] if base else None,
        "mfu_step": base["mfu_step"] if base else None,
        "memory_ratio": memory_ratio,
        "targets": {
            f"mfu >= {MFU_TARGET}": base["mfu"] >= MFU_TARGET if base else None,
            f"memory_ratio <= {MEMORY_TARGET}": memory_ratio <= MEMORY_TARGET if memory_ratio else None,
        },
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "audio": s.audio,
        "tiny": s.tiny,
        "precision": s.precision,
        "batch_size": s.batch_size,
        "clip_seconds": s.seconds,
        "sample_rate": s.sample_rate,
        "params": params,
        "attention": getattr(model.audio_encoder.backend.model.config, "_attn_implementation", None),
        "flops_per_step": flops,
        "forward_flops_audio": module_flops(forward, ".audio_encoder"),
        "forward_flops_text": module_flops(forward, ".text_encoder"),
        "peak_tflops": peak,
        "peak_source": source,
        "matmul_tflops": matmul,
        "matmul_size": s.matmul_size,
    }
    print(summary(result))
    return result


def summary(result: dict[str, Any]) -> str:
    """A few lines of context printed above the table."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    memory = result["memory_ratio"]
    return "\n".join(
        [
            f"device: {result['device_name']} ({result['device']}), torch {result['torch']}, "
            f"{result['precision']}, attention: {result['attention']}",
            f"model: {result['audio']} + roberta{' (tiny)' if result['tiny'] else ''}, "
            f"{result['params'] / 1e6:.1f} M parameters; batch {result['batch_size']} x "
            f"{result['clip_seconds']} s at {result['sample_rate']} Hz",
            f"FLOP per step (fwd+bwd): {quantity(result['flops_per_step'], 'FLOP')}; forward: audio "
            f"{quantity(result['forward_flops_audio'], 'FLOP')}, text {quantity(result['forward_flops_text'], 'FLOP')}",
            f"peak: {quantity(result['peak_tflops'] * 1e12, 'FLOP/s')} ({result['peak_source']}); "
            f"{result['matmul_size']}^3 matmul measured: {quantity(result['matmul_tflops'] * 1e12, 'FLOP/s')}",
            f"MFU fwd+bwd: {pct(result['mfu'])}, whole step: {pct(result['mfu_step'])} (goal >= {pct(MFU_TARGET)}); "
            f"peak memory with / without checkpointing: {'n/a' if memory is None else f'{memory:.2f}'} "
            f"(goal <= {MEMORY_TARGET})",
        ]
    )


def quantity(value: float, unit: str) -> str:
    """`value` with an SI prefix, 3 significant digits: 5.02e13 FLOP -> '50.2 TFLOP'."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    from tools.bench import main as bench_main

    return bench_main(["gpu", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
