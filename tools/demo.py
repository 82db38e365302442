"""`make demo` / `python -m tools.demo`: the whole system on synthetic data, on one CPU machine, in minutes.

synthetic raw data in the official layouts -> tools.convert (the real converters) -> tools.verify -> two trainings
with the tiny encoders (weak-only, and weak+strong mixed) -> tools.evaluate (retrieval on held-out Clotho-style
clips, temporal alignment on held-out TACOS- and AudioSet-strong-style clips) -> tools.plot -> a comparison table
and runs/demo/summary.json. Every stage runs the real command line a user would type; the commands are printed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from trainer.cli import program_name

CONFIG = "configs/demo.yaml"
RUNS = {
    "weak_only": ["data.strong_every=0", "data.strong=[]"],
    "weak_strong": [],
}
SUMMARY_KEYS = (
    ("frame_auroc", "tacos-test", "frame_auroc"),
    ("frame_auroc_audioset", "audioset-strong-eval", "frame_auroc"),
    ("psds1", "tacos-test", "psds1"),
    ("psds1_audioset", "audioset-strong-eval", "psds1"),
    ("pauroc", "tacos-test", "pauroc"),
    ("R@1", "clotho-evaluation", "t2a/R@1"),
    ("R@10", "clotho-evaluation", "t2a/R@10"),
    ("mAP@10", "clotho-evaluation", "t2a/mAP@10"),
    ("mAP@10_multi", "clotho-evaluation", "t2a_multi/mAP@10"),
)


def sh(args: list[str], log: Path | None = None) -> None:
    """Run one CLI step, echoing it; its output goes to `log` (if given) to keep the demo readable."""
    print(f"$ {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    if log is None:
        proc = subprocess.run(args)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        where = f" (log: {log})" if log else ""
        raise SystemExit(f"demo: step failed with exit {proc.returncode}{where}: {shlex.join(args)}")
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)


def py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def make_data(data: Path, clips: int, seconds: float, workers: int) -> Path:
    raw, shards = data / "raw", data / "shards"
    if (raw / "clotho").is_dir() and (raw / "tacos").is_dir() and (raw / "audioset_strong").is_dir():
        print(f"reusing the synthetic raw data in {raw} (delete it to regenerate)")
    else:
        sh(
            py(
                "tools.synthetic",
                "--out",
                str(raw),
                "--clips",
                str(clips),
                "--seed",
                "0",
                "--seconds",
                str(seconds),
                "--workers",
                str(workers),
                "--overwrite",
            )
        )
    common = [
        "--out",
        str(shards),
        "--sample-rate",
        "16000",
        "--samples-per-shard",
        "50",
        "--workers",
        str(workers),
    ]
    sh(py("tools.convert", "clotho", "--src", str(raw / "clotho"), *common))
    # The synthetic TACOS layout ships the release's development_split.csv / test_split.csv, as the real one does.
    sh(py("tools.convert", "tacos", "--src", str(raw / "tacos"), *common))
    sh(
        py(
            "tools.convert",
            "audioset-strong",
            "--src",
            str(raw / "audioset_strong"),
            "--split",
            "eval",
            *common,
        )
    )
    splits = [shards / "clotho" / s for s in ("development", "validation", "evaluation")]
    splits += [shards / "tacos" / "train", shards / "tacos" / "test", shards / "audioset-strong" / "eval"]
    sh(py("tools.verify", *map(str, splits)))
    return shards


def data_overrides(shards: Path) -> list[str]:
    return [
        f"data.weak=[{{name: clotho, urls: {shards}/clotho/development, weight: 1.0}}]",
        f"data.strong=[{{name: tacos, urls: {shards}/tacos/train, weight: 1.0}}]",
        "eval.retrieval=[]",
        "eval.temporal=[]",
    ]


def evaluate(run: Path, shards: Path) -> dict[str, dict[str, float]]:
    ckpt = run / "checkpoints" / "latest"
    sets = {
        "clotho-evaluation": ("retrieval", shards / "clotho" / "evaluation"),
        "tacos-test": ("temporal", shards / "tacos" / "test"),
        "audioset-strong-eval": ("temporal", shards / "audioset-strong" / "eval"),
    }
    reports = {}
    for name, (task, split) in sets.items():
        out = run / "eval" / f"final_{name}.json"
        args = [
            "--checkpoint",
            str(ckpt),
            "--data",
            str(split),
            "--task",
            task,
            "--out",
            str(out),
            "--no-cache",
        ]
        sh(py("tools.evaluate", *args), run / "logs" / f"evaluate_{name}.log")
        reports[name] = json.loads(out.read_text())["metrics"]
    return reports


def summarize(reports: dict[str, dict[str, float]]) -> dict[str, float]:
    return {key: reports[name][metric] for key, name, metric in SUMMARY_KEYS}


def table(summary: dict[str, dict[str, float]]) -> str:
    runs = list(summary)
    width = max(len(k) for k, _, _ in SUMMARY_KEYS) + 2
    lines = ["metric".ljust(width) + "".join(r.rjust(13) for r in runs)]
    for key, name, metric in SUMMARY_KEYS:
        row = key.ljust(width) + "".join(f"{summary[r][key]:13.3f}" for r in runs)
        lines.append(f"{row}    ({name} {metric})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("tools.demo"), description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path("data/demo"), help="raw data and shards (default data/demo)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="runs, figures, summary (default runs/demo)"
    )
    parser.add_argument("--clips", type=int, default=200, help="synthetic clips per layout (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument(
        "--steps", type=int, default=300, help="optimizer steps per training run (default 300)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes for generation/conversion (default 2)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="extra config overrides for both runs, e.g. data.batch_size=8"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()

    print("== data: synthetic clips in the official layouts -> shards")
    shards = make_data(args.data, args.clips, args.seconds, args.workers)

    summary: dict[str, dict[str, float]] = {}
    for name, extra in RUNS.items():
        run = args.out / name
        print(f"\n== train {name}")
        if run.exists():
            import shutil

            shutil.rmtree(run)  # a fresh run each time: the demo shows what this code does now
        overrides = [f"run.name=demo-{name}", f"run.output_dir={run}", f"train.max_steps={args.steps}"]
        overrides += [f"data.clip_seconds={min(args.seconds, 10.0)}"]
        sh(
            py("trainer", CONFIG, *overrides, *data_overrides(shards), *extra, *args.overrides),
            run / "logs" / "train.log",
        )
        print(f"== evaluate {name}")
        summary[name] = summarize(evaluate(run, shards))
        (run / "summary.json").write_text(json.dumps(summary[name], indent=2) + "\n")

    print("\n== figures")
    figures = args.out / "figures"
    for name in RUNS:
        sh(
            py("tools.plot", "curves", str(args.out / name), "--out", str(figures / name)),
            args.out / "logs" / f"curves_{name}.log",
        )
        sh(
            py(
                "tools.plot",
                "similarity",
                "--checkpoint",
                str(args.out / name / "checkpoints" / "latest"),
                "--data",
                str(shards / "tacos" / "test"),
                "--num-clips",
                "3",
                "--out",
                str(figures / name / "similarity"),
            ),
            args.out / "logs" / f"similarity_{name}.log",
        )
    summary_path = args.out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    compare = figures / "compare.png"
    runs = [str(args.out / name / "summary.json") for name in RUNS]
    sh(
        py(
            "tools.plot",
            "compare",
            *runs,
            "--labels",
            *RUNS,
            "--out",
            str(compare),
            "--title",
            "held-out synthetic clips",
        ),
        args.out / "logs" / "compare.log",
    )

    print(f"\n== results (held-out synthetic clips; {time.perf_counter() - start:.0f} s in all)\n")
    print(table(summary))
    print(f"\nsummary:  {summary_path}")
    print(f"figures:  {figures}/ (compare.png; per run: loss.png, lr.png, throughput.png, similarity/*.png)")
    print(
        f"runs:     {args.out / 'weak_only'}  {args.out / 'weak_strong'}  (metrics.jsonl, checkpoints/, eval/)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
