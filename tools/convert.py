"""Convert a raw dataset, as downloaded, into WebDataset shards + manifest.

    python -m tools.convert DATASET --src RAW --out OUT [--split S] [--audio-dir DIR] [--sample-rate 32000]
        [--samples-per-shard N] [--workers K] [--limit N] [--max-seconds 60] [--max-caption-chars 2000]
        [--encoding ENC] [dataset flags]
    python -m tools.convert DATASET --src RAW --check [--split S] [--audio-dir DIR]

Without --split every split of the dataset is converted. A rerun resumes an interrupted conversion
(finished shards are kept) and reports an already finished one as complete. --check reads the metadata and
looks for every clip's audio exactly as the conversion will, prints what it found and writes nothing.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from shards.check import CheckResult, check
from shards.convert import (
    ConvertError,
    ConvertResult,
    convert,
)
from shards.convert_cli import conversion_parser, positive_int
from shards.sources import SOURCES, Source, SourceError
from shards.splitdir import WriterError
from trainer.cli import program_name

PROG = program_name("tools.convert")


def own_options(p: argparse.ArgumentParser) -> None:
    """tools.convert's options besides the shared ones: --check, --workers, --limit."""
    p.add_argument(
        "--check",
        action="store_true",
        help="read the metadata and look for every clip's audio as the conversion would; write nothing",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=min(8, os.cpu_count() or 1),
        help="decode/encode processes (default %(default)s)",
    )
    p.add_argument("--limit", type=positive_int, help="stop after this many samples per split")


def build_parser() -> argparse.ArgumentParser:
    return conversion_parser(PROG, __doc__.split("\n\n")[0], own_options, out_required=False)


def counted(counts: dict[str, int]) -> str:
    """'a: 3, b: 1', most frequent first."""
    return ", ".join(f"{k}: {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(result: ConvertResult) -> str:
    """One line: samples, shards, skips by reason, hours of audio, wall time; then how audio was found."""
    where = f"{result.dataset}/{result.split}"
    if result.status == "complete":
        shards = f"{result.num_samples} samples in {result.num_shards} shards"
        return f"{where}: already complete ({shards} at {result.out_dir})"
    counts = result.skip_counts()
    skipped = f"{len(result.skipped)} skipped"
    if counts:
        skipped += f" ({counted(counts)})"
    resumed = f", resumed after {result.resumed_shards} finished shards" if result.resumed_shards else ""
    lines = [
        f"{where}: {result.num_samples} samples written in {result.num_shards} shards, {skipped}, "
        f"{result.total_seconds / 3600:.2f} h of audio, {result.wall_seconds:.1f} s{resumed} "
        f"-> {result.out_dir}"
    ]
    if result.audio_namings:
        lines.append(f"  audio found as: {counted(result.audio_namings)}")
    if result.texts_truncated:
        lines.append(f"  {result.texts_truncated} captions/region texts cut to --max-caption-chars")
    if result.region_fixes:
        lines.append(
            f"  {result.region_fixes} regions clipped or dropped (listed in the manifest's region_fixes)"
        )
    return "\n".join(lines)


def relative(path: Path, root: Path) -> str:
    """'SRC/x/y' for a path under --src, else the path."""
    if path == root:
        return "SRC"
    return f"SRC/{path.relative_to(root)}" if path.is_relative_to(root) else str(path)


def check_report(result: CheckResult, src: Path) -> str:
    """What --check found for one split, in a few lines."""
    counts = result.skip_counts()
    skipped = f"{len(result.skipped)} skipped" + (f" ({counted(counts)})" if counts else "")
    lines = [
        f"{result.dataset}/{result.split}: {result.listed} listed: {result.found} with audio, "
        f"{result.missing} missing audio, {skipped}; nothing written",
        "  reads: " + ", ".join(f"{role} {relative(p, src)}" for role, p in result.layout.files.items()),
        "  audio in: "
        + ", ".join(relative(p, src) for p in result.layout.audio)
        + (f" (found as {counted(result.audio_namings)})" if result.audio_namings else ""),
    ]
    if result.layout.notes:
        lines.append("  layout: " + "; ".join(result.layout.notes))
    if result.extra.get("split_method"):
        lines.append(f"  split: {result.extra['split_method']}")
    fixes = result.extra.get("region_fixes", [])
    if fixes:
        actions = counted(dict(Counter(f["action"] for f in fixes)))
        lines.append(f"  regions fixed: {len(fixes)} ({actions})")
    if result.missing_examples:
        lines.append(f"  missing audio (first {len(result.missing_examples)} of {result.missing}):")
        lines += [f"    {m}" for m in result.missing_examples]
    return "\n".join(lines)


def os_error(e: OSError, out: Path | None) -> str:
    """One line for a failed read or write: what, where, and what to do."""
    where = f": {e.filename}" if e.filename else f" writing under {out}" if out else ""
    hint = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = (
            "; finished shards are kept: free space (or raise the limit) and rerun the same command to resume"
        )
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "; is --out on a writable disk?"
    return f"{e.strerror or e}{where}{hint}"


def warn_once(source: Source, shown: set[str]) -> None:
    for w in source.warnings:
        if w not in shown:
            shown.add(w)
            print(f"{PROG}: note: {w}", file=sys.stderr)


def run_check(source: Source, splits: list[str], args: argparse.Namespace) -> list[str]:
    """Print --check's report per split; the splits that could not be read, with why."""
    errors: list[str] = []
    shown: set[str] = set()
    for split in splits:
        try:
            result = check(source, split, workers=4 * args.workers)
        except SourceError as e:
            if args.split:
                raise
            errors.append(f"{args.dataset}/{split}: {e}")
            continue
        print(check_report(result, args.src), flush=True)
        warn_once(source, shown)
    return errors


def run_convert(source: Source, splits: list[str], args: argparse.Namespace) -> list[str]:
    """Convert each split, printing its summary; the splits that could not be read, with why."""
    errors: list[str] = []
    shown: set[str] = set()
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
                max_text_chars=args.max_caption_chars,
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
        warn_once(source, shown)
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, path in (("--src", args.src), ("--audio-dir", args.audio_dir)):
        if path is not None and not path.is_dir():
            print(f"{PROG}: error: {flag} {path} is not a folder", file=sys.stderr)
            return 2
    if args.out is None and not args.check:
        print(f"{PROG}: error: --out is required (or pass --check to only look)", file=sys.stderr)
        return 2
    try:
        source = SOURCES[args.dataset].from_args(args.src, args)
        splits = [args.split] if args.split else list(source.splits)
        errors = (run_check if args.check else run_convert)(source, splits, args)
    except (SourceError, ConvertError, WriterError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{PROG}: error: {os_error(e, args.out)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if errors:
        failed = errors if len(errors) < len(splits) else errors[:1]  # every split failed: one line says why
        for line in failed:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
