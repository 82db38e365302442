"""Evaluation reports of a split: retrieval and temporal alignment, the same dict on every rank.

`evaluate_retrieval` / `evaluate_temporal` embed the split on every rank (`trainer.embed`), and rank 0 turns the
merged embeddings into a report with the metrics of `trainer.metrics` and broadcasts it; an error on any rank is
raised on every rank. Given the reader's counts (`stats`), the report carries `expected`, `read` and `skipped`
samples over all ranks, and a split with skipped (corrupt) samples is an error unless `allow_partial`. Which sets
to evaluate, with which batches, is the run config's business (`trainer.eval_runner`); the CLI is `tools.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.distributed import broadcast_from_main, gather_to_main, rank_world
from trainer.embed import (
    RetrievalSet,
    TemporalSet,
    embed_retrieval,
    embed_temporal,
    failure,
    gather_embeddings,
    merged_set,
)
from trainer.metrics import (
    audio_to_text,
    frame_alignment_metrics,
    frame_targets,
    frame_timestamps,
    judged_relevance,
    merge_events,
    pauroc,
    psds1,
    retrieval_metrics,
    text_to_audio,
    zero_shot_accuracy,
)

COUNTS = ("expected", "read", "skipped")
"""Report keys that count samples: what the split holds, what was evaluated, what was skipped as corrupt."""


class PartialDataError(ValueError):
    """An evaluation split could only be read in part (corrupt samples or shards) and partial results were not
    allowed."""


def check_finite(name: str, values: np.ndarray) -> None:
    """A clear error when a model gave non-finite embeddings (its weights are not finite: a diverged run)."""
    rows = ~np.isfinite(values).reshape(len(values), -1).all(axis=1) if len(values) else np.zeros(0, bool)
    if rows.any():
        raise ValueError(
            f"the model gives non-finite {name} embeddings ({int(rows.sum())} of {len(values)}): its weights are not "
            "finite (a diverged training run?); evaluate an earlier checkpoint"
        )


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def retrieval_report(
    data: RetrievalSet, relevance: Mapping[str, Sequence[str]] | None = None
) -> dict[str, float]:
    """t2a/* and a2t/* (own captions are relevant), plus t2a_multi/* from multi-relevance judgements when given."""
    if not data.captions:
        raise ValueError("retrieval evaluation needs captions, but the split has none (a strong-only split?)")
    check_finite("audio", data.audio)
    check_finite("caption", data.text)
    report: dict[str, float] = {"num_clips": len(data.keys), "num_captions": len(data.captions)}
    report.update(_prefixed("t2a", text_to_audio(data.text, data.audio, data.caption_clip)))
    report.update(_prefixed("a2t", audio_to_text(data.audio, data.text, data.caption_clip)))
    if relevance:
        rows, relevant, counts = judged_relevance(data.captions, data.keys, relevance)
        report.update(_prefixed("t2a_multi", counts))
        if len(rows):
            report.update(_prefixed("t2a_multi", retrieval_metrics(data.text[rows] @ data.audio.T, relevant)))
    return report


def temporal_report(
    data: TemporalSet, max_sed_queries: int = 512, seed: int = 0, num_jobs: int = 1
) -> dict[str, float]:
    """Frame AUROC/AP per (clip, own region text), PSDS1 and pAUROC over a query vocabulary, zero-shot accuracy.

    - frame_auroc / frame_ap: for each clip and each of its unique region texts, the frame scores (cosine
      similarity of frame and text) against the frames its merged regions cover; mean over (clip, text) pairs with
      both covered and uncovered frames.
    - psds1 / pauroc: every clip is scored against every query of a vocabulary, as a sound event detector with one
      class per text: the unique region texts of the split (a seeded sample of `max_sed_queries` when there are more;
      events of texts outside the sample are not evaluated). A text of another clip is a negative query here, so
      free-text sets (TACOS) and label sets (AudioSet-strong) are evaluated the same way.
    - zs_acc: clip embedding vs all unique region texts; correct when the top text is one of the clip's own.
    """
    n = len(data.keys)
    if not data.texts:
        raise ValueError("temporal evaluation needs strong regions, but the split has none")
    check_finite("audio", data.audio)
    check_finite("frame", data.frames)
    check_finite("region text", data.text)
    text_index = {t: i for i, t in enumerate(data.texts)}
    regions: list[dict[str, list[tuple[float, float]]]] = [{} for _ in range(n)]
    for text, clip, onset, offset in zip(data.region_text, data.region_clip, data.onsets, data.offsets):
        offset = min(float(offset), float(data.durations[clip]))  # the shard format allows 1 ms of rounding
        if onset < offset:
            regions[int(clip)].setdefault(text, []).append((float(onset), offset))

    scores, targets = [], []
    sed_scores, sed_times, sed_events = {}, {}, {}
    vocab = list(data.texts)
    if len(vocab) > max_sed_queries:
        pick = np.random.default_rng(seed).choice(len(vocab), size=max_sed_queries, replace=False)
        vocab = [vocab[i] for i in sorted(pick)]
    vocab_set = set(vocab)
    vocab_emb = data.text[[text_index[t] for t in vocab]]
    for i, key in enumerate(data.keys):
        frames = data.clip_frames(i)
        if not len(frames):
            continue
        ts = frame_timestamps(len(frames), data.frame_rate, float(data.durations[i]))
        frames = frames[: len(ts) - 1]
        for text, spans in regions[i].items():
            merged = [(on, off) for on, off, _ in merge_events((on, off, text) for on, off in spans)]
            scores.append(frames @ data.text[text_index[text]])
            targets.append(frame_targets(len(frames), data.frame_rate, merged))
        sed_scores[key] = frames @ vocab_emb.T
        sed_times[key] = ts
        sed_events[key] = [
            (on, off, t) for t, spans in regions[i].items() if t in vocab_set for on, off in spans
        ]
    frame = frame_alignment_metrics(scores, targets)
    used = sorted({t for evs in sed_events.values() for _, _, t in evs})
    vocab_index = {t: j for j, t in enumerate(vocab)}
    col = [vocab_index[t] for t in used]
    sed_scores = {k: v[:, col] for k, v in sed_scores.items()}
    durations = {k: float(d) for k, d in zip(data.keys, data.durations) if k in sed_scores}
    labels = np.zeros((n, len(data.texts)), dtype=bool)
    for i in range(n):
        labels[i, [text_index[t] for t in regions[i]]] = True
    return {
        "num_clips": n,
        "num_queries": sum(1 for t in targets if 0 < t.sum() < t.size),
        "num_sed_queries": len(used),
        "frame_auroc": frame["auroc"],
        "frame_ap": frame["ap"],
        "psds1": psds1(sed_scores, sed_times, sed_events, used, durations, num_jobs=num_jobs),
        "pauroc": pauroc(sed_scores, sed_times, sed_events, used, durations, num_jobs=num_jobs),
        "zs_acc": zero_shot_accuracy(data.audio, data.text, labels),
    }


def world_counts(stats) -> dict[str, int]:
    """A reader's counts (shards.records.ReadStats) summed over all ranks (collective), as {expected, read, skipped}."""
    parts = gather_to_main({k: v for k, v in stats.as_dict().items() if k in COUNTS})
    total = {k: sum(p[k] for p in parts) for k in COUNTS} if parts is not None else None
    return broadcast_from_main(total)


def _report_on_main(
    embed: Callable[[], Any],
    kind: type,
    make_report: Callable[[Any], dict[str, float]],
    cache_path,
    stats=None,
    allow_partial: bool = False,
) -> dict[str, float]:
    """Embed on every rank, merge and report on rank 0, broadcast; an error on any rank is raised on every rank.

    With `cache_path`, rank 0 loads the merged set from there when the file exists (then no rank embeds) and saves
    it there after embedding otherwise (not when samples were skipped: a cache holds only complete splits). With the
    reader's `stats`, the report gets the sample counts and skipped samples are a PartialDataError unless
    `allow_partial`.
    """
    gathered = gather_embeddings(embed, cache_path)
    counts = world_counts(stats) if stats is not None and not gathered.cached else None
    if counts is not None and counts["skipped"] and not allow_partial:
        raise PartialDataError(
            f"evaluation read {counts['read']} of {counts['expected']} samples: {counts['skipped']} skipped as "
            "corrupt (truncated or unreadable shards, bad samples; see the warnings above). Repair the split, or "
            "report on what was read with --allow-partial (eval.allow_partial=true during training)"
        )
    report = error = None
    if rank_world()[0] == 0:
        try:
            complete = counts is None or not counts["skipped"]
            data = merged_set(kind, gathered, cache_path if complete else None)
            report = make_report(data)
            if stats is not None:
                n = len(data.keys)
                report.update(
                    counts or {"expected": n, "read": n, "skipped": 0}
                )  # a cache holds complete splits
        except Exception as e:
            error = e
    report, message = broadcast_from_main((report, failure(error)))
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"evaluation failed on rank 0: {message}")
    return report


def evaluate_retrieval(
    model,
    batches: Iterable[Mapping[str, Any]],
    relevance: Mapping[str, Sequence[str]] | None = None,
    device: torch.device | str | None = None,
    cache_path: str | Path | None = None,
    lockstep: bool = False,
    stats=None,
    allow_partial: bool = False,
) -> dict[str, float]:
    """Text-to-audio and audio-to-text retrieval of a split; the same report on every rank.

    `relevance` (query caption -> relevant clip keys or file names) adds the multi-relevance t2a_multi/* figures.
    With `cache_path`, the gathered embeddings are saved there (.npz) and reused by later calls instead of the model.
    `lockstep`: every rank runs the same number of forwards (needed under DeepSpeed ZeRO-3). `stats`: the
    shards.records.ReadStats that `batches` fill (the report then carries expected/read/skipped; skipped samples
    are a PartialDataError unless `allow_partial`).
    """
    return _report_on_main(
        lambda: embed_retrieval(model, batches, device, lockstep),
        RetrievalSet,
        lambda data: retrieval_report(data, relevance),
        cache_path,
        stats,
        allow_partial,
    )


def evaluate_temporal(
    model,
    batches: Iterable[Mapping[str, Any]],
    device: torch.device | str | None = None,
    max_sed_queries: int = 512,
    text_template: str = "{}",
    cache_path: str | Path | None = None,
    num_jobs: int = 1,
    lockstep: bool = False,
    stats=None,
    allow_partial: bool = False,
) -> dict[str, float]:
    """Temporal alignment on a strong split (see `temporal_report`); the same report on every rank.

    `num_jobs` processes compute PSDS1/pAUROC on rank 0 (they dominate the cost on large splits).
    `lockstep`: every rank runs the same number of forwards (needed under DeepSpeed ZeRO-3). `stats` and
    `allow_partial`: as for `evaluate_retrieval`.
    """
    return _report_on_main(
        lambda: embed_temporal(model, batches, device, text_template, lockstep),
        TemporalSet,
        lambda data: temporal_report(data, max_sed_queries, num_jobs=num_jobs),
        cache_path,
        stats,
        allow_partial,
    )
