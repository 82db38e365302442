"""Evaluate a checkpoint on an evaluation split; prints a table and writes a JSON report.

    python -m tools.evaluate --checkpoint runs/debug/checkpoints/step_10 \\
        --data data/demo/shards/clotho/evaluation --task retrieval --out report.json
    torchrun --nproc_per_node 4 -m tools.evaluate ...     # each rank embeds its share; rank 0 writes the report

retrieval: text->audio and audio->text R@1/5/10, mAP@10, medR; with the split's multi-relevance judgements
(manifest.json `relevance_keys`/`relevance`, or --relevance) also t2a_multi/*. temporal (strong splits): frame
AUROC/AP, PSDS1, pAUROC, zero-shot accuracy. Embeddings are cached under CHECKPOINT/eval_cache/ (--no-cache to skip).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from trainer.cli import program_name

TASKS = ("retrieval", "temporal")
COUNTS = ("expected", "read", "skipped")
"""Report keys that count samples (trainer.evaluate.COUNTS)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=program_name("tools.evaluate"), description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="RUN/checkpoints/step_N (holds model/)")
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="shard urls: split folder(s) or brace pattern(s); local, http(s)://, s3://, gs:// or hf://",
    )
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--out", required=True, type=Path, help="JSON report to write")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch and rank (default 16)")
    p.add_argument("--sample-rate", type=int, default=None, help="default: the model's sample rate")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument(
        "--relevance", default=None, help="manifest.json or metadata_eval.csv (a path or url) with judgements"
    )
    p.add_argument("--max-sed-queries", type=int, default=512, help="query vocabulary cap for PSDS1/pAUROC")
    p.add_argument(
        "--text-template",
        default="{}",
        help='temporal queries as TEMPLATE.format(text), e.g. "the sound of {}"',
    )
    p.add_argument("--jobs", type=int, default=1, help="processes for PSDS1/pAUROC on rank 0 (default 1)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write CHECKPOINT/eval_cache/")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="report on the samples that could be read when the split has corrupt samples or shards (default: an "
        "error); the report's expected/read/skipped say how many",
    )
    return p


def progress(batches: Iterable[dict], enabled: bool, desc: str) -> Iterable[dict]:
    """Batches with a tqdm bar when stdout is a terminal."""
    if enabled and sys.stdout.isatty():
        from tqdm import tqdm

        return tqdm(batches, desc=desc, unit="batch")
    return batches


def format_table(report: Mapping[str, float]) -> str:
    """Metric | value rows; fractions as percentages, ranks and counts as numbers."""
    rows = []
    for key, value in report.items():
        name = key.rsplit("/", 1)[-1]
        if name.startswith("num_") or name in COUNTS:
            text = f"{int(value)}"
        elif name == "medR":
            text = f"{value:.1f}"
        elif isinstance(value, float) and math.isnan(value):
            text = "n/a"
        else:
            text = f"{100 * value:.2f}%"
        rows.append((key, text))
    width = max([len("metric")] + [len(k) for k, _ in rows])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -------"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as `args` say; the report on every rank."""
    from shards.reader import iter_eval_batches
    from shards.records import ReadStats
    from shards.relevance import load_relevance, read_relevance
    from trainer.checkpoint import checkpoint_sample_rate, eval_cache_path, load_model, model_dir
    from trainer.distributed import init_from_env, local_device
    from trainer.evaluate import evaluate_retrieval, evaluate_temporal

    model_dir(args.checkpoint, "--checkpoint")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size: must be > 0, got {args.batch_size}")
    if args.jobs <= 0:
        raise ValueError(f"--jobs: must be > 0, got {args.jobs}")
    if args.max_sed_queries <= 0:
        raise ValueError(f"--max-sed-queries: must be > 0, got {args.max_sed_queries}")
    if "{}" not in args.text_template:
        raise ValueError(
            f"--text-template: must contain {{}} where the text goes, got {args.text_template!r}"
        )
    rank, world = init_from_env()
    device = local_device(args.device)
    model = load_model(args.checkpoint, device, "--checkpoint").eval()
    sample_rate = checkpoint_sample_rate(args.checkpoint, args.sample_rate, model)
    stats = ReadStats()
    batches = progress(
        iter_eval_batches(
            args.data,
            sample_rate=sample_rate,
            batch_size=args.batch_size,
            rank=rank,
            world_size=world,
            stats=stats,
        ),
        enabled=rank == 0,
        desc=f"embedding ({args.task})",
    )
    if args.task == "retrieval":
        relevance = read_relevance(args.relevance) if args.relevance else load_relevance(args.data)
        cache = (
            None if args.no_cache else eval_cache_path(args.checkpoint, "retrieval", args.data, sample_rate)
        )
        metrics = evaluate_retrieval(
            model,
            batches,
            relevance=relevance,
            device=device,
            cache_path=cache,
            stats=stats,
            allow_partial=args.allow_partial,
        )
    else:
        extra = json.dumps([args.text_template])
        cache = (
            None
            if args.no_cache
            else eval_cache_path(args.checkpoint, "temporal", args.data, sample_rate, extra)
        )
        metrics = evaluate_temporal(
            model,
            batches,
            device=device,
            max_sed_queries=args.max_sed_queries,
            text_template=args.text_template,
            cache_path=cache,
            num_jobs=args.jobs,
            stats=stats,
            allow_partial=args.allow_partial,
        )
    return {
        "task": args.task,
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "sample_rate": sample_rate,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError, ImportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(format_table(report["metrics"]))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.out)
        print(f"wrote {args.out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
