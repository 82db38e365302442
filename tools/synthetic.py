"""Generate the synthetic dataset in the official Clotho, TACOS and AudioSet-strong layouts.

    python -m tools.synthetic --out data/demo/raw --clips 300 --seed 0

writes ``--clips`` clips *per layout* under OUT/clotho, OUT/tacos and OUT/audioset_strong, ready for
``python -m tools.convert {clotho,tacos,audioset-strong} --src OUT/...``. The same arguments give
byte-identical files (``--workers`` only changes the speed).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from synthetic.layouts import LAYOUTS, MAX_SECONDS, MIN_SECONDS, SAMPLE_RATES, generate
from trainer.cli import program_name


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds as a number, got {text!r}") from None
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected {MIN_SECONDS} to {MAX_SECONDS} seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("tools.synthetic"),
        description="Synthetic clips with known event times, written in the official Clotho, TACOS and "
        "AudioSet-strong layouts (Clotho 70/15/15 development/validation/evaluation, TACOS one release, "
        "AudioSet-strong 70/30 train/eval).",
    )
    parser.add_argument("--out", required=True, help="folder that receives clotho/, tacos/, audioset_strong/")
    parser.add_argument("--clips", required=True, type=_positive_int, help="clips per layout")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    parser.add_argument("--seconds", type=_seconds, default=10.0, help="clip length in seconds (default: 10)")
    parser.add_argument(
        "--sample-rate",
        type=int,
        choices=SAMPLE_RATES,
        default=16000,
        help="audio rate in Hz (default: 16000)",
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=1, help="processes rendering clips (default: 1)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing layout folders under --out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    with tqdm(total=args.clips * len(LAYOUTS), unit="clip", disable=not sys.stdout.isatty()) as bar:
        try:
            summary = generate(
                args.out,
                args.clips,
                args.seed,
                seconds=args.seconds,
                sample_rate=args.sample_rate,
                workers=args.workers,
                overwrite=args.overwrite,
                progress=bar.update,
            )
        except (OSError, ValueError) as e:
            bar.close()
            print(f"error: {e}", file=sys.stderr)
            return 1
    parts = ", ".join(
        f"{layout} {'/'.join(str(n) for n in splits.values())} ({'/'.join(splits)})"
        for layout, splits in summary.items()
    )
    audio = args.clips * len(LAYOUTS) * args.seconds
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.clips} clips per layout under {args.out}: {parts}; {audio:.0f} s of audio in {elapsed:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
