"""`python -m trainer CONFIG.yaml [a.b=c ...]` (also under `accelerate launch` or `torchrun`)."""

from __future__ import annotations

import argparse
import sys

from trainer.cli import program_name
from trainer.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("trainer"),
        description="Train an audio-text model. Keys and their meaning: trainer/config.py.",
        epilog="example: python -m trainer configs/debug.yaml optim.lr=1e-4 train.max_steps=50",
    )
    parser.add_argument(
        "config",
        help="YAML config: a path, or a shipped name (debug, experiments/tacos_pretrain; `sonotext-configs list`)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dot-list overrides, e.g. optim.lr=1e-4 data.weak.0.weight=2"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from shards.shardlist import ShardError
    from trainer.checkpoint import CheckpointError
    from trainer.distributed import LaunchError
    from trainer.evaluate import PartialDataError
    from trainer.loop import train
    from trainer.step import NonFiniteError

    try:
        return train(cfg)
    except (ConfigError, CheckpointError, LaunchError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, PartialDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
