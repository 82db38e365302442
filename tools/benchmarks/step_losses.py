"""Step-time cost of strong supervision: the trainer's step on a weak batch vs on a strong batch of the same clips.

Both steps are trainer.step.train_step (Accelerator contexts, compute_loss, backward, gradient clipping, AdamW)
on the debug-sized conv/tiny model, as the trainer runs them when it mixes batch kinds. The weak batch embeds B
clip captions and takes the clip InfoNCE; the strong batch embeds R region captions (TACOS has ~3.9 per clip)
and takes the TACOS region loss. Steps of the two kinds alternate, so machine load hits both alike; rows give
the median and the minimum of each (GPU: wall time; CPU: process CPU time, robust to other load on the machine).
``ratio`` = weak / strong minimum step time (1.0 = a strong batch costs no more than a weak one; the goal is
>= 0.91, i.e. at most 10% overhead). A third row times the region loss alone (forward+backward on fixed
embeddings), the part of the overhead that is the loss itself rather than embedding more captions.

    python -m tools.benchmarks.step_losses [--batch-size 8] [--seconds 10] [--steps 10] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch

from tools.benchmarks.common import captions, clock
from trainer.config import Config, load_config
from trainer.losses import region_contrastive_loss, string_ids

MODEL = [
    "model.audio.name=conv",
    "model.audio.hidden_size=64",
    "model.audio.num_layers=2",
    "model.audio.n_mels=64",
    "model.audio.frame_rate=25.0",
    "model.text.name=tiny",
    "model.text.max_length=32",
    "model.text.hidden_size=64",
    "model.text.num_layers=2",
    "model.text.num_heads=4",
    "model.embed_dim=64",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size", type=int, default=8, help="clips per step (default 8, as configs/debug.yaml)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate (default 16000)")
    parser.add_argument("--regions", type=int, default=4, help="region captions per clip (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first (default 2)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=["cuda", "cpu"],
        help="cuda (the launcher's GPU) or cpu",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def _config(args: argparse.Namespace) -> Config:
    return load_config(
        None,
        [
            f"data.sample_rate={args.sample_rate}",
            f"data.clip_seconds={args.seconds}",
            f"data.batch_size={args.batch_size}",
            "optim.lr=1e-4",
            "wandb.mode=disabled",
            *MODEL,
        ],
    )


def run(args: argparse.Namespace) -> dict:
    """Measure both step kinds; returns {"rows": [...], "ratio": weak_time / strong_time}."""
    from trainer.distributed import build_accelerator
    from trainer.model import build_model
    from trainer.optim import build_optimizer
    from trainer.step import train_step

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    cfg = _config(args)
    g = torch.Generator().manual_seed(0)
    b, r = args.batch_size, args.regions * args.batch_size
    clip_captions, region_captions = captions(b, g), captions(r, g)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.loss, args.sample_rate, clip_captions + region_captions)
    accelerator = build_accelerator(cfg, cpu=args.device == "cpu")
    model, optimizer = accelerator.prepare(model, build_optimizer(model, cfg.optim))
    device = accelerator.device
    tokenize = accelerator.unwrap_model(model).tokenize

    n = int(args.seconds * args.sample_rate)
    clips = {
        "audio": (0.1 * torch.randn(b, n, generator=g)).to(device),
        "audio_mask": torch.ones(b, n, dtype=torch.bool, device=device),
        "clip_ids": string_ids([f"clip{i}" for i in range(b)]).to(device),
    }
    onsets = torch.rand(r, generator=g) * 0.7 * args.seconds
    offsets = (onsets + 0.5 + torch.rand(r, generator=g) * 0.3 * args.seconds).clamp(max=args.seconds)
    weak = {**clips, "kind": "weak", "captions": clip_captions}
    strong = {
        **clips,
        "kind": "strong",
        "captions": clip_captions,
        "region_text": region_captions,
        "region_text_ids": string_ids(region_captions).to(device),
        "region_clip": torch.arange(b).repeat_interleave(args.regions).to(device),
        "onsets": onsets.to(device),
        "offsets": offsets.to(device),
    }

    with torch.no_grad():
        tokens = {k: v.to(device) for k, v in tokenize(region_captions).items()}
        fixed = model(clips["audio"], clips["audio_mask"], tokens["input_ids"], tokens["attention_mask"])
    frames0, text0 = fixed.audio_frames.detach(), fixed.text.detach()

    def region_loss_only() -> None:
        frames, text = frames0.clone().requires_grad_(), text0.clone().requires_grad_()
        region_contrastive_loss(
            frames,
            fixed.frame_mask,
            fixed.frame_rate,
            text,
            strong["region_clip"],
            strong["onsets"],
            strong["offsets"],
            cfg.loss.strong_tau,
            strong["region_text_ids"],
        ).backward()

    now = clock(device)
    times: dict[str, list[float]] = {"weak": [], "strong": [], "region loss alone (fwd+bwd)": []}
    steps = (
        ("weak", lambda: train_step(accelerator, model, optimizer, tokenize, weak, cfg)),
        ("strong", lambda: train_step(accelerator, model, optimizer, tokenize, strong, cfg)),
        ("region loss alone (fwd+bwd)", region_loss_only),
    )
    for i in range(args.warmup + args.steps):
        for name, fn in steps:
            start = now()
            fn()
            if i >= args.warmup:
                times[name].append(now() - start)

    rows = []
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append(
            {
                "name": name,
                "device": str(device),
                "batch_size": b,
                "texts": b if name == "weak" else r,
                "regions": 0 if name == "weak" else r,
                "clock": "wall" if device.type == "cuda" else "process_cpu",
                "step_ms": round(1000 * median, 2),
                "min_ms": round(1000 * min(ts), 2),
                "clips_per_s": round(b / median, 2),
            }
        )
    # Minimum over alternating steps: the least sensitive estimate when other jobs share the machine.
    ratio = min(times["weak"]) / min(times["strong"])
    return {"rows": rows, "ratio": round(ratio, 4)}


def main(argv: Sequence[str] | None = None) -> int:
    from tools.bench import main as bench_main

    return bench_main(["losses", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
