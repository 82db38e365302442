"""The command line the conversion commands share (tools.convert on one machine, launch.convert over tasks): one
subcommand per dataset with its --src/--out/--split, the audio and metadata options, the conversion settings and
the dataset's own flags. Each command adds its own options through `own`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from shards.convert import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_SHARD_BYTES,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SAMPLES_PER_SHARD,
)
from shards.sources import SOURCES


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line naming the bad value (the full usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


positive_int.__name__ = "positive integer"
positive_float.__name__ = "positive number"


def conversion_parser(
    prog: str, description: str, own: Callable[[argparse.ArgumentParser], None], *, out_required: bool
) -> OneLineParser:
    """`prog DATASET --src RAW --out OUT ...` for every dataset; `own(p)` adds the command's options to each."""
    parser = OneLineParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, cls in SOURCES.items():
        doc = (sys.modules[cls.__module__].__doc__ or name).strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--src", type=Path, required=True, help="the dataset's folder, in its official layout")
        p.add_argument(
            "--out",
            type=Path,
            required=out_required,
            help="shards go to OUT/DATASET/SPLIT/" + ("" if out_required else " (required unless --check)"),
        )
        p.add_argument("--split", choices=cls.splits, help="one split (default: all of them)")
        own(p)
        p.add_argument(
            "--audio-dir",
            type=Path,
            metavar="DIR",
            help="where the audio is, if not in the layout's own folder (DIR/SPLIT/ or DIR itself)",
        )
        p.add_argument(
            "--encoding",
            metavar="ENC",
            help="encoding of the metadata CSV/TSV files (default: UTF-8; Clotho's metadata CSVs: ISO-8859-1)",
        )
        p.add_argument(
            "--max-caption-chars",
            type=positive_int,
            default=DEFAULT_MAX_TEXT_CHARS,
            metavar="N",
            help="captions and region texts longer than N characters are cut to N and counted (default %(default)s)",
        )
        p.add_argument(
            "--sample-rate", type=positive_int, default=DEFAULT_SAMPLE_RATE, help="default %(default)s"
        )
        p.add_argument(
            "--samples-per-shard",
            type=positive_int,
            default=DEFAULT_SAMPLES_PER_SHARD,
            help="default %(default)s",
        )
        p.add_argument(
            "--max-shard-bytes",
            type=positive_int,
            default=DEFAULT_MAX_SHARD_BYTES,
            help="a shard closes before passing this size (default %(default)s)",
        )
        p.add_argument(
            "--max-seconds",
            type=positive_float,
            default=DEFAULT_MAX_SECONDS,
            help="longer recordings become consecutive segments of this length (default %(default)s)",
        )
        cls.add_arguments(p)
    return parser
