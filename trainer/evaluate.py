"""Evaluation: text-audio retrieval, temporal alignment and zero-shot metrics, and the drivers that embed a split.

Metrics are pure functions on numpy arrays:
- `retrieval_metrics`: R@1/5/10, mAP@10 (as the DCASE 2025 task 6 code computes it) and medR.
- `frame_alignment_metrics`: per-query frame AUROC and AP, averaged over queries.
- `psds1` and `pauroc`: threshold-independent detection metrics from frame scores, computed by `sed_scores_eval`.
- `zero_shot_accuracy`: top-1 accuracy of labelling clips with their nearest label text.

The drivers (`evaluate_retrieval`, `evaluate_temporal`) run a model in eval mode over a finite evaluation stream.
Every rank embeds its own share; the embeddings are gathered on rank 0 and ordered by sample key (so results do not
depend on the world size and a sample seen twice is an error); rank 0 computes the metrics and broadcasts them, so
every rank returns the same dict. Pass the unwrapped model (not the DDP wrapper): ranks may see different numbers
of batches. Under DeepSpeed ZeRO-3 every forward gathers parameters collectively, so pass `lockstep=True`: ranks
then run the same number of forwards through both towers (a rank that is out of batches runs a silent filler clip
whose output is dropped).

Every metric value is a fraction in [0, 1] except `medR` (a 1-based rank) and `num_*` (counts).
"""

from __future__ import annotations

import ast
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from shards.schema import make_key

RECALL_KS = (1, 5, 10)
MAP_K = 10

# PSDS1 as in DCASE task 4 and TACOS: intersection-based, no cross-trigger term, penalise instability across queries.
PSDS1 = {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "alpha_ct": 0.0, "alpha_st": 1.0}
PSDS_MAX_EFPR = 100.0
"""False positives per hour up to which the PSD-ROC is integrated (DCASE/TACOS: 100)."""
PAUROC_MAX_FPR = 0.1
PAUROC_SEGMENT = 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------------


def _check_pair(similarity: Any, relevant: Any, what: str = "similarity") -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevant)
    if sim.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D [queries, items] array, got shape {sim.shape}")
    if rel.shape != sim.shape:
        raise ValueError(f"relevant: shape {rel.shape} does not match {what} shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError(f"{what}: contains NaN or Inf")
    if rel.dtype != bool:
        if rel.size and not np.isin(rel, (0, 1)).all():
            raise ValueError("relevant: expected a boolean (or 0/1) matrix")
        rel = rel.astype(bool)
    return sim, rel


def ranked_hits(similarity: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """[Q, N] bool: whether the item ranked r-th (0-based) for query q is relevant; ties rank the lower index first."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    return np.take_along_axis(relevant, order, axis=1)


def retrieval_metrics(similarity: Any, relevant: Any) -> dict[str, float]:
    """R@1/5/10, mAP@10, mAP@16 and medR of ranking items by similarity; queries without any relevant item are excluded.

    - R@k: fraction of queries with at least one relevant item among the top k.
    - mAP@10 (DCASE 2025 task 6): with relevant items at 0-based ranks r_1 < r_2 < ... < r_R,
      AP = sum over r_i < 10 of i / (r_i + 1), divided by R (all relevant items, not min(R, 10)). With a single
      relevant item this is 1 / (rank + 1) inside the top 10, else 0.
    - mAP@16: the same cut at 16, the ranking metric of DCASE 2025 task 6 (with its multi-relevance judgements).
    - medR: median 1-based rank of the first relevant item, floor(median(0-based)) + 1 as in the CLAP papers.
    Ties are broken by index: among equal similarities the item with the lower index ranks first.
    """
    sim, rel = _check_pair(similarity, relevant)
    keep = rel.any(axis=1)
    if not keep.any():
        raise ValueError("retrieval_metrics: no query has a relevant item")
    hits = ranked_hits(sim[keep], rel[keep])
    first = hits.argmax(axis=1)
    out = {f"R@{k}": float(np.mean(first < k)) for k in RECALL_KS}
    for k in (MAP_K, 16):
        top = hits[:, :k]
        precision_at_hit = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
        ap = (precision_at_hit * top).sum(axis=1) / hits.sum(axis=1)
        out[f"mAP@{k}"] = float(ap.mean())
    out["medR"] = float(np.floor(np.median(first)) + 1)
    return out


def caption_relevance(caption_clip: Any, num_clips: int) -> np.ndarray:
    """[T, N] bool: caption t is relevant to the clip it describes (and only to it)."""
    idx = np.asarray(caption_clip, dtype=np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= num_clips)):
        raise ValueError(f"caption_clip: expected indices in [0, {num_clips}), got {idx.tolist()[:10]}")
    rel = np.zeros((idx.size, num_clips), dtype=bool)
    rel[np.arange(idx.size), idx] = True
    return rel


def text_to_audio(text_emb: Any, audio_emb: Any, caption_clip: Any) -> dict[str, float]:
    """Each caption queries the clips; its own clip is the one relevant item (the classic figure)."""
    text, audio = np.asarray(text_emb, np.float32), np.asarray(audio_emb, np.float32)
    return retrieval_metrics(text @ audio.T, caption_relevance(caption_clip, len(audio)))


def audio_to_text(audio_emb: Any, text_emb: Any, caption_clip: Any) -> dict[str, float]:
    """Each clip queries the captions; all captions of the clip are relevant (clips without captions excluded).

    mAP@10 here is the multi-relevance AP@10 with R = the clip's number of captions.
    """
    text, audio = np.asarray(text_emb, np.float32), np.asarray(audio_emb, np.float32)
    return retrieval_metrics(audio @ text.T, caption_relevance(caption_clip, len(audio)).T)


def _normalise_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def _key_lookup(keys: Sequence[str]) -> dict[str, int]:
    """Clip key -> index, plus every '-'-suffix of a key (its source-id part) when that suffix is unambiguous."""
    exact = {k: i for i, k in enumerate(keys)}
    suffix: dict[str, int] = {}
    for i, key in enumerate(keys):
        for pos, ch in enumerate(key):
            if ch == "-":
                tail = key[pos + 1 :]
                suffix[tail] = -1 if suffix.get(tail, i) != i else i
    return {**{t: i for t, i in suffix.items() if i >= 0}, **exact}


def resolve_clips(names: Iterable[str], keys: Sequence[str]) -> tuple[list[int], list[str]]:
    """Clip indices for relevance entries given as sample keys or original file names; also the unresolved names.

    A file name resolves through the key rule (`make_key`: extension dropped, unsafe characters replaced), e.g.
    "Santa Motor.wav" -> the clip whose key ends in "-Santa_Motor".
    """
    lookup = _key_lookup(keys)
    found: list[int] = []
    missing: list[str] = []
    for name in names:
        idx = lookup.get(name)
        if idx is None:
            idx = lookup.get(make_key("x", name)[2:])
        if idx is None:
            missing.append(name)
        elif idx not in found:
            found.append(idx)
    return found, missing


def judged_relevance(
    captions: Sequence[str], keys: Sequence[str], relevance: Mapping[str, Sequence[str]]
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Query rows and relevance matrix from multi-relevance judgements (query caption -> relevant clips).

    Returns (caption index used as each query [Q], relevant [Q, N], counts). A query is matched to an evaluation
    caption by exact text, else after case folding and whitespace normalisation; queries that match no caption or
    whose clips are all unknown are left out and counted.
    """
    exact: dict[str, int] = {}
    loose: dict[str, int] = {}
    for i, c in enumerate(captions):
        exact.setdefault(c, i)
        loose.setdefault(_normalise_text(c), i)
    rows: list[int] = []
    masks: list[np.ndarray] = []
    counts = {"num_queries": 0, "num_unmatched_queries": 0, "num_unmatched_files": 0}
    for query, names in relevance.items():
        idx = exact.get(query, loose.get(_normalise_text(query)))
        if idx is None:
            counts["num_unmatched_queries"] += 1
            continue
        clips, missing = resolve_clips(names, keys)
        counts["num_unmatched_files"] += len(missing)
        if not clips:
            counts["num_unmatched_queries"] += 1
            continue
        mask = np.zeros(len(keys), dtype=bool)
        mask[clips] = True
        rows.append(idx)
        masks.append(mask)
    counts["num_queries"] = len(rows)
    relevant = np.stack(masks) if masks else np.zeros((0, len(keys)), dtype=bool)
    return np.asarray(rows, dtype=np.int64), relevant, counts


def parse_relevance(obj: Any, source: str = "relevance") -> dict[str, list[str]]:
    """Normalise relevance judgements: {query: [files]} or [{"query", "audio_filenames"|"files"|"keys"}, ...].

    A list given as a string (the `metadata_eval.csv` form, "['a.wav', 'b.wav']") is parsed as a Python literal.
    """

    def names(value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                value = [value]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{source}: {where}: expected a list of file names or keys, got {value!r}")
        return list(value)

    out: dict[str, list[str]] = {}
    if isinstance(obj, Mapping):
        for query, value in obj.items():
            out.setdefault(str(query), []).extend(names(value, f"query {query!r}"))
    elif isinstance(obj, list):
        for i, row in enumerate(obj):
            if not isinstance(row, Mapping) or "query" not in row:
                raise ValueError(f"{source}: entry {i}: expected an object with 'query', got {row!r}")
            field = next((f for f in ("audio_filenames", "files", "keys") if f in row), None)
            if field is None:
                raise ValueError(f"{source}: entry {i}: needs 'audio_filenames', 'files' or 'keys'")
            out.setdefault(str(row["query"]), []).extend(names(row[field], f"entry {i}"))
    else:
        raise ValueError(f"{source}: expected a mapping or a list, got {type(obj).__name__}")
    return out


def read_relevance(path: str | Path) -> dict[str, list[str]] | None:
    """Relevance judgements from a split's manifest.json (None when it has none) or a metadata_eval.csv."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: relevance file not found")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"query", "audio_filenames"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected columns query,audio_filenames, got {reader.fieldnames}")
            return parse_relevance(list(reader), str(path))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object")
    # `relevance_keys` (query -> sample keys, written by the converter) is exact; `relevance` names files.
    field = next((f for f in ("relevance_keys", "relevance") if manifest.get(f) is not None), None)
    if field is None:
        return None
    return parse_relevance(manifest[field], f"{path}: {field}")


def manifest_paths(urls: str | Sequence[str]) -> list[Path]:
    """The manifest.json of each split folder that shard urls (brace patterns, folders or lists) point into."""
    from braceexpand import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    folders: list[Path] = []
    for pattern in patterns:
        for url in braceexpand(pattern):
            if url.startswith("pipe:") or "://" in url:
                continue
            local = Path(url.removeprefix("file:"))
            folder = local if local.is_dir() else local.parent
            if folder not in folders:
                folders.append(folder)
    return [f / "manifest.json" for f in folders if (f / "manifest.json").is_file()]


def load_relevance(urls: str | Sequence[str]) -> dict[str, list[str]] | None:
    """Merged `relevance` judgements of the manifests of the splits in `urls`; None when no manifest has any."""
    merged: dict[str, list[str]] | None = None
    for path in manifest_paths(urls):
        rel = read_relevance(path)
        if rel is not None:
            merged = merged or {}
            for query, names in rel.items():
                merged.setdefault(query, []).extend(names)
    return merged


# ---------------------------------------------------------------------------------------------------------------------
# Frame-level alignment
# ---------------------------------------------------------------------------------------------------------------------


def binary_auroc(scores: Any, targets: Any) -> float:
    """Area under the ROC curve (ties count one half); NaN unless both classes are present."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets).astype(bool)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: Any, targets: Any) -> float:
    """Area under the precision-recall staircase, sum over thresholds of (R_i - R_{i-1}) * P_i; tied scores share one
    threshold. NaN without positives."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets).astype(bool)
    n_pos = int(t.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(t)[last_of_group]
    fp = np.cumsum(~t)[last_of_group]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def frame_alignment_metrics(scores: Sequence[Any], targets: Sequence[Any]) -> dict[str, float]:
    """Mean per-query frame AUROC and AP.

    `scores` and `targets` are lists with one 1-D array per query (a query = one text on one clip; lengths may
    differ between queries): frame scores and 0/1 frame targets. Means run over the queries that have both positive
    and negative frames; NaN when there is none.
    """
    if len(scores) != len(targets):
        raise ValueError(
            f"frame_alignment_metrics: {len(scores)} score arrays but {len(targets)} target arrays"
        )
    aurocs, aps = [], []
    for q, (s, t) in enumerate(zip(scores, targets)):
        s, t = np.asarray(s), np.asarray(t)
        if s.ndim != 1 or s.shape != t.shape:
            raise ValueError(f"query {q}: scores {s.shape} and targets {t.shape} must be 1-D of equal length")
        if t.size and not np.isin(t, (0, 1)).all():
            raise ValueError(f"query {q}: targets must be 0/1")
        if 0 < t.sum() < t.size:
            aurocs.append(binary_auroc(s, t))
            aps.append(average_precision(s, t))
    if not aurocs:
        return {"auroc": math.nan, "ap": math.nan}
    return {"auroc": float(np.mean(aurocs)), "ap": float(np.mean(aps))}


def frame_targets(num_frames: int, frame_rate: float, regions: Iterable[tuple[float, float]]) -> np.ndarray:
    """0/1 per frame: frames f in [floor(onset * rate), ceil(offset * rate)) of any region are 1 (as the region loss)."""
    t = np.zeros(num_frames, dtype=np.int8)
    for onset, offset in regions:
        lo = max(0, math.floor(onset * frame_rate + 1e-6))  # the tolerance absorbs float error at frame edges
        hi = min(num_frames, math.ceil(offset * frame_rate - 1e-6))
        t[lo:hi] = 1
    return t


# ---------------------------------------------------------------------------------------------------------------------
# Sound-event-detection metrics (sed_scores_eval)
# ---------------------------------------------------------------------------------------------------------------------


def merge_events(events: Iterable[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Merge events of the same text that overlap or touch; sorted by (onset, text)."""
    by_text: dict[str, list[tuple[float, float]]] = {}
    for onset, offset, text in events:
        if not offset > onset:
            raise ValueError(f"event {text!r}: needs onset < offset, got {onset}..{offset}")
        by_text.setdefault(text, []).append((float(onset), float(offset)))
    merged: list[tuple[float, float, str]] = []
    for text, spans in by_text.items():
        spans.sort()
        cur_on, cur_off = spans[0]
        for onset, offset in spans[1:]:
            if onset <= cur_off:
                cur_off = max(cur_off, offset)
            else:
                merged.append((cur_on, cur_off, text))
                cur_on, cur_off = onset, offset
        merged.append((cur_on, cur_off, text))
    return sorted(merged, key=lambda e: (e[0], e[2]))


def frame_timestamps(num_frames: int, frame_rate: float, duration: float) -> np.ndarray:
    """Frame boundaries [n + 1] of the frames that start before `duration`; the last one is moved to `duration`."""
    if num_frames <= 0 or frame_rate <= 0 or duration <= 0:
        raise ValueError(
            f"frame_timestamps: need frames, rate and duration > 0, got {num_frames}, {frame_rate}, {duration}"
        )
    n = min(num_frames, math.ceil(duration * frame_rate - 1e-9))
    ts = np.arange(n + 1, dtype=np.float64) / frame_rate
    ts[-1] = duration
    return ts


def _sed_scores_eval():
    # dcase_util (imported through sed_eval by sed_scores_eval) warns about pkg_resources on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import sed_scores_eval
    return sed_scores_eval


def _sed_inputs(
    scores: Mapping[str, Any],
    timestamps: Mapping[str, Any],
    events: Mapping[str, Iterable[tuple[float, float, str]]],
    classes: Sequence[str],
    durations: Mapping[str, float] | None,
) -> tuple[dict, dict, dict]:
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    if len(set(classes)) != len(classes) or not classes:
        raise ValueError("classes: expected a non-empty list of distinct query texts")
    # Texts become neutral column names: sed_scores_eval reserves 'onset'/'offset' and texts can be anything.
    column = {text: f"q{i:05d}" for i, text in enumerate(classes)}
    columns = list(column.values())
    frames, truth, lengths = {}, {}, {}
    seen: set[str] = set()
    for clip, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        ts = np.asarray(timestamps[clip], dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != len(classes):
            raise ValueError(f"clip {clip}: scores must be [frames, {len(classes)}], got {s.shape}")
        if ts.shape != (len(s) + 1,) or not (np.diff(ts) > 0).all():
            raise ValueError(f"clip {clip}: timestamps must be {len(s) + 1} increasing frame boundaries")
        frames[clip] = create_score_dataframe(s, ts, columns)
        gt = []
        for onset, offset, text in merge_events(events.get(clip, ())):
            if text not in column:
                raise ValueError(f"clip {clip}: event text {text!r} is not one of the classes")
            gt.append((onset, offset, column[text]))
            seen.add(text)
        truth[clip] = gt
        lengths[clip] = float(durations[clip]) if durations is not None else float(ts[-1])
    unknown = set(events) - set(scores)
    if unknown:
        raise ValueError(f"events given for clips without scores: {sorted(unknown)[:5]}")
    missing = [c for c in classes if c not in seen]
    if missing:
        raise ValueError(f"classes without any ground-truth event: {missing[:5]} (drop them from classes)")
    return frames, truth, lengths


def psds1(
    scores: Mapping[str, Any],
    timestamps: Mapping[str, Any],
    events: Mapping[str, Iterable[tuple[float, float, str]]],
    classes: Sequence[str],
    durations: Mapping[str, float] | None = None,
    max_efpr: float = PSDS_MAX_EFPR,
    num_jobs: int = 1,
) -> float:
    """PSDS1 (intersection-based, dtc = gtc = 0.7, alpha_ct = 0, alpha_st = 1, up to `max_efpr` FPs per hour).

    scores: clip -> [F, C] frame scores for the C `classes` (query texts); timestamps: clip -> [F + 1] frame
    boundaries in seconds; events: clip -> (onset, offset, text) ground truth, merged per text when they overlap or
    touch; durations default to each clip's last timestamp. Every class needs at least one event. Scores are used
    as they are (no median filtering). `num_jobs` > 1 spreads the clips over that many processes.
    """
    sse = _sed_scores_eval()
    frames, truth, lengths = _sed_inputs(scores, timestamps, events, classes, durations)
    value, *_ = sse.intersection_based.psds(
        frames, truth, lengths, **PSDS1, max_efpr=max_efpr, unit_of_time="hour", num_jobs=num_jobs
    )
    return float(value)


def pauroc(
    scores: Mapping[str, Any],
    timestamps: Mapping[str, Any],
    events: Mapping[str, Iterable[tuple[float, float, str]]],
    classes: Sequence[str],
    durations: Mapping[str, float] | None = None,
    max_fpr: float = PAUROC_MAX_FPR,
    segment_length: float = PAUROC_SEGMENT,
    num_jobs: int = 1,
) -> float:
    """Segment-based partial AUROC (1 s segments, up to FPR 0.1, normalised by max_fpr), mean over classes.

    Inputs as in `psds1`.
    """
    sse = _sed_scores_eval()
    frames, truth, lengths = _sed_inputs(scores, timestamps, events, classes, durations)
    value, _ = sse.segment_based.auroc(
        frames, truth, lengths, segment_length=segment_length, max_fpr=max_fpr, num_jobs=num_jobs
    )
    return float(value["mean"])


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot classification
# ---------------------------------------------------------------------------------------------------------------------


def zero_shot_accuracy(audio_emb: Any, label_text_emb: Any, labels: Any) -> float:
    """Top-1 accuracy of predicting the label whose text embedding is most similar to the clip embedding.

    labels: class indices [N], or a multi-hot [N, C] matrix where a prediction counts when it is one of the clip's
    labels (clips without any label are excluded). Ties go to the lower class index.
    """
    audio = np.asarray(audio_emb, dtype=np.float32)
    label_text = np.asarray(label_text_emb, dtype=np.float32)
    if audio.ndim != 2 or label_text.ndim != 2 or audio.shape[1] != label_text.shape[1]:
        raise ValueError(
            f"zero_shot_accuracy: embeddings must be [N, D] and [C, D], got {audio.shape}, {label_text.shape}"
        )
    lab = np.asarray(labels)
    n, c = len(audio), len(label_text)
    pred = (audio @ label_text.T).argmax(axis=1)
    if lab.ndim == 1:
        if lab.shape != (n,) or (lab.size and (lab.min() < 0 or lab.max() >= c)):
            raise ValueError(f"labels: expected {n} class indices in [0, {c}), got shape {lab.shape}")
        if n == 0:
            raise ValueError("zero_shot_accuracy: no clips")
        return float(np.mean(pred == lab))
    if lab.shape != (n, c):
        raise ValueError(
            f"labels: expected [N]={n} indices or an [N, C]=[{n}, {c}] multi-hot matrix, got {lab.shape}"
        )
    lab = lab.astype(bool)
    keep = lab.any(axis=1)
    if not keep.any():
        raise ValueError("zero_shot_accuracy: no clip has a label")
    return float(np.mean(lab[np.flatnonzero(keep), pred[keep]]))


# ---------------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere)."""
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's object on every rank."""
    _, world = _rank_world()
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------------------------------
# Embedding a split
# ---------------------------------------------------------------------------------------------------------------------


def _empty(dim: int = 0) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def _stack(arrays: Sequence[np.ndarray], dtype=np.float32) -> np.ndarray:
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return _empty()
    return np.concatenate(arrays).astype(dtype, copy=False)


def _sorted_by_key(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(order that sorts keys, new index of each old position); a repeated key is an error."""
    keys_arr = np.asarray(keys, dtype=str)
    order = np.argsort(keys_arr, kind="stable")
    sorted_keys = keys_arr[order]
    dup = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if dup.size:
        raise ValueError(
            f"sample {dup[0]!r} was evaluated more than once (overlapping shards or rank sharding)"
        )
    new_index = np.empty(len(keys), dtype=np.int64)
    new_index[order] = np.arange(len(keys))
    return order, new_index


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.asarray(list(values), dtype=str) if len(values) else np.zeros(0, dtype="<U1")


@dataclass
class RetrievalSet:
    """Clip and caption embeddings of an evaluation split (one rank's share, or all of it merged)."""

    keys: list[str]
    audio: np.ndarray
    """[N, D] clip embeddings."""
    captions: list[str]
    """All weak captions, clip after clip."""
    caption_clip: np.ndarray
    """[T] index of each caption's clip in `keys`."""
    text: np.ndarray
    """[T, D] caption embeddings."""

    @classmethod
    def merge(cls, parts: Sequence[RetrievalSet]) -> RetrievalSet:
        keys = [k for p in parts for k in p.keys]
        if not keys:
            raise ValueError("the evaluation stream yielded no samples")
        offsets = np.cumsum([0] + [len(p.keys) for p in parts])
        clip_of = np.concatenate(
            [p.caption_clip.astype(np.int64) + off for p, off in zip(parts, offsets)]
            + [np.zeros(0, np.int64)]
        )
        order, new_index = _sorted_by_key(keys)
        caption_clip = new_index[clip_of]
        caption_order = np.argsort(caption_clip, kind="stable")
        captions = [c for p in parts for c in p.captions]
        text = _stack([p.text for p in parts])
        return cls(
            keys=[keys[i] for i in order],
            audio=_stack([p.audio for p in parts])[order],
            captions=[captions[i] for i in caption_order],
            caption_clip=caption_clip[caption_order],
            text=text[caption_order] if len(text) else text,
        )

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            keys=_str_array(self.keys),
            audio=self.audio,
            captions=_str_array(self.captions),
            caption_clip=self.caption_clip,
            text=self.text,
        )

    @classmethod
    def load(cls, path: str | Path) -> RetrievalSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                keys=z["keys"].tolist(),
                audio=z["audio"],
                captions=z["captions"].tolist(),
                caption_clip=z["caption_clip"],
                text=z["text"],
            )


@dataclass
class TemporalSet:
    """Frame and region-text embeddings of a strong evaluation split (one rank's share, or all of it merged)."""

    keys: list[str]
    durations: np.ndarray
    """[N] clip durations in seconds."""
    frame_rate: float
    """Frames per second of the audio encoder."""
    audio: np.ndarray
    """[N, D] clip embeddings."""
    frames: np.ndarray
    """[sum of F_i, D] valid frame embeddings, clip after clip (float16)."""
    frame_offsets: np.ndarray
    """[N + 1] clip i owns frames[frame_offsets[i]:frame_offsets[i + 1]]."""
    region_text: list[str]
    region_clip: np.ndarray
    """[R] index of each region's clip in `keys`."""
    onsets: np.ndarray
    offsets: np.ndarray
    texts: list[str]
    """Unique region texts."""
    text: np.ndarray
    """[U, D] embeddings of `texts`."""

    def clip_frames(self, i: int) -> np.ndarray:
        return self.frames[self.frame_offsets[i] : self.frame_offsets[i + 1]].astype(np.float32)

    @classmethod
    def merge(cls, parts: Sequence[TemporalSet]) -> TemporalSet:
        keys = [k for p in parts for k in p.keys]
        if not keys:
            raise ValueError("the evaluation stream yielded no samples")
        rates = {p.frame_rate for p in parts if p.keys}
        if len(rates) != 1:
            raise ValueError(f"frame rates differ between ranks: {sorted(rates)}")
        order, new_index = _sorted_by_key(keys)
        frames_per_clip = [
            p.frames[p.frame_offsets[i] : p.frame_offsets[i + 1]] for p in parts for i in range(len(p.keys))
        ]
        offsets = np.cumsum([0] + [len(p.keys) for p in parts])
        region_clip = np.concatenate(
            [p.region_clip.astype(np.int64) + off for p, off in zip(parts, offsets)] + [np.zeros(0, np.int64)]
        )
        region_clip = new_index[region_clip]
        region_order = np.argsort(region_clip, kind="stable")
        region_text = [t for p in parts for t in p.region_text]
        text_of: dict[str, np.ndarray] = {}
        for p in parts:
            for t, e in zip(p.texts, p.text):
                text_of.setdefault(t, e)
        texts = sorted(text_of)
        ordered_frames = [frames_per_clip[i] for i in order]
        return cls(
            keys=[keys[i] for i in order],
            durations=np.concatenate([p.durations for p in parts]).astype(np.float64)[order],
            frame_rate=rates.pop(),
            audio=_stack([p.audio for p in parts])[order],
            frames=_stack(ordered_frames, np.float16),
            frame_offsets=np.cumsum([0] + [len(f) for f in ordered_frames]),
            region_text=[region_text[i] for i in region_order],
            region_clip=region_clip[region_order],
            onsets=np.concatenate([p.onsets for p in parts]).astype(np.float64)[region_order],
            offsets=np.concatenate([p.offsets for p in parts]).astype(np.float64)[region_order],
            texts=texts,
            text=np.stack([text_of[t] for t in texts]).astype(np.float32) if texts else _empty(),
        )

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            keys=_str_array(self.keys),
            durations=self.durations,
            frame_rate=np.float64(self.frame_rate),
            audio=self.audio,
            frames=self.frames,
            frame_offsets=self.frame_offsets,
            region_text=_str_array(self.region_text),
            region_clip=self.region_clip,
            onsets=self.onsets,
            offsets=self.offsets,
            texts=_str_array(self.texts),
            text=self.text,
        )

    @classmethod
    def load(cls, path: str | Path) -> TemporalSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                keys=z["keys"].tolist(),
                durations=z["durations"],
                frame_rate=float(z["frame_rate"]),
                audio=z["audio"],
                frames=z["frames"],
                frame_offsets=z["frame_offsets"],
                region_text=z["region_text"].tolist(),
                region_clip=z["region_clip"],
                onsets=z["onsets"],
                offsets=z["offsets"],
                texts=z["texts"].tolist(),
                text=z["text"],
            )


def _model_device(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode without autograd inside the block; the previous train/eval mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def lockstep_batches(batches: Iterable[Any], device: torch.device) -> Iterable[Any]:
    """This rank's batches, then None until every rank has run out: all ranks take the same number of steps.

    A rank whose batches fail (e.g. a corrupt shard) goes on with None so that the others do not wait for it, and
    raises the error once every rank is done.
    """
    it = iter(batches)
    error: Exception | None = None
    while True:
        batch = None
        if error is None:
            try:
                batch = next(it, None)
            except Exception as e:
                error = e
        more = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        if _rank_world()[1] > 1:
            torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MAX)
        if not more.item():
            break
        yield batch
    if error is not None:
        raise error


def _filler_batch(model) -> dict[str, torch.Tensor]:
    """One second of silence: what a rank without batches forwards in lockstep."""
    n = int(model.sample_rate)
    return {"audio": torch.zeros(1, n), "audio_mask": torch.ones(1, n, dtype=torch.bool)}


def forward_batch(
    model,
    batch: Mapping[str, Any] | None,
    texts: Sequence[str] | None,
    device: torch.device,
    lockstep: bool = False,
):
    """One forward of the joint model on a batch's audio and on `texts`; a side that is None or empty is left out.

    With `lockstep`, both towers always run (a missing side gets a filler input; callers ignore that output).
    """
    if lockstep:
        batch = batch if batch is not None else _filler_batch(model)
        texts = texts or ["."]
    audio = mask = input_ids = attention_mask = None
    if batch is not None:
        audio = torch.as_tensor(batch["audio"]).to(device=device, dtype=torch.float32)
        mask = torch.as_tensor(batch["audio_mask"]).to(device=device, dtype=torch.bool)
    if texts:
        tokens = model.tokenize(list(texts))
        input_ids, attention_mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    return model(audio, mask, input_ids, attention_mask)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def embed_retrieval(
    model, batches: Iterable[Mapping[str, Any]], device=None, lockstep: bool = False
) -> RetrievalSet:
    """Clip and caption embeddings of this rank's batches (eval mode, no gradients)."""
    device = _model_device(model, device)
    if lockstep:
        batches = lockstep_batches(batches, device)
    keys: list[str] = []
    audio: list[np.ndarray] = []
    captions: list[str] = []
    caption_clip: list[int] = []
    text: list[np.ndarray] = []
    with eval_mode(model):
        for batch in batches:
            if batch is None:
                forward_batch(model, None, None, device, lockstep=True)
                continue
            texts = [c for caps in batch["captions"] for c in caps]
            out = forward_batch(model, batch, texts, device, lockstep)
            base = len(keys)
            keys.extend(batch["keys"])
            audio.append(_np(out.audio_clip))
            for i, caps in enumerate(batch["captions"]):
                captions.extend(caps)
                caption_clip.extend([base + i] * len(caps))
            if texts:
                text.append(_np(out.text))
    return RetrievalSet(
        keys=keys,
        audio=_stack(audio),
        captions=captions,
        caption_clip=np.asarray(caption_clip, dtype=np.int64),
        text=_stack(text),
    )


def embed_temporal(
    model,
    batches: Iterable[Mapping[str, Any]],
    device=None,
    text_template: str = "{}",
    lockstep: bool = False,
) -> TemporalSet:
    """Frame, clip and region-text embeddings of this rank's strong batches (eval mode, no gradients).

    Region texts are embedded as `text_template.format(text)` (e.g. "the sound of {}" for label names).
    """
    device = _model_device(model, device)
    if lockstep:
        batches = lockstep_batches(batches, device)
    keys: list[str] = []
    durations: list[float] = []
    audio: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    region_text: list[str] = []
    region_clip: list[int] = []
    onsets: list[float] = []
    offsets: list[float] = []
    text_of: dict[str, np.ndarray] = {}
    rate: float | None = None
    with eval_mode(model):
        for batch in batches:
            if batch is None:
                forward_batch(model, None, None, device, lockstep=True)
                continue
            batch_texts = list(batch.get("region_text", []))
            unique = list(dict.fromkeys(batch_texts))
            out = forward_batch(model, batch, [text_template.format(t) for t in unique], device, lockstep)
            batch_rate = float(out.frame_rate)
            if rate is not None and not math.isclose(batch_rate, rate):
                raise ValueError(f"model frame rate changed between batches: {rate} vs {batch_rate}")
            rate = batch_rate
            base = len(keys)
            keys.extend(batch["keys"])
            durations.extend(float(d) for d in _np(batch["durations"]))
            audio.append(_np(out.audio_clip))
            clip_frames, frame_mask = _np(out.audio_frames), _np(out.frame_mask).astype(bool)
            frames.extend(clip_frames[i][frame_mask[i]].astype(np.float16) for i in range(len(batch["keys"])))
            region_text.extend(batch_texts)
            region_clip.extend(base + int(i) for i in _np(batch.get("region_clip", [])))
            # batches carry float32 seconds (1.8 -> 1.79999995): back to the microseconds the shards store
            onsets.extend(round(float(x), 6) for x in _np(batch.get("onsets", [])))
            offsets.extend(round(float(x), 6) for x in _np(batch.get("offsets", [])))
            if unique:
                for t, e in zip(unique, _np(out.text)):
                    text_of.setdefault(t, e)
    texts = sorted(text_of)
    return TemporalSet(
        keys=keys,
        durations=np.asarray(durations, dtype=np.float64),
        frame_rate=rate or 0.0,
        audio=_stack(audio),
        frames=_stack(frames, np.float16),
        frame_offsets=np.cumsum([0] + [len(f) for f in frames]),
        region_text=region_text,
        region_clip=np.asarray(region_clip, dtype=np.int64),
        onsets=np.asarray(onsets, dtype=np.float64),
        offsets=np.asarray(offsets, dtype=np.float64),
        texts=texts,
        text=np.stack([text_of[t] for t in texts]).astype(np.float32) if texts else _empty(),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------------


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def retrieval_report(
    data: RetrievalSet, relevance: Mapping[str, Sequence[str]] | None = None
) -> dict[str, float]:
    """t2a/* and a2t/* (own captions are relevant), plus t2a_multi/* from multi-relevance judgements when given."""
    if not data.captions:
        raise ValueError("retrieval evaluation needs captions, but the split has none (a strong-only split?)")
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


def _failure(error: Exception | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _run_distributed(embed, merge, load, make_report, cache_path: str | Path | None) -> dict[str, float]:
    """Embed on every rank, merge and report on rank 0, broadcast; an error on any rank is raised on every rank.

    With `cache_path`, rank 0 loads the merged set from there when the file exists (then no rank embeds) and saves
    it there after embedding otherwise.
    """
    rank, _ = _rank_world()
    cached = broadcast_from_main(cache_path is not None and rank == 0 and Path(cache_path).is_file())
    error: Exception | None = None
    parts: list[Any] | None = None
    if not cached:
        part = None
        try:
            part = embed()
        except Exception as e:  # reported to every rank, so that no rank waits for one that failed
            error = e
        statuses = gather_to_main(_failure(error))
        message = broadcast_from_main(
            "; ".join(f"rank {r}: {m}" for r, m in enumerate(statuses) if m) if rank == 0 else None
        )
        if message:
            raise error if error is not None else RuntimeError(f"evaluation failed: {message}")
        parts = gather_to_main(part)
    report = None
    if rank == 0:
        try:
            if cached:
                data = load(cache_path)
            else:
                data = merge(parts)
                if cache_path is not None:
                    path = Path(cache_path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.name + ".tmp.npz")
                    data.save(tmp)
                    tmp.replace(path)
            report = make_report(data)
        except Exception as e:
            error = e
    report, message = broadcast_from_main((report, _failure(error)))
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
) -> dict[str, float]:
    """Text-to-audio and audio-to-text retrieval of a split; the same report on every rank.

    `relevance` (query caption -> relevant clip keys or file names) adds the multi-relevance t2a_multi/* figures.
    With `cache_path`, the gathered embeddings are saved there (.npz) and reused by later calls instead of the model.
    `lockstep`: every rank runs the same number of forwards (needed under DeepSpeed ZeRO-3).
    """
    return _run_distributed(
        lambda: embed_retrieval(model, batches, device, lockstep),
        RetrievalSet.merge,
        RetrievalSet.load,
        lambda data: retrieval_report(data, relevance),
        cache_path,
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
) -> dict[str, float]:
    """Temporal alignment on a strong split (see `temporal_report`); the same report on every rank.

    `num_jobs` processes compute PSDS1/pAUROC on rank 0 (they dominate the cost on large splits).
    `lockstep`: every rank runs the same number of forwards (needed under DeepSpeed ZeRO-3).
    """
    return _run_distributed(
        lambda: embed_temporal(model, batches, device, text_template, lockstep),
        TemporalSet.merge,
        TemporalSet.load,
        lambda data: temporal_report(data, max_sed_queries, num_jobs=num_jobs),
        cache_path,
    )
