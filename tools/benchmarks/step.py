"""Trainer step vs a bare PyTorch loop: same model, same batch, same optimizer, same run.

"Ours" is the trainer's step, trainer.step.train_step (Accelerator, accumulate/autocast contexts, compute_loss with
the zero-weight touch of unused outputs, gradient clipping through the accelerator) plus the scheduler step; "bare" is
forward -> clip InfoNCE -> backward -> clip_grad_norm_ -> AdamW.step on a copy of the same model. Steps of the
two alternate so machine load hits both alike. ``ratio`` = bare / ours minimum step time (goal >= 0.95, i.e. our
step costs at most 5% more).

    python -m tools.bench step [--batch-size 8] [--seconds 10] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from tools.benchmarks.common import captions as make_captions
from tools.benchmarks.common import clock
from trainer.config import Config, load_config
from trainer.losses import clip_contrastive_loss, string_ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate (default 16000)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument(
        "--precision", default="no", choices=["no", "bf16", "fp16"], help="mixed precision of both loops"
    )


def _config(args) -> Config:
    return load_config(
        None,
        [
            f"data.sample_rate={args.sample_rate}",
            f"data.clip_seconds={args.seconds}",
            f"data.batch_size={args.batch_size}",
            "data.strong_every=0",
            f"train.mixed_precision={args.precision}",
            "train.grad_clip=1.0",
            "wandb.mode=disabled",
        ],
    )


def run(args: argparse.Namespace) -> dict:
    from trainer.distributed import build_accelerator
    from trainer.model import build_model
    from trainer.optim import build_optimizer, build_scheduler
    from trainer.step import train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _config(args)
    gen = torch.Generator().manual_seed(0)
    captions = make_captions(args.batch_size, gen)
    n = round(args.seconds * args.sample_rate)
    batch = {
        "kind": "weak",
        "audio": torch.randn(args.batch_size, n, generator=gen) * 0.1,
        "audio_mask": torch.ones(args.batch_size, n, dtype=torch.bool),
        "captions": captions,
        "clip_ids": string_ids([f"clip{i}" for i in range(args.batch_size)]),
    }
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.loss, sample_rate=args.sample_rate, tokenizer_texts=captions)
    bare_model = copy.deepcopy(model)

    accelerator = build_accelerator(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 10_000)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    bare_model.to(device)
    bare_opt = build_optimizer(bare_model, cfg.optim)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    tokenize = accelerator.unwrap_model(model).tokenize

    def ours() -> None:
        train_step(accelerator, model, optimizer, tokenize, on_device, cfg)
        scheduler.step()

    def bare() -> None:
        tokens = {k: v.to(device) for k, v in bare_model.tokenize(on_device["captions"]).items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = bare_model(
                on_device["audio"], on_device["audio_mask"], tokens["input_ids"], tokens["attention_mask"]
            )
            loss = clip_contrastive_loss(out.audio_clip, out.text, out.logit_scale, on_device["clip_ids"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), cfg.train.grad_clip)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    now = clock(device)
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("bare", bare), ("ours", ours)):
            t0 = now()
            fn()
            if i >= args.warmup:
                times[name].append(now() - t0)
    rows = [
        {
            "loop": name,
            "batch": args.batch_size,
            "median_ms": 1000 * statistics.median(t),
            "min_ms": 1000 * min(t),
            "device": str(device),
        }
        for name, t in times.items()
    ]
    return {"rows": rows, "ratio": min(times["bare"]) / min(times["ours"])}


def main(argv: list[str] | None = None) -> int:
    from tools.bench import main as bench_main

    return bench_main(["step", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
