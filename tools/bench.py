"""`python -m tools.bench {convert,loader,step,losses,gpu} [--json PATH]`: benchmarks against a same-run baseline.

Each benchmark module in tools/benchmarks/ has `add_arguments(parser)` and `run(args) -> {"rows": [...], "ratio": x}`;
`ratio` is ours ÷ the baseline measured in the same run (higher is better for throughput).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from trainer.cli import program_name

BENCHMARKS = {
    "convert": ("tools.benchmarks.convert", "conversion throughput vs a bare decode+resample+encode loop"),
    "loader": ("tools.benchmarks.loader", "training pipeline samples/s vs bare soundfile decode"),
    "step": ("tools.benchmarks.step", "trainer step time vs a bare PyTorch loop on the same model and batch"),
    "losses": (
        "tools.benchmarks.step_losses",
        "trainer step time on a weak vs a strong batch (strong overhead)",
    ),
    "gpu": (
        "tools.benchmarks.gpu",
        "CUDA: bf16 samples/s, step breakdown, memory with/without checkpointing, MFU",
    ),
}


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog=program_name("tools.bench"),
        description=__doc__.splitlines()[0],
        epilog="benchmarks: " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()),
    )
    top.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark (NAME --help for its options)")
    top.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = top.parse_args(argv)
    module, help_text = BENCHMARKS[ns.name]
    mod = importlib.import_module(
        module
    )  # only the chosen one: the others may need hardware this machine lacks
    parser = argparse.ArgumentParser(prog=f"{program_name('tools.bench')} {ns.name}", description=help_text)
    parser.add_argument("--json", type=Path, default=None, help="also write {'rows': [...], 'ratio': x} here")
    if hasattr(mod, "add_arguments"):
        mod.add_arguments(parser)
    args = parser.parse_args(ns.rest)
    result = mod.run(args)
    print(format_table(result.get("rows", [])))
    if result.get("ratio") is not None:
        print(f"ratio (ours / baseline): {result['ratio']:.3f}")
    for key, value in result.items():  # further headline figures a benchmark reports (e.g. task_scaling)
        if key not in ("rows", "ratio") and isinstance(value, (int, float)):
            print(f"{key}: {value:.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
