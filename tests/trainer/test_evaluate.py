"""The evaluation drivers on real shards (1 and 2 processes): embedding, lockstep, cache, reports."""

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

from shards.reader import iter_eval_batches
from shards.relevance import load_relevance
from shards.schema import make_key
from tests.helpers import tone, toy_sample, write_split
from trainer.embed import RetrievalSet, TemporalSet, embed_temporal
from trainer.evaluate import evaluate_retrieval, evaluate_temporal, temporal_report

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


def _write_split(folder: Path, split: str, clips, relevance=None, per_shard: int = 3) -> Path:
    """clips: (source_id, seconds, tone spans, captions, regions); real FLAC in real shards + manifest."""
    samples = [
        (
            toy_sample(source_id, split, SR, captions, regions, seconds),
            sum(tone(seconds, SR, FREQS[k], amplitude=0.5, start=on, stop=off) for k, on, off in spans),
        )
        for source_id, seconds, spans, captions, regions in clips
    ]
    return write_split(folder, split, samples, SR, relevance, per_shard)


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
