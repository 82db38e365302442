"""The configs shipped with sonotext: list them, print a path, or copy them out to edit.

    python -m tools.configs list                         # debug.yaml, experiments/..., accelerate/..., ...
    python -m tools.configs path accelerate/cpu_debug    # absolute path (for `accelerate launch --config_file`)
    python -m tools.configs copy DEST                    # DEST/configs/... : every command in the docs works in DEST

Every command that takes a config (trainer, launch.slurm, launch.local) also accepts a shipped name directly
(`debug`, `configs/debug.yaml`, `configs:debug.yaml`); see trainer/config_files.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.cli import program_name
from trainer.config import ConfigError
from trainer.config_files import resolve_config_file, shipped_dir, shipped_names

# `path NAME` looks in these folders of configs/ in turn, so `cpu_debug` or `zero2` is enough.
FOLDERS = ("", "experiments", "accelerate", "deepspeed", "clusters")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name("tools.configs"), description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="names of the shipped configs")
    path = sub.add_parser("path", help="absolute path of a shipped config")
    path.add_argument("name", help="e.g. debug, accelerate/cpu_debug.yaml, zero2")
    copy = sub.add_parser("copy", help="copy every shipped config to DEST/configs/ (never overwrites)")
    copy.add_argument("dest", type=Path, help="folder that receives configs/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = shipped_dir()
    if root is None:
        print("error: no shipped configs found next to the trainer package", file=sys.stderr)
        return 1
    if args.command == "list":
        print("\n".join(shipped_names()))
        return 0
    if args.command == "path":
        try:
            print(resolve_config_file(f"configs:{args.name}", folders=FOLDERS).resolve())
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    dest = args.dest / "configs"
    existing = [n for n in shipped_names() if (dest / n).exists()]
    if existing:
        print(
            f"error: {dest / existing[0]} exists; nothing copied (remove it or choose another DEST)",
            file=sys.stderr,
        )
        return 2
    for name in shipped_names():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, dest / name)
    print(f"copied {len(shipped_names())} configs to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
