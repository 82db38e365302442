"""Evaluation metrics against hand-computed values, and the embedding drivers on real shards (1 and 2 processes)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from shards.audio import encode_flac
from shards.reader import iter_eval_batches
from shards.schema import Region, Sample, make_key
from shards.writer import ShardWriter
from trainer.evaluate import (
    RetrievalSet,
    TemporalSet,
    audio_to_text,
    average_precision,
    binary_auroc,
    embed_temporal,
    evaluate_retrieval,
    evaluate_temporal,
    frame_alignment_metrics,
    frame_targets,
    frame_timestamps,
    judged_relevance,
    load_relevance,
    merge_events,
    parse_relevance,
    pauroc,
    psds1,
    read_relevance,
    resolve_clips,
    retrieval_metrics,
    temporal_report,
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


def test_parse_relevance_forms(tmp_path):
    assert parse_relevance({"q": "['a.wav', 'b.wav']"}) == {"q": ["a.wav", "b.wav"]}
    assert parse_relevance([{"query": "q", "audio_filenames": ["a.wav"]}, {"query": "q", "keys": "b"}]) == {
        "q": ["a.wav", "b"]
    }
    with pytest.raises(ValueError, match="entry 0"):
        parse_relevance([{"query": "q"}])
    csv_path = tmp_path / "metadata_eval.csv"
    csv_path.write_text("query,audio_filenames\nA dog barks.,\"['a.wav', 'b, c.wav']\"\n", encoding="utf-8")
    assert read_relevance(csv_path) == {"A dog barks.": ["a.wav", "b, c.wav"]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"relevance": {"q": ["a.wav"]}, "relevance_keys": {"q": ["toy-a"]}}))
    assert read_relevance(manifest) == {"q": ["toy-a"]}
    manifest.write_text(json.dumps({"dataset": "toy"}))
    assert read_relevance(manifest) is None


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


# ---------------------------------------------------------------------------------------------------------------------
# drivers: a stand-in model with the AudioTextModel call interface, real shards, real reader
# ---------------------------------------------------------------------------------------------------------------------

SR = 8000
HOP = 800  # 10 frames per second
FREQS = [500.0, 700.0, 900.0, 1100.0, 1300.0, 1500.0]  # whole cycles per frame: orthogonal over a frame


class ToneModel(torch.nn.Module):
    """Stand-in with AudioTextModel's interface: a frame embeds its energy at each of FREQS (normalised), a text
    "... tone k ..." embeds as the k-th unit vector and any other text as the uniform vector. It aligns perfectly,
    so the metrics of the drivers are known in advance."""

    frame_rate = SR / HOP

    def __init__(self):
        super().__init__()
        t = torch.arange(HOP) / SR
        f = torch.tensor(FREQS)[None]
        self.register_buffer(
            "basis",
            torch.cat([torch.sin(2 * math.pi * f * t[:, None]), torch.cos(2 * math.pi * f * t[:, None])], 1),
        )
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def tokenize(self, texts):
        ids = [int(m.group(1)) if (m := re.search(r"tone (\d)", t)) else len(FREQS) for t in texts]
        return {
            "input_ids": torch.tensor(ids)[:, None],
            "attention_mask": torch.ones(len(ids), 1, dtype=torch.long),
        }

    def forward(self, audio=None, audio_mask=None, input_ids=None, attention_mask=None):
        out = SimpleNamespace(logit_scale=self.log_scale.exp(), frame_rate=self.frame_rate)
        k = len(FREQS)
        if audio is not None:
            b, n = audio.shape
            f = n // HOP
            proj = audio[:, : f * HOP].reshape(b, f, HOP) @ self.basis
            energy = (proj[..., :k] ** 2 + proj[..., k:] ** 2).sqrt() + 1e-3
            out.audio_frames = torch.nn.functional.normalize(energy, dim=-1)
            out.frame_mask = audio_mask[:, : f * HOP].reshape(b, f, HOP).all(-1)
            clip = (out.audio_frames * out.frame_mask[..., None]).sum(1)
            out.audio_clip = torch.nn.functional.normalize(clip, dim=-1)
        if input_ids is not None:
            text = torch.nn.functional.one_hot(input_ids[:, 0], k + 1)[:, :k].float()
            text[input_ids[:, 0] == k] = 1.0
            out.text = torch.nn.functional.normalize(text, dim=-1)
        return out


def _tones(seconds: float, spans: list[tuple[int, float, float]]) -> np.ndarray:
    x = np.zeros(round(seconds * SR), np.float32)
    t = np.arange(len(x)) / SR
    for k, on, off in spans:
        inside = (t >= on) & (t < off)
        x[inside] += 0.5 * np.sin(2 * np.pi * FREQS[k] * t[inside])
    return x


def _write_split(folder: Path, split: str, clips, relevance=None, per_shard: int = 3) -> Path:
    """clips: (source_id, seconds, tone spans, captions, regions); real FLAC in real shards + manifest."""
    out = folder / "toy" / split
    extra = {"relevance": relevance} if relevance else None
    with ShardWriter(out, "toy", split, SR, max_samples=per_shard, extra_manifest=extra) as w:
        for source_id, seconds, spans, captions, regions in clips:
            sample = Sample(
                key=make_key("toy", source_id),
                dataset="toy",
                split=split,
                source_id=source_id,
                duration=seconds,
                sample_rate=SR,
                captions=list(captions),
                strong=[Region(t, on, off) for t, on, off in regions],
            )
            w.write(sample, encode_flac(_tones(seconds, spans), SR))
    return out


def weak_split(folder: Path) -> Path:
    clips = [
        (f"clip {k}.wav", 2.0, [(k, 0.0, 2.0)], [f"tone {k}", f"a steady tone {k}"], []) for k in range(6)
    ]
    # clip 6: tone 1 for the first half, tone 2 for the second; its captions name no tone (uniform embedding)
    clips.append(
        ("clip 6.wav", 2.0, [(1, 0.0, 1.0), (2, 1.0, 2.0)], ["two tones", "one tone then another"], [])
    )
    relevance = {
        "tone 1": ["clip 6.wav"],
        "tone 2": ["clip 2.wav", "missing.wav"],
        "no such caption": ["clip 0.wav"],
    }
    return _write_split(folder, "evaluation", clips, relevance)


def strong_split(folder: Path) -> Path:
    clips = []
    for j in range(6):
        a, b = j, (j + 2) % 6
        regions = [
            (f"tone {a}", 0.5, 1.0),
            (f"tone {a}", 1.0, 1.5),
            (f"tone {b}", 1.8, 2.6),
        ]  # touching: merged
        clips.append((f"strong {j}.wav", 3.0, [(a, 0.5, 1.5), (b, 1.8, 2.6)], [], regions))
    return _write_split(folder, "test", clips)


# t2a: every caption finds its clip first. a2t: clips 0-5 rank their two captions first; clip 6 (0.71 * tone 1 +
# 0.71 * tone 2) ranks the four captions of clips 1 and 2 (0.71) above its own two (0.58): ranks 4, 5.
CLIP6_AP = (1 / 5 + 2 / 6) / 2
EXPECTED_RETRIEVAL = {
    "num_clips": 7,
    "num_captions": 14,
    "t2a/R@1": 1.0,
    "t2a/R@5": 1.0,
    "t2a/R@10": 1.0,
    "t2a/mAP@10": 1.0,
    "t2a/mAP@16": 1.0,
    "t2a/medR": 1.0,
    "a2t/R@1": 6 / 7,
    "a2t/R@5": 1.0,
    "a2t/R@10": 1.0,
    "a2t/mAP@10": (6 + CLIP6_AP) / 7,
    "a2t/mAP@16": (6 + CLIP6_AP) / 7,  # every caption is within the top 16 of 14
    "a2t/medR": 1.0,
    # "tone 1" -> clip 6 at rank 1 (AP 1/2); "tone 2" -> clip 2 at rank 0 (AP 1); one query and one file unknown
    "t2a_multi/num_queries": 2,
    "t2a_multi/num_unmatched_queries": 1,
    "t2a_multi/num_unmatched_files": 1,
    "t2a_multi/R@1": 0.5,
    "t2a_multi/R@5": 1.0,
    "t2a_multi/R@10": 1.0,
    "t2a_multi/mAP@10": 0.75,
    "t2a_multi/mAP@16": 0.75,
    "t2a_multi/medR": 1.0,
}


def test_evaluate_retrieval_on_real_shards(tmp_path):
    split = weak_split(tmp_path)
    relevance = load_relevance(str(split))
    assert relevance == {
        "tone 1": ["clip 6.wav"],
        "tone 2": ["clip 2.wav", "missing.wav"],
        "no such caption": ["clip 0.wav"],
    }
    model = ToneModel().train()
    batches = iter_eval_batches(str(split), sample_rate=SR, batch_size=3)
    report = evaluate_retrieval(model, batches, relevance=relevance, cache_path=tmp_path / "cache" / "r.npz")
    assert report == pytest.approx(EXPECTED_RETRIEVAL)
    assert model.training  # eval mode only inside the evaluation
    cached = RetrievalSet.load(tmp_path / "cache" / "r.npz")
    assert cached.keys == sorted(cached.keys) and len(cached.captions) == 14
    # a second call reads the cache and does not touch the model or the batches
    again = evaluate_retrieval(None, iter(()), relevance=relevance, cache_path=tmp_path / "cache" / "r.npz")
    assert again == report


def test_evaluate_temporal_on_real_shards(tmp_path):
    split = strong_split(tmp_path)
    report = evaluate_temporal(ToneModel(), iter_eval_batches(str(split), sample_rate=SR, batch_size=4))
    assert report["num_clips"] == 6 and report["num_queries"] == 12 and report["num_sed_queries"] == 6
    for key in ("frame_auroc", "frame_ap", "psds1", "pauroc", "zs_acc"):
        assert report[key] == pytest.approx(1.0), key


def test_temporal_report_drops_when_frames_belong_to_other_clips(tmp_path):
    split = strong_split(tmp_path)
    data = embed_temporal(ToneModel(), iter_eval_batches(str(split), sample_rate=SR, batch_size=4))
    data = TemporalSet.merge([data])
    good = temporal_report(data)
    n = len(data.keys)
    per_clip = [data.clip_frames((i + 1) % n) for i in range(n)]  # every clip gets its neighbour's frames
    data.frames = np.concatenate(per_clip).astype(np.float16)
    data.frame_offsets = np.cumsum([0] + [len(f) for f in per_clip])
    bad = temporal_report(data)
    for key in ("frame_auroc", "frame_ap", "psds1", "pauroc"):
        assert bad[key] < good[key] - 0.3, key


class CountingToneModel(ToneModel):
    """ToneModel that records which towers each forward ran (as ZeRO-3 would need every rank to run them)."""

    sample_rate = SR

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, audio=None, audio_mask=None, input_ids=None, attention_mask=None):
        self.calls.append((audio is not None, input_ids is not None))
        return super().forward(audio, audio_mask, input_ids, attention_mask)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, weak: str, strong: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = ToneModel()
        relevance = load_relevance(weak)
        batches = iter_eval_batches(weak, sample_rate=SR, batch_size=2, rank=rank, world_size=world)
        seen = [
            k
            for b in iter_eval_batches(weak, sample_rate=SR, batch_size=2, rank=rank, world_size=world)
            for k in b["keys"]
        ]
        retrieval = evaluate_retrieval(model, batches, relevance=relevance)
        temporal = evaluate_temporal(
            model, iter_eval_batches(strong, sample_rate=SR, batch_size=2, rank=rank, world_size=world)
        )
        # lockstep (ZeRO-3): 3 vs 4 batches of 1 clip; both ranks make 4 forwards, each through both towers
        counting = CountingToneModel()
        lockstep = evaluate_retrieval(
            counting,
            iter_eval_batches(weak, sample_rate=SR, batch_size=1, rank=rank, world_size=world),
            relevance=relevance,
            lockstep=True,
        )
        # in lockstep, rank 0's batches fail after one: the error reaches every rank (no rank waits forever)

        def failing(batches):
            yield next(iter(batches))
            raise ValueError("corrupt shard")

        mine = iter_eval_batches(weak, sample_rate=SR, batch_size=1, rank=rank, world_size=world)
        try:
            evaluate_retrieval(CountingToneModel(), failing(mine) if rank == 0 else mine, lockstep=True)
            lockstep_error = ""
        except (ValueError, RuntimeError) as e:
            lockstep_error = str(e)
        # every rank reading all of the split: each sample arrives twice, which must fail on every rank (no hang)
        try:
            evaluate_retrieval(model, iter_eval_batches(weak, sample_rate=SR, batch_size=2))
            duplicate_error = ""
        except (ValueError, RuntimeError) as e:
            duplicate_error = str(e)
        Path(out, f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "retrieval": retrieval,
                    "temporal": temporal,
                    "lockstep": lockstep,
                    "lockstep_calls": counting.calls,
                    "lockstep_error": lockstep_error,
                    "seen": seen,
                    "duplicate_error": duplicate_error,
                }
            )
        )
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_match_one_and_see_each_sample_once(tmp_path):
    weak, strong = weak_split(tmp_path), strong_split(tmp_path)
    mp.spawn(_worker, args=(2, _free_port(), str(weak), str(strong), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single_temporal = evaluate_temporal(
        ToneModel(), iter_eval_batches(str(strong), sample_rate=SR, batch_size=4)
    )
    for r in results:  # the same report on every rank, equal to the single-process one
        assert r["retrieval"] == pytest.approx(EXPECTED_RETRIEVAL)
        assert r["lockstep"] == pytest.approx(EXPECTED_RETRIEVAL)
        assert r["lockstep_calls"] == [[True, True]] * 4
        assert "corrupt shard" in r["lockstep_error"]
        assert r["temporal"] == pytest.approx(single_temporal)
        assert "evaluated more than once" in r["duplicate_error"]
    seen = results[0]["seen"] + results[1]["seen"]
    assert sorted(seen) == sorted(make_key("toy", f"clip {k}.wav") for k in range(7))
    assert results[0]["seen"] and results[1]["seen"]
