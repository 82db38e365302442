"""Evaluation metrics as pure functions on numpy arrays (no I/O, no models, no config).

- `retrieval_metrics`: R@1/5/10, mAP@10 (as the DCASE 2025 task 6 code computes it), mAP@16 and medR; with
  `text_to_audio` / `audio_to_text` for captions and their clips, and `judged_relevance` for multi-relevance
  judgements (query caption -> relevant clips).
- `frame_alignment_metrics`: per-query frame AUROC and AP, averaged over queries.
- `psds1` and `pauroc`: threshold-independent detection metrics from frame scores, computed by `sed_scores_eval`.
- `zero_shot_accuracy`: top-1 accuracy of labelling clips with their nearest label text.

Every metric value is a fraction in [0, 1] except `medR` (a 1-based rank) and `num_*` (counts).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
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


def classification_metrics(scores: Any, labels: Any) -> dict[str, Any]:
    """Single-label classification from class scores [N, C] (e.g. clip-to-label-text similarities) and the true class
    index of each clip [N].

    Returns `accuracy` (top-1; ties go to the lower class index), `recall` [C] (per class; NaN for a class without
    clips), `ap` [C] (per class, one-vs-rest average precision of its score column; NaN without clips),
    `balanced_accuracy` and `mAP` (their means over the classes that have clips), `confusion` [C, C] (counts; row =
    true class, column = predicted) and `predicted` [N].
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or y.shape != (len(s),):
        raise ValueError(
            f"classification_metrics: expected scores [N, C] and labels [N], got {s.shape}, {y.shape}"
        )
    n, c = s.shape
    if n == 0 or c == 0:
        raise ValueError("classification_metrics: no clips or no classes")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels: expected class indices in [0, {c}), got {y[:5]!r}...")
    if not np.isfinite(s).all():
        raise ValueError("scores: contains NaN or Inf")
    predicted = s.argmax(axis=1)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(confusion) / support, np.nan)
    ap = np.array([average_precision(s[:, k], y == k) for k in range(c)])
    present = support > 0
    return {
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": float(np.mean(recall[present])),
        "mAP": float(np.mean(ap[present])),
        "recall": recall,
        "ap": ap,
        "confusion": confusion,
        "predicted": predicted,
    }
