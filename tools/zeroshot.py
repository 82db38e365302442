"""Zero-shot classification of labelled audio clips (ESC-50, UrbanSound8K-style): each clip gets the label whose
prompt ("This is a sound of {label}.") its embedding is closest to.

    python -m tools.zeroshot --checkpoint runs/x/checkpoints/latest --audio-dir ESC-50/audio \\
        --labels ESC-50/meta/esc50.csv --out zeroshot/
    python -m tools.zeroshot --checkpoint ORG/NAME --audio-dir clips/ --labels labels.csv --template "the sound of {}"

--labels: rows `path,label` (path relative to --audio-dir; an optional header row `path,label`), or ESC-50's own
meta/esc50.csv (filename, fold, target, category, ...). Underscores in labels become spaces in the prompts
(chirping_birds -> "chirping birds"). Writes OUT/report.json (accuracy, balanced accuracy, mAP, per-class recall and
AP, skipped files), OUT/predictions.csv and OUT/confusion.png; prints the summary and the per-class table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tools.model_cli import add_model_options, load_model_from_args
from trainer.cli import program_name

DEFAULT_TEMPLATE = "This is a sound of {}."
# ESC-50's metadata: meta/esc50.csv since v2.0.0; the release before named the label column category_name.
ESC50_COLUMNS = {
    ("filename", "fold", "target", "category"): "category",
    ("filename", "fold", "category", "category_name"): "category_name",
}


def read_labels(path: Path) -> list[tuple[str, str]]:
    """(relative audio path, label) rows of a labels CSV or ESC-50's meta CSV; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"--labels {path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [(n, r) for n, r in enumerate(rows, 1) if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"--labels {path}: empty")
    header = tuple(cell.strip() for cell in rows[0][1])
    label_column = ESC50_COLUMNS.get(header[:4])
    if label_column is not None:
        file_col, label_col = 0, header.index(label_column)
        rows = rows[1:]
    else:
        file_col, label_col = 0, 1
        if [h.lower() for h in header] == ["path", "label"]:
            rows = rows[1:]
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for line, row in rows:
        if label_column is None and len(row) != 2:
            raise ValueError(f"{path}:{line}: expected 2 columns (path,label), got {len(row)}")
        if len(row) <= label_col:
            raise ValueError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
        name, label = row[file_col], row[label_col].strip()
        rel = PurePosixPath(name.replace("\\", "/"))
        if not name or rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{path}:{line}: {name!r} is not a path relative to --audio-dir")
        if not label:
            raise ValueError(f"{path}:{line}: empty label for {name!r}")
        if seen.setdefault(name, label) != label:
            raise ValueError(f"{path}:{line}: {name!r} is labelled both {seen[name]!r} and {label!r}")
        if len(seen) > len(out):
            out.append((name, label))
    if not out:
        raise ValueError(f"--labels {path}: no rows")
    return out


def prompts(classes: list[str], template: str) -> list[str]:
    """The text of each class: `template` with the label (underscores as spaces) in place of {}."""
    if template.count("{}") != 1:
        raise ValueError(f"--template {template!r}: needs exactly one {{}} where the label goes")
    return [template.replace("{}", c.replace("_", " ")) for c in classes]


def report(metrics: dict[str, Any], classes: list[str], counts: np.ndarray) -> dict[str, Any]:
    """JSON-ready summary: overall figures and per class (recall, AP, number of clips)."""

    def number(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    return {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "mAP": metrics["mAP"],
        "per_class": {
            c: {"recall": number(r), "ap": number(a), "clips": int(n)}
            for c, r, a, n in zip(classes, metrics["recall"], metrics["ap"], counts)
        },
    }


def confusion_figure(confusion: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG; counts in cells when few."""
    from matplotlib.figure import Figure

    c = len(classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = confusion / confusion.sum(axis=1, keepdims=True)
    size = max(4.0, 0.22 * c + 2.5)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(np.nan_to_num(rates), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(c), [n.replace("_", " ") for n in classes], rotation=90, fontsize=7 if c > 20 else 9)
    ax.set_yticks(range(c), [n.replace("_", " ") for n in classes], fontsize=7 if c > 20 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if confusion[i, j]:
                    dark = rates[i, j] > 0.5
                    ax.text(
                        j,
                        i,
                        str(confusion[i, j]),
                        ha="center",
                        va="center",
                        color="white" if dark else "black",
                    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")


def write_predictions(
    path: Path, names: list[str], truth: list[str], predicted: list[str], scores: np.ndarray
) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", "score"])
        for row in zip(names, truth, predicted, scores):
            writer.writerow([*row[:3], f"{row[3]:.6f}"])


def format_table(summary: dict[str, Any]) -> str:
    lines = [
        f"accuracy           {100 * summary['accuracy']:6.2f}%",
        f"balanced accuracy  {100 * summary['balanced_accuracy']:6.2f}%",
        f"mAP                {100 * summary['mAP']:6.2f}%",
        "",
    ]
    width = max(len("class"), *(len(c) for c in summary["per_class"]))
    lines.append(f"{'class':<{width}}  recall      AP  clips")
    for name, v in summary["per_class"].items():
        recall = "   n/a" if v["recall"] is None else f"{100 * v['recall']:5.1f}%"
        ap = "   n/a" if v["ap"] is None else f"{100 * v['ap']:5.1f}%"
        lines.append(f"{name:<{width}}  {recall}  {ap}  {v['clips']:5d}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("tools.zeroshot"), description=__doc__.split("\n")[0])
    add_model_options(p)
    p.add_argument(
        "--audio-dir", required=True, type=Path, help="folder the label file's paths are relative to"
    )
    p.add_argument(
        "--labels", required=True, type=Path, help="CSV of path,label rows, or ESC-50's meta/esc50.csv"
    )
    p.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help=f'prompt per label (default "{DEFAULT_TEMPLATE}")'
    )
    p.add_argument("--out", type=Path, default=Path("zeroshot"), help="output folder (default ./zeroshot)")
    return p


def main(argv: list[str] | None = None) -> int:
    from shards.audio import AudioError
    from trainer.checkpoint import CheckpointError
    from trainer.metrics import classification_metrics
    from trainer.model.inference import embed_files

    args = build_parser().parse_args(argv)
    progress = sys.stdout.isatty()
    try:
        if not args.audio_dir.is_dir():
            raise FileNotFoundError(f"--audio-dir {args.audio_dir}: not a directory")
        rows = read_labels(args.labels)
        classes = sorted({label for _, label in rows})
        texts = prompts(classes, args.template)
        model = load_model_from_args(args)
        label_emb = model.embed_text(texts, progress=progress)
        paths = [args.audio_dir / name for name, _ in rows]
        audio_emb, kept, skipped = embed_files(model, paths, args.batch_size, args.max_seconds, progress)
        if not kept:
            raise ValueError(
                f"no listed audio file could be decoded ({len(skipped)} tried), e.g. {skipped[0][1]}"
            )
        class_of = {c: i for i, c in enumerate(classes)}
        truth = np.array([class_of[rows[i][1]] for i in kept])
        scores = (audio_emb @ label_emb.T).numpy()
        metrics = classification_metrics(scores, truth)
        summary = report(metrics, classes, np.bincount(truth, minlength=len(classes)))
        summary.update(
            {
                "num_clips": len(kept),
                "num_classes": len(classes),
                "checkpoint": str(args.checkpoint),
                "template": args.template,
                "prompts": dict(zip(classes, texts)),
                "skipped": [{"path": p, "reason": r} for p, r in skipped],
            }
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        predicted = [classes[k] for k in metrics["predicted"]]
        top = scores[np.arange(len(kept)), metrics["predicted"]]
        write_predictions(
            args.out / "predictions.csv",
            [rows[i][0] for i in kept],
            [rows[i][1] for i in kept],
            predicted,
            top,
        )
        title = f"zero-shot: accuracy {100 * summary['accuracy']:.1f}%, {len(kept)} clips"
        confusion_figure(metrics["confusion"], classes, args.out / "confusion.png", title)
    except (ValueError, OSError, ImportError, CheckpointError, AudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(format_table(summary))
    print(f"\n{len(kept)} clips, {len(classes)} classes" + (f", {len(skipped)} skipped" if skipped else ""))
    print(f"wrote {args.out}/report.json, predictions.csv, confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
