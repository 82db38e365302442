"""Check converted splits against their manifests and the shard format.

    python -m tools.verify OUT/DATASET/SPLIT [OUT/DATASET/SPLIT ...] [--no-audio] [--workers K]

Exit status 0 when every split is sound, 1 when problems were found (the first ones are listed),
2 for a path that is not a folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from shards.convert_cli import OneLineParser, positive_int
from shards.verify import verify_split
from trainer.cli import program_name

PROG = program_name("tools.verify")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("split_dirs", nargs="+", type=Path, metavar="OUT/DATASET/SPLIT")
    parser.add_argument("--no-audio", action="store_true", help="skip decoding the FLAC members (faster)")
    parser.add_argument(
        "--max-problems", type=int, default=20, help="problems listed per split (default %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help=f"shards checked in parallel by this many processes (same results; this machine has "
        f"{os.cpu_count()} cores; default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for d in args.split_dirs:
        if not d.is_dir():
            print(f"{PROG}: error: {d} is not a folder", file=sys.stderr)
            return 2
    failed = False
    for d in args.split_dirs:
        with tqdm(desc=str(d), unit=" shards", disable=not sys.stdout.isatty(), file=sys.stdout) as bar:
            report = verify_split(
                d, decode_audio=not args.no_audio, on_shard=lambda _: bar.update(), workers=args.workers
            )
        hours = report.total_seconds / 3600
        what = f"{report.num_samples} samples in {report.num_shards} shards, {hours:.2f} h of audio"
        if report.ok:
            print(f"OK {d}: {what}")
            continue
        failed = True
        counts = f"read {report.read} of {report.expected} expected samples intact, {report.skipped} skipped"
        print(f"FAILED {d}: {len(report.problems)} problem(s); {counts}; {what}")
        for p in report.problems[: args.max_problems]:
            print(f"  {p}")
        if len(report.problems) > args.max_problems:
            print(f"  ... and {len(report.problems) - args.max_problems} more")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
