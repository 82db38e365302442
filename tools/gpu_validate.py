"""The Python side of tools/gpu_validate.sh: what the shell script asks about the environment, and its summary.

    python -m tools.gpu_validate env                       # versions, GPU, packages (env.txt)
    python -m tools.gpu_validate cuda                      # prints 1 when torch sees a CUDA device, else 0
    python -m tools.gpu_validate version PACKAGE           # the installed version of PACKAGE
    python -m tools.gpu_validate summary --work W --out O --zero-steps N

`summary` reads WORK/status.tsv (one line per step: name, exit status, seconds), WORK/logs/, WORK/runs/ and
OUT/bench_*.json, checks every step and run, writes OUT/summary.json and OUT/summary.md, prints the Markdown and
exits 1 when any check failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any

from trainer.cli import program_name

PACKAGES = (
    "transformers",
    "accelerate",
    "deepspeed",
    "tokenizers",
    "webdataset",
    "soundfile",
    "soxr",
    "nvidia-ml-py",
)
RUNS = ("bf16", "fp16", "zero2", "zero2_fp32", "zero3", "zero3_fp32")


def environment() -> str:
    """Python, torch, CUDA, the GPU and the versions of the packages the run depends on, one per line."""
    import torch

    lines = [
        f"python {sys.version.split()[0]} {sys.executable}",
        f"torch {torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"gpu {p.name} {p.total_memory / 2**30:.1f} GiB sm_{p.major}{p.minor}")
        lines.append(f"multiprocessors {p.multi_processor_count}")
    for name in PACKAGES:
        try:
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines)


def read_status(path: Path) -> dict[str, dict[str, Any]]:
    """status.tsv -> {step: {"exit": "0" | "1" | "skipped" | ..., "seconds": int}}; the last line of a step wins."""
    status = {}
    for line in path.read_text().splitlines():
        name, rc, seconds = line.split("\t")
        status[name] = {"exit": rc, "seconds": int(seconds)}
    return status


def summarize(work: Path, out: Path, zero_steps: int) -> tuple[bool, dict[str, Any], str]:
    """(all checks passed, summary.json content, summary.md text) of a finished `gpu_validate.sh run`."""
    from tools.bench import format_table
    from tools.benchmarks.gpu_figures import check_run, quantity

    status = read_status(work / "status.tsv")
    checks: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"steps": status}

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    def log(name: str) -> str:
        path = work / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    for name, s in status.items():
        add(f"{name} exits 0", s["exit"] == "0", f"exit {s['exit']} after {s['seconds']} s")

    for run in RUNS:
        path = work / "runs" / run
        if not path.is_dir():
            continue
        try:
            r = check_run(path)
        except (OSError, ValueError) as e:
            add(f"{run}: loss falls, no NaN", False, str(e))
            continue
        figures[run] = r
        mem = f", max memory {r['max_memory_mb']:.0f} MB" if r["max_memory_mb"] else ""
        add(
            f"{run}: loss falls, no NaN",
            r["finite"] and r["decreased"],
            f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} by step {r['last_step']}, "
            f"{r['samples_per_s']:.0f} samples/s{mem}",
        )
        if run.startswith("zero"):
            second = log(f"{run}_phase2")
            resumed = "resumed from" in second and f"at step {zero_steps // 2}" in second
            latest = path / "checkpoints" / "latest"
            add(
                f"{run}: checkpoint at {zero_steps // 2}, resumed to {zero_steps}",
                resumed and r["last_step"] == zero_steps and latest.exists(),
                f"resume line found: {resumed}; last logged step {r['last_step']}; latest -> "
                f"{os.readlink(latest) if latest.is_symlink() else latest.exists()}",
            )

    tables = []
    for audio in ("ast", "clap_htsat"):
        path = out / f"bench_{audio}.json"
        if not path.is_file():
            continue
        b = json.loads(path.read_text())
        figures[f"bench_{audio}"] = {k: v for k, v in b.items() if k != "rows"}
        finite = all(r["finite"] for r in b["rows"])
        add(f"bench {audio}: losses finite", finite, f"{len(b['rows'])} rows")
        if audio == "ast" and not b["tiny"]:
            detail = f"MFU {b['mfu']:.3f}, whole step {b['mfu_step']:.3f}"
            add("bench ast: MFU >= 0.40 (bf16, fwd+bwd)", b["mfu"] >= 0.40, detail)
            if b["memory_ratio"] is not None:
                ratio = b["memory_ratio"]
                add("bench ast: memory with checkpointing <= 0.5x", ratio <= 0.5, f"{ratio:.3f}")
        lines = [
            f"### tools.bench gpu --audio {audio}",
            "",
            f"{b['device_name']}, {b['precision']}, batch {b['batch_size']} x {b['clip_seconds']} s, "
            f"{b['params'] / 1e6:.1f} M parameters, {quantity(b['flops_per_step'], 'FLOP')} per step, "
            f"peak {quantity(b['peak_tflops'] * 1e12, 'FLOP/s')} ({b['peak_source']}), matmul "
            f"{quantity(b['matmul_tflops'] * 1e12, 'FLOP/s')}, MFU {b['mfu']:.3f} (step {b['mfu_step']:.3f}), "
            f"memory ratio {b['memory_ratio']}",
            "",
            "```",
            format_table(b["rows"]),
            "```",
        ]
        tables.append("\n".join(lines))

    ok = all(c["ok"] for c in checks)
    summary = {"ok": ok, "checks": checks, "figures": figures}
    env = (out / "env.txt").read_text(errors="replace") if (out / "env.txt").is_file() else ""
    md = ["# sonotext GPU validation", "", "```", env.strip(), "```", ""]
    md += ["| check | ok | detail |", "|---|---|---|"]
    md += [f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |" for c in checks]
    md += ["", *tables, ""]
    return ok, summary, "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("tools.gpu_validate"), description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="python, torch, GPU and package versions")
    sub.add_parser("cuda", help="1 if torch sees a CUDA device, else 0")
    version = sub.add_parser("version", help="installed version of a package")
    version.add_argument("package")
    summary = sub.add_parser("summary", help="checks and figures -> OUT/summary.json, OUT/summary.md")
    summary.add_argument(
        "--work", required=True, type=Path, help="the run's WORK folder (status.tsv, logs/, runs/)"
    )
    summary.add_argument(
        "--out", required=True, type=Path, help="the run's OUT folder (bench_*.json, env.txt)"
    )
    summary.add_argument("--zero-steps", required=True, type=int, help="ZERO_STEPS of the run")
    args = parser.parse_args(argv)

    if args.command == "env":
        print(environment())
    elif args.command == "cuda":
        import torch

        print(int(torch.cuda.is_available()))
    elif args.command == "version":
        try:
            print(importlib.metadata.version(args.package))
        except importlib.metadata.PackageNotFoundError:
            print(f"error: package {args.package!r} is not installed", file=sys.stderr)
            return 1
    else:
        if not (args.work / "status.tsv").is_file():
            print(
                f"error: {args.work / 'status.tsv'}: not found (did `gpu_validate.sh run` start?)",
                file=sys.stderr,
            )
            return 1
        ok, result, md = summarize(args.work, args.out, args.zero_steps)
        (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "summary.md").write_text(md)
        print(md)
        print("ALL CHECKS PASSED" if ok else "SOME CHECKS FAILED")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
