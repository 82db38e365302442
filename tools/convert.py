"""Convert a raw dataset, as downloaded, into WebDataset shards + manifest.

    python -m tools.convert DATASET --src RAW --out OUT [--split S] [--sample-rate 32000]
        [--samples-per-shard N] [--workers K] [--limit N] [--max-seconds 60] [dataset flags]

Without --split every split of the dataset is converted. A rerun resumes an interrupted conversion
(finished shards are kept) and reports an already finished one as complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from shards.convert import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_SHARD_BYTES,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SAMPLES_PER_SHARD,
    ConvertError,
    ConvertResult,
    convert,
)
from shards.sources import SOURCES, SourceError
from shards.writer import WriterError

PROG = "python -m tools.convert"


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line naming the bad value (the full usage is in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


positive_int.__name__ = "positive integer"
positive_float.__name__ = "positive number"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
        p.add_argument("--out", type=Path, required=True, help="shards go to OUT/DATASET/SPLIT/")
        p.add_argument("--split", choices=cls.splits, help="one split (default: all of them)")
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
        p.add_argument(
            "--workers",
            type=positive_int,
            default=min(8, os.cpu_count() or 1),
            help="decode/encode processes (default %(default)s)",
        )
        p.add_argument("--limit", type=positive_int, help="stop after this many samples per split")
        cls.add_arguments(p)
    return parser


def summary(result: ConvertResult) -> str:
    """One line: samples, shards, skips by reason, hours of audio, wall time."""
    where = f"{result.dataset}/{result.split}"
    if result.status == "complete":
        shards = f"{result.num_samples} samples in {result.num_shards} shards"
        return f"{where}: already complete ({shards} at {result.out_dir})"
    counts = result.skip_counts()
    skipped = f"{len(result.skipped)} skipped"
    if counts:
        skipped += " (" + ", ".join(f"{reason}: {n}" for reason, n in counts.most_common()) + ")"
    resumed = f", resumed after {result.resumed_shards} finished shards" if result.resumed_shards else ""
    return (
        f"{where}: {result.num_samples} samples written in {result.num_shards} shards, {skipped}, "
        f"{result.total_seconds / 3600:.2f} h of audio, {result.wall_seconds:.1f} s{resumed} "
        f"-> {result.out_dir}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.src.is_dir():
        print(f"{PROG}: error: --src {args.src} is not a folder", file=sys.stderr)
        return 2
    errors: list[str] = []
    try:
        source = SOURCES[args.dataset].from_args(args.src, args)
        splits = [args.split] if args.split else list(source.splits)
        for split in splits:
            bar = tqdm(
                desc=f"{args.dataset}/{split}",
                unit=" items",
                disable=not sys.stdout.isatty(),
                file=sys.stdout,
            )

            def progress(entries: int, samples: int, seconds: float, bar: tqdm = bar) -> None:
                bar.set_postfix_str(f"{samples} samples, {seconds / 3600:.2f} h", refresh=False)
                bar.update(entries - bar.n)

            try:
                result = convert(
                    source,
                    split,
                    args.out,
                    sample_rate=args.sample_rate,
                    samples_per_shard=args.samples_per_shard,
                    max_shard_bytes=args.max_shard_bytes,
                    max_seconds=args.max_seconds,
                    workers=args.workers,
                    limit=args.limit,
                    on_progress=progress,
                )
            except SourceError as e:
                if args.split:
                    raise
                errors.append(f"{args.dataset}/{split}: {e}")
                continue
            finally:
                bar.close()
            print(summary(result), flush=True)
    except (SourceError, ConvertError, WriterError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if errors:
        shown = errors if len(errors) < len(splits) else errors[:1]  # every split failed: one line says why
        for line in shown:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
