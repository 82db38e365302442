"""What the inference CLIs (tools.embed, tools.zeroshot) share: the model and batching options and their checks."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(p: argparse.ArgumentParser, batch_help: str = "clips per forward pass") -> None:
    """--checkpoint, --batch-size, --max-seconds, --device."""
    p.add_argument(
        "--checkpoint", required=True, help="RUN/checkpoints/step_N, a saved model folder, or a hub id"
    )
    p.add_argument("--batch-size", type=int, default=16, help=f"{batch_help} (default 16)")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="use only the first S seconds of each file"
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def load_model_from_args(args: argparse.Namespace) -> Any:
    """Check the options of add_model_options (ValueError naming the flag) and load the model in eval mode."""
    from trainer.checkpoint import load_model
    from trainer.distributed import local_device

    if args.batch_size <= 0:
        raise ValueError(f"--batch-size: must be > 0, got {args.batch_size}")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise ValueError(f"--max-seconds: must be > 0, got {args.max_seconds}")
    return load_model(args.checkpoint, local_device(args.device), "--checkpoint").eval()
