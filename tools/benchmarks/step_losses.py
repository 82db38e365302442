"""Step-time cost of the strong (region) loss: weak-only vs weak+strong steps at the same batch size.

A step is forward + loss + backward + AdamW on the debug-sized conv/tiny model. The weak step embeds B clip
captions and takes the clip InfoNCE; the weak+strong step embeds the same B captions plus R region captions
(TACOS has ~3.9 per clip) and adds the TACOS region loss. Steps of the two kinds alternate, so machine load
hits both alike; rows give the median and the minimum of each (GPU: wall time; CPU: process CPU time, robust
to other load on the machine). ``ratio`` = weak-only / weak+strong minimum step time (1.0 = free;
the goal is >= 0.91, i.e. at most 10% overhead). A third row times the region loss alone (forward+backward on
fixed embeddings), the part of the overhead that is the loss itself rather than embedding more captions.

    python -m tools.benchmarks.step_losses [--batch-size 8] [--seconds 10] [--steps 10] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from trainer.config import AudioModelConfig, LossConfig, ModelConfig, TextModelConfig
from trainer.losses import clip_contrastive_loss, region_contrastive_loss, string_ids
from trainer.model import build_model

WORDS = [
    "dog",
    "bark",
    "car",
    "horn",
    "rain",
    "roof",
    "bird",
    "chirp",
    "door",
    "slam",
    "engine",
    "hum",
    "water",
    "drip",
    "bell",
    "ring",
    "wind",
    "blow",
    "man",
    "speak",
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
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def _captions(n: int, generator: torch.Generator) -> list[str]:
    idx = torch.randint(0, len(WORDS), (n, 4), generator=generator).tolist()
    return [f"a {WORDS[a]} {WORDS[b]} then a {WORDS[c]} {WORDS[d]}" for a, b, c, d in idx]


def _clock(device: torch.device) -> Callable[[], float]:
    """Wall time on GPUs (synchronised); on CPU the process's CPU time, which other jobs on the machine do not inflate."""
    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return now
    return time.process_time


def run(args: argparse.Namespace) -> dict:
    """Measure both step kinds; returns {"rows": [...], "ratio": weak_only_time / with_strong_time}."""
    device = torch.device(args.device)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, r = args.batch_size, args.regions * args.batch_size
    clip_captions, region_captions = _captions(b, g), _captions(r, g)
    cfg = ModelConfig(
        audio=AudioModelConfig(name="conv", hidden_size=64, num_layers=2, n_mels=64, frame_rate=25.0),
        text=TextModelConfig(name="tiny", max_length=32, hidden_size=64, num_layers=2, num_heads=4),
        embed_dim=64,
    )
    loss_cfg = LossConfig()
    torch.manual_seed(0)
    model = build_model(cfg, loss_cfg, args.sample_rate, clip_captions + region_captions).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    n = int(args.seconds * args.sample_rate)
    audio = (0.1 * torch.randn(b, n, generator=g)).to(device)
    mask = torch.ones(b, n, dtype=torch.bool, device=device)
    clip_tokens = {k: v.to(device) for k, v in model.tokenize(clip_captions).items()}
    all_tokens = {k: v.to(device) for k, v in model.tokenize(clip_captions + region_captions).items()}
    region_clip = torch.arange(b).repeat_interleave(args.regions).to(device)
    onsets = (torch.rand(r, generator=g) * 0.7 * args.seconds).to(device)
    offsets = (onsets + 0.5 + torch.rand(r, generator=g) * 0.3 * args.seconds).clamp(max=args.seconds)
    text_ids = string_ids(region_captions).to(device)

    def weak_step() -> None:
        out = model(audio, mask, **clip_tokens)
        loss = clip_contrastive_loss(out.audio_clip, out.text, out.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def strong_step() -> None:
        out = model(audio, mask, **all_tokens)
        weak = clip_contrastive_loss(out.audio_clip, out.text[:b], out.logit_scale)
        strong = region_contrastive_loss(
            out.audio_frames,
            out.frame_mask,
            out.frame_rate,
            out.text[b:],
            region_clip,
            onsets,
            offsets,
            loss_cfg.strong_tau,
            text_ids,
        )
        loss = loss_cfg.weak_weight * weak + loss_cfg.strong_weight * strong
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        fixed = model(audio, mask, **all_tokens)
    frames0, text0 = fixed.audio_frames.detach(), fixed.text[b:].detach()

    def region_loss_only() -> None:
        frames, text = frames0.clone().requires_grad_(), text0.clone().requires_grad_()
        region_contrastive_loss(
            frames, fixed.frame_mask, fixed.frame_rate, text, region_clip, onsets, offsets, 0.1, text_ids
        ).backward()

    now = _clock(device)
    times: dict[str, list[float]] = {"weak": [], "weak+strong": [], "region loss alone (fwd+bwd)": []}
    steps = (
        ("weak", weak_step),
        ("weak+strong", strong_step),
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
                "texts": b if name == "weak" else b + r,
                "regions": 0 if name == "weak" else r,
                "clock": "wall" if device.type == "cuda" else "process_cpu",
                "step_ms": round(1000 * median, 2),
                "min_ms": round(1000 * min(ts), 2),
                "clips_per_s": round(b / median, 2),
            }
        )
    # Minimum over alternating steps: the least sensitive estimate when other jobs share the machine.
    ratio = min(times["weak"]) / min(times["weak+strong"])
    return {"rows": rows, "ratio": round(ratio, 4)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    for row in result["rows"]:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    print(f"ratio (weak-only / weak+strong step time) = {result['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
