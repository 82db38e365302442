"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shards.schema import make_key
from trainer.metrics import (
    audio_to_text,
    average_precision,
    binary_auroc,
    classification_metrics,
    frame_alignment_metrics,
    frame_targets,
    frame_timestamps,
    judged_relevance,
    merge_events,
    pauroc,
    psds1,
    resolve_clips,
    retrieval_metrics,
    text_to_audio,
    zero_shot_accuracy,
)

# ---------------------------------------------------------------------------------------------------------------------
# retrieval_metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_single_relevant_item_per_query():
    sim = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],  # relevant 0 -> rank 0
            [0.2, 0.8, 0.6, 0.7],  # relevant 2 -> order 1, 3, 2, 0 -> rank 2
            [0.4, 0.3, 0.2, 0.1],  # relevant 3 -> rank 3
        ]
    )
    rel = np.zeros_like(sim, dtype=bool)
    rel[0, 0] = rel[1, 2] = rel[2, 3] = True
    m = retrieval_metrics(sim, rel)
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["R@5"] == m["R@10"] == 1.0
    assert m["mAP@10"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert m["medR"] == 3.0  # 0-based first ranks 0, 2, 3 -> median 2 -> rank 3
    assert set(m) == {"R@1", "R@5", "R@10", "mAP@10", "mAP@16", "medR"}


def test_single_relevant_outside_top_10_scores_zero():
    sim = -np.arange(12.0)[None]  # item i at rank i
    rel = np.zeros((1, 12), dtype=bool)
    rel[0, 10] = True
    m = retrieval_metrics(sim, rel)
    assert m == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "mAP@10": 0.0, "mAP@16": 1 / 11, "medR": 11.0}


def test_multi_relevance_divides_by_all_relevant_items():
    sim = -np.arange(15.0)[None]  # item i at rank i
    rel = np.zeros((1, 15), dtype=bool)
    rel[0, [1, 4, 12]] = True  # ranks 1 and 4 count (1/2 + 2/5), rank 12 is outside the top 10; R = 3
    assert retrieval_metrics(sim, rel)["mAP@10"] == pytest.approx((1 / 2 + 2 / 5) / 3)
    assert retrieval_metrics(sim, rel)["mAP@16"] == pytest.approx((1 / 2 + 2 / 5 + 3 / 13) / 3)
    rel = np.zeros((1, 15), dtype=bool)
    rel[0, :12] = True  # ranks 0..9 each add i/i = 1; divided by R = 12, not min(R, 10) = 10
    assert retrieval_metrics(sim, rel)["mAP@10"] == pytest.approx(10 / 12)


def test_ties_rank_lower_index_first():
    sim = np.full((2, 3), 0.5)
    rel = np.array([[False, False, True], [True, False, False]])
    m = retrieval_metrics(sim, rel)
    assert m["mAP@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["R@1"] == 0.5


def test_queries_without_relevant_items_are_excluded():
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]])
    rel = np.array([[True, False], [True, False], [False, False]])
    assert retrieval_metrics(sim, rel) == retrieval_metrics(sim[:2], rel[:2])
    assert retrieval_metrics(sim[:2], rel[:2])["medR"] == 1.0  # floor(median(0, 1)) + 1


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="relevant: shape"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0]]), np.array([[True, False]]))
    with pytest.raises(ValueError, match="no query has a relevant item"):
        retrieval_metrics(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))


def test_text_to_audio_and_audio_to_text_from_captions():
    audio = np.eye(3)  # clip embeddings
    text = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0.6, 0.8], [0, 0, 1.0]])
    caption_clip = np.array([0, 1, 2, 2])
    t2a = text_to_audio(text, audio, caption_clip)
    # caption 2 ranks clip 2 (0.8) over clip 1 (0.6): every caption finds its clip first
    assert t2a["R@1"] == 1.0 and t2a["mAP@10"] == 1.0
    a2t = audio_to_text(audio, text, caption_clip)
    # clip 1 ranks caption 1 (1.0) then caption 2 (0.6): its only caption is first. clip 2: captions 3 (1.0), 2 (0.8)
    assert a2t["R@1"] == 1.0 and a2t["mAP@10"] == 1.0
    text[2] = [0, 0.8, 0.6]  # now caption 2 prefers clip 1
    t2a = text_to_audio(text, audio, caption_clip)
    assert t2a["R@1"] == pytest.approx(3 / 4) and t2a["mAP@10"] == pytest.approx((3 + 1 / 2) / 4)
    a2t = audio_to_text(audio, text, caption_clip)
    # clip 1: captions 1 (1.0), 2 (0.8, not its own): AP 1. clip 2: captions 3 (1.0, own), 2 (0.6, own): AP 1
    assert a2t["mAP@10"] == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# relevance judgements
# ---------------------------------------------------------------------------------------------------------------------


def test_resolve_clips_by_key_or_file_name():
    keys = [make_key("clotho", "Santa Motor.wav"), make_key("clotho", "rain, café.wav"), "clotho-x"]
    found, missing = resolve_clips(["Santa Motor.wav", "clotho-x", "rain, café.wav", "nope.wav"], keys)
    assert found == [0, 2, 1] and missing == ["nope.wav"]


def test_judged_relevance_matches_queries_and_counts_misses():
    captions = ["A dog barks.", "Rain  falls on a roof", "wind"]
    keys = ["toy-a", "toy-b", "toy-c"]
    relevance = {
        "A dog barks.": ["a.wav", "c.wav"],
        "rain falls on a ROOF": ["b.wav", "gone.wav"],  # matched after case/space normalisation
        "not a caption": ["a.wav"],
        "wind": ["gone.wav"],  # no known clip: left out
    }
    rows, rel, counts = judged_relevance(captions, keys, relevance)
    assert rows.tolist() == [0, 1]
    assert rel.tolist() == [[True, False, True], [False, True, False]]
    assert counts == {"num_queries": 2, "num_unmatched_queries": 2, "num_unmatched_files": 2}


# ---------------------------------------------------------------------------------------------------------------------
# frame alignment
# ---------------------------------------------------------------------------------------------------------------------


def test_frame_auroc_and_ap_by_hand():
    s, t = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both) -> 3/4
    assert binary_auroc(s, t) == pytest.approx(0.75)
    # ranked 0.8 (+), 0.4 (-), 0.35 (+): precision at hits 1 and 2/3 -> (1 + 2/3) / 2
    assert average_precision(s, t) == pytest.approx(5 / 6)
    # ties share a threshold: one pos and one neg at 0.5 -> AUROC 1/2, AP 1/2
    assert binary_auroc([0.5, 0.5], [1, 0]) == 0.5 and average_precision([0.5, 0.5], [1, 0]) == 0.5


def test_frame_alignment_means_over_queries_with_both_classes():
    scores = [np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.9, 0.1, 0.2]), np.array([0.3, 0.2])]
    targets = [
        np.array([0, 0, 1, 1]),
        np.array([1, 0, 0]),
        np.array([1, 1]),
    ]  # the last has no negative frame
    m = frame_alignment_metrics(scores, targets)
    assert m["auroc"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["ap"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert math.isnan(frame_alignment_metrics([np.ones(3)], [np.ones(3)])["auroc"])
    with pytest.raises(ValueError, match="query 0"):
        frame_alignment_metrics([np.ones(3)], [np.ones(4)])


def test_frame_targets_and_timestamps():
    # 10 Hz: [0.25, 0.6) covers frames floor(2.5)=2 .. ceil(6)-1=5
    assert frame_targets(8, 10.0, [(0.25, 0.6)]).tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    ts = frame_timestamps(
        40, 10.0, 3.05
    )  # frames starting before 3.05 s: 0..30; the last ends at the duration
    assert len(ts) == 32 and ts[-2] == pytest.approx(3.0) and ts[-1] == 3.05


def test_merge_events_joins_touching_and_overlapping_spans_per_text():
    events = [(1.0, 2.0, "dog"), (0.0, 1.0, "dog"), (3.0, 4.0, "dog"), (0.5, 3.5, "car"), (3.2, 3.6, "car")]
    assert merge_events(events) == [(0.0, 2.0, "dog"), (0.5, 3.6, "car"), (3.0, 4.0, "dog")]


# ---------------------------------------------------------------------------------------------------------------------
# PSDS1 / pAUROC (sed_scores_eval)
# ---------------------------------------------------------------------------------------------------------------------


def _sed_case(seed: int = 0):
    """12 clips of 8 s at 10 Hz, 4 query texts; each clip has one or two events; noisy scores."""
    rng = np.random.default_rng(seed)
    classes = ["a dog barks", "a car passes", "rain", "a bell rings"]
    truth, events, times = {}, {}, {}
    for k in range(12):
        clip = f"clip{k}"
        gt = np.zeros((80, 4))
        events[clip] = []
        for c in {k % 4, (k * 3 + 1) % 4}:
            on = int(rng.integers(0, 50))
            off = on + int(rng.integers(10, 30))
            gt[on:off, c] = 1.0
            events[clip].append((on / 10, off / 10, classes[c]))
        truth[clip] = gt
        times[clip] = np.arange(81) / 10
    return classes, truth, events, times


def test_psds1_and_pauroc_perfect_vs_shuffled_scores():
    classes, truth, events, times = _sed_case()
    rng = np.random.default_rng(1)
    perfect = {
        k: g + 0.01 * rng.random(g.shape) for k, g in truth.items()
    }  # events score highest, noise below
    assert psds1(perfect, times, events, classes) == pytest.approx(1.0)
    assert pauroc(perfect, times, events, classes) == pytest.approx(1.0)
    keys = list(perfect)
    shuffled = {k: perfect[keys[(i + 5) % len(keys)]] for i, k in enumerate(keys)}  # another clip's scores
    low_psds, low_pauroc = psds1(shuffled, times, events, classes), pauroc(shuffled, times, events, classes)
    assert low_psds < 0.5 and low_pauroc < 0.7
    # the same figures when sed_scores_eval spreads the clips over processes
    assert psds1(shuffled, times, events, classes, num_jobs=2) == pytest.approx(low_psds)
    assert pauroc(shuffled, times, events, classes, num_jobs=2) == pytest.approx(low_pauroc)
    noise = {k: rng.random(g.shape) for k, g in truth.items()}
    assert psds1(noise, times, events, classes) < 0.3


def test_psds_merges_adjacent_events_of_one_text():
    classes, truth, events, times = _sed_case()
    split = {}
    for clip, evs in events.items():  # cut every event in two touching halves
        split[clip] = [e for on, off, t in evs for e in ((on, (on + off) / 2, t), ((on + off) / 2, off, t))]
    assert psds1(truth, times, split, classes) == pytest.approx(psds1(truth, times, events, classes))


def test_sed_input_errors_name_the_problem():
    classes, truth, events, times = _sed_case()
    with pytest.raises(ValueError, match="not one of the classes"):
        psds1(truth, times, {"clip0": [(0.0, 1.0, "unknown")]}, classes)
    with pytest.raises(ValueError, match=r"clip0: scores must be \[frames, 4\]"):
        pauroc({**truth, "clip0": truth["clip0"][:, :2]}, times, events, classes)
    with_silence = {k: np.c_[v, v[:, :1]] for k, v in truth.items()}
    with pytest.raises(ValueError, match="without any ground-truth event"):
        psds1(with_silence, times, events, [*classes, "silence"])


# ---------------------------------------------------------------------------------------------------------------------
# zero-shot
# ---------------------------------------------------------------------------------------------------------------------


def test_zero_shot_accuracy_by_hand():
    audio = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.6, 0.8]])
    labels_text = np.array([[1.0, 0.0], [0.0, 1.0]])
    # predictions: 0, 1, 0 (tie -> lower index), 1
    assert zero_shot_accuracy(audio, labels_text, [0, 1, 1, 1]) == pytest.approx(3 / 4)
    multi = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])  # last clip has no label: excluded
    assert zero_shot_accuracy(audio, labels_text, multi) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="class indices"):
        zero_shot_accuracy(audio, labels_text, [0, 1, 2, 0])


def test_classification_metrics_by_hand():
    scores = [[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.3]]
    m = classification_metrics(scores, np.array([0, 0, 1, 1]))  # class 2 has no clips
    assert m["accuracy"] == 0.5 and m["predicted"].tolist() == [0, 1, 1, 0]
    assert m["confusion"].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    np.testing.assert_allclose(m["recall"][:2], [0.5, 0.5])
    assert math.isnan(m["recall"][2])
    # class 0 column 0.9+ 0.5- 0.3- 0.2+: P 1 at R .5, P 2/4 at R 1 -> .75; class 1: 0.8- 0.6+ 0.4+ 0.1- -> 7/12
    np.testing.assert_allclose(m["ap"][:2], [0.75, 7 / 12])
    assert math.isnan(m["ap"][2])
    assert m["balanced_accuracy"] == 0.5 and m["mAP"] == pytest.approx((0.75 + 7 / 12) / 2)
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\)"):
        classification_metrics(scores, np.array([0, 0, 1, 3]))
    with pytest.raises(ValueError, match=r"expected scores \[N, C\] and labels \[N\]"):
        classification_metrics(scores, np.array([0, 1]))
