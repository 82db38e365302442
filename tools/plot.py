"""Figures as PNG, one figure per file: training curves, similarity over time, and run comparisons.

    python -m tools.plot curves runs/debug                          # -> runs/debug/plots/{loss,lr,throughput,eval_*}.png
    python -m tools.plot similarity --checkpoint runs/debug/checkpoints/step_10 \\
        --data data/demo/shards/tacos/test --num-clips 4 --out plots/
    python -m tools.plot compare runs/weak runs/weak_strong --labels weak weak+strong --out compare.png

`compare` takes run folders (their latest eval/step_N.json) or JSON reports of tools.evaluate.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from trainer.cli import program_name

STEP_FILE = re.compile(r"^step_(\d+)\.json$")
TRAIN_PANELS = {
    "loss": ("loss", ["loss", "loss_weak", "loss_strong"]),
    "lr": ("learning rate", ["lr"]),
    "throughput": ("samples / s", ["samples_per_s"]),
}
RETRIEVAL_DIRECTIONS = {"t2a", "a2t", "t2a_multi"}
DPI = 120


# ---------------------------------------------------------------------------------------------------------------------
# Reading run outputs
# ---------------------------------------------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl; a bad line is an error naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a run folder?)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{n}: expected an object with 'step'")
        records.append(record)
    return records


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested mappings as {"a/b/c": value}; bools and non-numbers are left out."""
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out


def read_eval(run_dir: str | Path) -> dict[int, dict[str, float]]:
    """step -> flattened metrics of every RUN/eval/step_N.json (the step key itself left out)."""
    folder = Path(run_dir) / "eval"
    out: dict[int, dict[str, float]] = {}
    if not folder.is_dir():
        return out
    for path in folder.iterdir():
        m = STEP_FILE.match(path.name)
        if not m:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        metrics = flatten(data)
        metrics.pop("step", None)
        out[int(m.group(1))] = metrics
    return dict(sorted(out.items()))


def is_fraction_metric(key: str) -> bool:
    """Whether a report key holds a fraction in [0, 1] (not a rank such as medR, not a count num_*)."""
    leaf = key.rsplit("/", 1)[-1]
    counts = (
        "step",
        "expected",
        "read",
        "skipped",
    )  # the sample counts of a report (trainer.evaluate.COUNTS)
    return leaf != "medR" and not leaf.startswith("num_") and leaf not in counts


def eval_groups(metrics: Mapping[str, float]) -> dict[str, list[str]]:
    """Fraction metric keys grouped by evaluation set: "SET/t2a/R@1" -> SET; keys without a set -> "eval"."""
    groups: dict[str, list[str]] = {}
    for key in metrics:
        if not is_fraction_metric(key):
            continue
        parts = key.split("/")
        group = parts[0] if len(parts) > 1 and parts[0] not in RETRIEVAL_DIRECTIONS else "eval"
        groups.setdefault(group, []).append(key)
    return groups


def run_summary(path: str | Path) -> dict[str, float]:
    """Summary metrics of a run folder (its latest eval/step_N.json) or of a JSON report (its `metrics`)."""
    path = Path(path)
    if path.is_dir():
        evals = read_eval(path)
        if not evals:
            raise ValueError(f"{path}: no eval/step_N.json in this run folder")
        return evals[max(evals)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such run folder or report")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    metrics = flatten(data)
    metrics.pop("step", None)
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _short(text: str, width: int = 60) -> str:
    return textwrap.shorten(text, width=width, placeholder="…")


def plot_training(records: Sequence[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """loss.png (loss, loss_weak, loss_strong), lr.png, throughput.png from metrics.jsonl records vs step."""
    written = []
    for name, (ylabel, keys) in TRAIN_PANELS.items():
        series = {}
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            points = [(s, v) for s, v in points if math.isfinite(v)]
            if points:
                series[key] = np.asarray(points, dtype=np.float64)
        if not series:
            continue
        fig = Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        for key, pts in series.items():
            ax.plot(pts[:, 0], pts[:, 1], marker="." if len(pts) < 50 else None, label=key)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} during training")
        ax.grid(alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if len(series) > 1:
            ax.legend()
        written.append(_save(fig, Path(out_dir) / f"{name}.png"))
    return written


def plot_eval(evals: Mapping[int, Mapping[str, float]], out_dir: str | Path) -> list[Path]:
    """eval_SET.png per evaluation set: its fraction metrics (in %) vs step."""
    keys = sorted({k for m in evals.values() for k in m})
    written = []
    for group, members in eval_groups(dict.fromkeys(keys, 0.0)).items():
        fig = Figure(figsize=(9, 5))
        ax = fig.add_subplot()
        for key in members:
            pts = [(s, m[key]) for s, m in evals.items() if key in m and math.isfinite(m[key])]
            if not pts:
                continue
            steps, values = zip(*pts)
            label = key[len(group) + 1 :] if key.startswith(group + "/") else key
            ax.plot(steps, 100 * np.asarray(values), marker="o", label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(f"evaluation: {group}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5))
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", group)
        written.append(_save(fig, Path(out_dir) / f"eval_{safe}.png"))
    return written


def plot_curves(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Training and evaluation curves of a run (default output: RUN/plots/)."""
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    written = plot_training(read_metrics(run_dir), out)
    written += plot_eval(read_eval(run_dir), out)
    return written


def plot_similarity(
    sim: Any,
    frame_rate: float,
    texts: Sequence[str],
    regions: Sequence[tuple[float, float, str]],
    title: str,
    path: str | Path,
) -> Path:
    """Text-frame similarity of one clip: heatmap (texts x time) above, one curve per text below; the ground-truth
    regions of each text are outlined on its heatmap row and shaded in its colour under the curves.

    sim: [Q, F] similarities of the Q `texts` with the F frames; regions: (onset, offset, text) in seconds.
    """
    sim = np.asarray(sim, dtype=np.float32)
    if sim.ndim != 2 or sim.shape[0] != len(texts):
        raise ValueError(f"sim: expected [{len(texts)} texts, frames], got shape {sim.shape}")
    if frame_rate <= 0:
        raise ValueError(f"frame_rate: must be > 0, got {frame_rate}")
    row = {t: i for i, t in enumerate(texts)}
    unknown = [t for _, _, t in regions if t not in row]
    if unknown:
        raise ValueError(f"regions: text {unknown[0]!r} is not one of the plotted texts")
    n_q, n_f = sim.shape
    end = n_f / frame_rate
    colors = [f"C{i % 10}" for i in range(n_q)]
    fig = Figure(figsize=(12, 4.5 + 0.4 * n_q + 0.25 * n_q), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[max(1.2, 0.4 * n_q), 3])
    image = top.imshow(
        sim,
        aspect="auto",
        origin="upper",
        extent=(0, end, n_q - 0.5, -0.5),
        cmap="viridis",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=top, label="cosine similarity", pad=0.01)
    top.set_yticks(range(n_q), [_short(t, 40) for t in texts], fontsize="small")
    for onset, offset, text in regions:
        r = row[text]
        top.add_patch(
            Rectangle(
                (onset, r - 0.5), offset - onset, 1.0, edgecolor="white", facecolor="none", linewidth=1.5
            )
        )
    top.set_title(f"{title}: text-frame similarity (boxes and shading: ground-truth regions)")
    times = (np.arange(n_f) + 0.5) / frame_rate
    for i, text in enumerate(texts):
        bottom.plot(times, sim[i], color=colors[i], label=_short(text, 100))
    for onset, offset, text in regions:
        bottom.axvspan(onset, offset, color=colors[row[text]], alpha=0.15)
    bottom.set_xlim(0, end)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("similarity")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    return _save(fig, Path(path))


def plot_compare(
    summaries: Mapping[str, Mapping[str, float]],
    path: str | Path,
    metrics: Sequence[str] | None = None,
    title: str = "run comparison",
) -> Path:
    """Grouped bars (in %) of the fraction metrics the runs share (or `metrics`), one bar per run, values printed."""
    labels = list(summaries)
    if len(labels) < 2:
        raise ValueError("plot_compare: needs at least two runs")
    if metrics is None:
        shared = set.intersection(*(set(m) for m in summaries.values()))
        metrics = sorted(k for k in shared if is_fraction_metric(k))
    else:
        for label, m in summaries.items():
            missing = [k for k in metrics if k not in m]
            if missing:
                raise ValueError(
                    f"run {label!r} has no metric {missing[0]!r} (it has: {', '.join(sorted(m)[:8])} ...)"
                )
    if not metrics:
        raise ValueError("plot_compare: the runs share no fraction metric")
    x = np.arange(len(metrics))
    width = 0.8 / len(labels)
    fig = Figure(figsize=(max(6.0, 0.9 * len(metrics) * len(labels) / 2 + 3), 5))
    ax = fig.add_subplot()
    for j, label in enumerate(labels):
        values = 100 * np.asarray([summaries[label][k] for k in metrics], dtype=np.float64)
        bars = ax.bar(x + (j - (len(labels) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)
    ax.set_xticks(x, metrics, rotation=35, ha="right")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


# ---------------------------------------------------------------------------------------------------------------------
# Model glue for `similarity`
# ---------------------------------------------------------------------------------------------------------------------


def similarity_examples(model, batches, num_clips: int, device=None) -> list[dict[str, Any]]:
    """For the first `num_clips` clips: {key, sim [Q, F], frame_rate, texts, regions}; the texts are the clip's
    unique region texts, or its captions when it has no regions."""
    import torch

    from trainer.embed import eval_mode, forward_batch

    device = torch.device(device) if device is not None else torch.device("cpu")
    examples: list[dict[str, Any]] = []
    with eval_mode(model):
        for batch in batches:
            region_clip = [int(i) for i in batch.get("region_clip", [])]
            per_clip = []
            for b, key in enumerate(batch["keys"]):
                regions = [
                    (float(batch["onsets"][r]), float(batch["offsets"][r]), batch["region_text"][r])
                    for r, c in enumerate(region_clip)
                    if c == b
                ]
                texts = list(dict.fromkeys(t for _, _, t in regions)) or list(
                    dict.fromkeys(batch["captions"][b])
                )
                per_clip.append((key, texts, regions))
            all_texts = list(dict.fromkeys(t for _, texts, _ in per_clip for t in texts))
            out = forward_batch(model, batch, all_texts, device)
            text = out.text.float().cpu().numpy() if all_texts else np.zeros((0, 0), np.float32)
            index = {t: i for i, t in enumerate(all_texts)}
            frames = out.audio_frames.float().cpu().numpy()
            mask = out.frame_mask.cpu().numpy().astype(bool)
            for b, (key, texts, regions) in enumerate(per_clip):
                if not texts:
                    continue
                f = frames[b][mask[b]]
                sim = text[[index[t] for t in texts]] @ f.T
                examples.append(
                    {
                        "key": key,
                        "sim": sim,
                        "frame_rate": float(out.frame_rate),
                        "texts": texts,
                        "regions": regions,
                    }
                )
                if len(examples) == num_clips:
                    return examples
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("tools.plot"), description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "curves", help="training curves (metrics.jsonl) and eval metrics (eval/step_*.json) of a run"
    )
    c.add_argument("run", type=Path, help="run folder (run.output_dir)")
    c.add_argument("--out", type=Path, default=None, help="output folder (default RUN/plots)")

    s = sub.add_parser("similarity", help="text-frame similarity over time for clips of a split")
    s.add_argument("--checkpoint", required=True, type=Path, help="RUN/checkpoints/step_N")
    s.add_argument("--data", required=True, nargs="+", help="shard urls or split folder(s)")
    s.add_argument("--num-clips", type=int, default=4)
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--sample-rate", type=int, default=None, help="default: the model's sample rate")
    s.add_argument("--device", default=None)

    m = sub.add_parser("compare", help="bar chart of the summary metrics of two or more runs")
    m.add_argument("runs", nargs="+", type=Path, help="run folders or JSON reports")
    m.add_argument("--labels", nargs="+", default=None, help="one label per run (default: folder/file names)")
    m.add_argument("--metrics", nargs="+", default=None, help="metric keys (default: all shared fractions)")
    m.add_argument("--title", default="run comparison")
    m.add_argument("--out", type=Path, required=True, help="PNG to write")
    return p


def _similarity(args: argparse.Namespace) -> list[Path]:
    from shards.reader import iter_eval_batches
    from trainer.checkpoint import checkpoint_sample_rate, load_model, model_dir
    from trainer.distributed import local_device

    if args.num_clips <= 0:
        raise ValueError(f"--num-clips: must be > 0, got {args.num_clips}")
    model_dir(args.checkpoint, "--checkpoint")
    device = local_device(args.device)
    model = load_model(args.checkpoint, device, "--checkpoint").eval()
    sample_rate = checkpoint_sample_rate(args.checkpoint, args.sample_rate, model)
    batches = iter_eval_batches(args.data, sample_rate=sample_rate, batch_size=min(args.num_clips, 8))
    written = []
    for ex in similarity_examples(model, batches, args.num_clips, device):
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", ex["key"])
        path = args.out / f"similarity_{safe}.png"
        written.append(
            plot_similarity(ex["sim"], ex["frame_rate"], ex["texts"], ex["regions"], ex["key"], path)
        )
    return written


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "curves":
            written = plot_curves(args.run, args.out)
        elif args.command == "similarity":
            written = _similarity(args)
        else:
            labels = args.labels or [r.stem if r.is_file() else r.name for r in args.runs]
            if len(labels) != len(args.runs):
                raise ValueError(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
            if len(set(labels)) != len(labels):
                raise ValueError(f"--labels: labels must differ, got {labels}")
            summaries = {label: run_summary(r) for label, r in zip(labels, args.runs)}
            written = [plot_compare(summaries, args.out, args.metrics, args.title)]
    except (ValueError, OSError, ImportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not written:
        print("error: nothing to plot", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
