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
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tools.benchmarks.gpu_figures import flop_counter, module_flops, peak_tflops_for, quantity
from tools.benchmarks.gpu_measure import StepRunner, measure, measure_matmul_tflops
from trainer.config import Config, load_config

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


def main(argv: Sequence[str] | None = None) -> int:
    from tools.bench import main as bench_main

    return bench_main(["gpu", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
