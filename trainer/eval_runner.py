"""Periodic evaluation inside training: every set of `eval.retrieval` and `eval.temporal`, keys prefixed by set name,
written to RUN/eval/step_N.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.config import Config, EvalSetConfig


def eval_batches(s: EvalSetConfig, cfg: Config, rank: int, world_size: int, stats=None):
    """Finite batches of one evaluation set for this rank: whole clips, each sample exactly once over all ranks;
    `stats` (a shards.records.ReadStats) receives this rank's counts."""
    from shards.reader import iter_eval_batches
    from shards.remote import ReadPolicy

    return iter_eval_batches(
        s.urls,
        sample_rate=cfg.data.sample_rate,
        batch_size=cfg.eval.batch_size,
        rank=rank,
        world_size=world_size,
        clip_seconds=None,
        allow_pipe=cfg.data.allow_pipe,
        min_region_overlap=cfg.data.min_region_overlap,
        max_samples=s.max_samples,
        policy=ReadPolicy.of(cfg.data),
        max_text_chars=cfg.data.max_text_chars,
        stats=stats,
    )


def partitions_parameters(accelerator) -> bool:
    """True under DeepSpeed ZeRO-3, where every forward gathers parameters from all ranks."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and int(plugin.zero_stage) == 3


def evaluate_sets(model, cfg: Config, accelerator) -> dict[str, Any]:
    """Run every configured evaluation set; the same flat dict {"SET/metric": value} on every rank, with
    SET/expected, SET/read and SET/skipped sample counts (skipped samples are an error unless eval.allow_partial)."""
    from shards.records import ReadStats
    from shards.relevance import load_relevance
    from shards.remote import ReadPolicy
    from trainer.evaluate import evaluate_retrieval, evaluate_temporal

    rank, world = accelerator.process_index, accelerator.num_processes
    lockstep = world > 1 and partitions_parameters(accelerator)
    results: dict[str, Any] = {}
    partial = cfg.eval.allow_partial
    for s in cfg.eval.retrieval:
        stats = ReadStats()
        report = evaluate_retrieval(
            model,
            eval_batches(s, cfg, rank, world, stats),
            relevance=load_relevance(s.urls, cfg.data.allow_pipe, ReadPolicy.of(cfg.data)),
            device=accelerator.device,
            lockstep=lockstep,
            stats=stats,
            allow_partial=partial,
        )
        results.update({f"{s.name}/{k}": v for k, v in report.items()})
    for s in cfg.eval.temporal:
        stats = ReadStats()
        report = evaluate_temporal(
            model,
            eval_batches(s, cfg, rank, world, stats),
            device=accelerator.device,
            lockstep=lockstep,
            stats=stats,
            allow_partial=partial,
        )
        results.update({f"{s.name}/{k}": v for k, v in report.items()})
    return results


def write_report(out_dir: Path, step: int, results: dict[str, Any]) -> Path:
    """OUT/eval/step_N.json with the step and every result, written atomically (main process only)."""
    path = out_dir / "eval" / f"step_{step}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, **results}, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
