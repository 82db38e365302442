"""Mixed weak/strong stream: schedule, weights, crops, disjoint workers, exact resume, errors."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from shards.clips import Clip, join_captions, mix_clips
from shards.mixing import MixedStream, batch_kind, choose_sources
from shards.shardlist import ShardError
from trainer.config import DataConfig, MixupConfig, SourceConfig

SR = 8000


def data_cfg(root, **kw) -> DataConfig:
    cfg = DataConfig(
        sample_rate=SR,
        clip_seconds=0.5,
        batch_size=4,
        num_workers=0,
        weak=[SourceConfig("wa", str(root / "wa"), 1.0), SourceConfig("wb", str(root / "wb"), 3.0)],
        strong=[SourceConfig("st", str(root / "st"), 1.0)],
        strong_every=3,
        shuffle_buffer=8,
        min_region_overlap=0.5,
    )
    return replace(cfg, **kw)


def take(stream, n: int) -> list[dict]:
    it = iter(stream)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def source_meta(kit) -> dict:
    return {
        m["key"]: m
        for name, n, seed, strong in (("wa", 40, 1, False), ("wb", 40, 2, False), ("st", 30, 3, True))
        for m, _ in kit.make_samples(name, n, SR, strong=strong, seed=seed)
    }


# ---------------------------------------------------------------------------------------------------------------------
# Schedule and weights
# ---------------------------------------------------------------------------------------------------------------------


def test_strong_every_pattern():
    assert [batch_kind(g, 3, None, 0) for g in range(6)] == ["weak", "weak", "strong"] * 2
    assert {batch_kind(g, 0, None, 0) for g in range(50)} == {"weak"}
    assert {batch_kind(g, 1, None, 0) for g in range(50)} == {"strong"}


def test_strong_prob_frequency_and_determinism():
    kinds = [batch_kind(g, 2, 0.3, seed=5) for g in range(10_000)]
    assert abs(kinds.count("strong") / 10_000 - 0.3) < 0.02
    assert kinds == [batch_kind(g, 2, 0.3, seed=5) for g in range(10_000)]
    assert kinds != [batch_kind(g, 2, 0.3, seed=6) for g in range(10_000)]


def test_source_choice_holds_weights_over_10000_draws():
    weights = [1.0, 2.0, 5.0, 0.5]
    picks = choose_sources(np.random.default_rng(0), weights, 10_000)
    observed = np.bincount(picks, minlength=4) / 10_000
    np.testing.assert_allclose(observed, np.array(weights) / sum(weights), atol=0.02)


def test_stream_holds_weights_over_10000_samples(toy_data):
    cfg = data_cfg(toy_data, strong=[], strong_every=0, batch_size=100, clip_seconds=0.05, shuffle_buffer=4)
    stream = MixedStream(cfg, seed=3)
    take(stream, 100)
    seen = stream.data_seen
    assert sum(seen.values()) == 10_000
    assert abs(seen["wa"] / 10_000 - 0.25) < 0.02 and abs(seen["wb"] / 10_000 - 0.75) < 0.02


def test_kinds_follow_the_schedule_and_agree_across_ranks(toy_data):
    cfg = data_cfg(toy_data, strong_prob=0.4)
    kinds = [[b["kind"] for b in take(MixedStream(cfg, rank=r, world_size=2, seed=1), 12)] for r in range(2)]
    assert kinds[0] == kinds[1] == [batch_kind(g, 3, 0.4, 1) for g in range(12)]
    sources = {b["kind"]: set(b["sources"]) for b in take(MixedStream(data_cfg(toy_data), seed=1), 9)}
    assert sources["strong"] == {"st"} and sources["weak"] <= {"wa", "wb"}


# ---------------------------------------------------------------------------------------------------------------------
# Samples: crops, regions, captions
# ---------------------------------------------------------------------------------------------------------------------


def test_crops_regions_and_captions_match_the_source_samples(toy_data, kit):
    meta = source_meta(kit)
    window = 0.5
    captions: dict[str, set[str]] = {}
    for b in take(MixedStream(data_cfg(toy_data, strong_every=2), seed=2), 30):
        assert b["audio"].shape == (4, 4000) and b["audio"].dtype == torch.float32
        assert b["audio_mask"].all() and b["durations"].tolist() == [window] * 4
        for i, key in enumerate(b["keys"]):
            # the ramp tells where the window starts; it must be the reported crop start
            start = kit.ramp_position(float(b["audio"][i, 0]))
            assert start == round(float(b["crop_starts"][i]) * SR)
            assert (b["audio"][i] * 32768).round().tolist() == kit.ramp(start + 4000)[start:].tolist()
            assert b["captions"][i] in meta[key]["captions"]
            captions.setdefault(key, set()).add(b["captions"][i])
        if b["kind"] == "weak":
            assert "region_text" not in b
            continue
        assert sorted(set(b["region_clip"].tolist())) == list(range(4))  # every sample keeps a region
        for j, text in enumerate(b["region_text"]):
            i = int(b["region_clip"][j])
            t0 = float(b["crop_starts"][i])
            onset, offset = float(b["onsets"][j]), float(b["offsets"][j])
            assert 0 <= onset < offset <= window + 1e-6
            assert any(
                r["text"] == text
                and math.isclose(max(r["onset"], t0) - t0, onset, abs_tol=1e-5)
                and math.isclose(min(r["offset"], t0 + window) - t0, offset, abs_tol=1e-5)
                for r in meta[b["keys"][i]]["strong"]
            )
    assert any(len(c) == 2 for c in captions.values())  # a caption is picked anew on each pass


def test_short_clips_are_padded_with_a_mask(toy_data, kit):
    meta = source_meta(kit)
    (b,) = take(MixedStream(data_cfg(toy_data, clip_seconds=1.25, strong=[], strong_every=0), seed=0), 1)
    lengths = [round(meta[k]["duration"] * SR) for k in b["keys"]]
    assert b["audio"].shape == (4, 10000)
    assert b["audio_mask"].sum(1).tolist() == lengths
    assert b["durations"].tolist() == pytest.approx([n / SR for n in lengths])
    assert all(not row[n:].any() for row, n in zip(b["audio"], lengths))


def test_workers_and_ranks_read_disjoint_samples(toy_data):
    cfg = data_cfg(toy_data, num_workers=2)
    keys: dict[tuple[int, int], set[str]] = {}
    for rank in range(2):
        for g, b in enumerate(take(MixedStream(cfg, rank=rank, world_size=2, seed=4), 24)):
            keys.setdefault((rank, g % 2), set()).update(b["keys"])
    groups = list(keys.values())
    assert len(groups) == 4 and all(groups)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not groups[i] & groups[j]


# ---------------------------------------------------------------------------------------------------------------------
# Exact resume (torchtitan-style)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "split", "prob", "sampling", "mixup"),
    [
        (0, 40, None, "random", 0.0),
        (2, 40, None, "random", 0.0),
        (2, 41, None, "random", 0.0),
        (2, 40, 0.5, "random", 0.0),
        (0, 40, None, "all", 0.0),  # pass boundaries of every source lie before the split
        (2, 41, 0.5, "all", 0.5),
    ],
)
def test_resume_continues_with_identical_batches(toy_data, workers, split, prob, sampling, mixup):
    cfg = data_cfg(
        toy_data,
        num_workers=workers,
        strong_prob=prob,
        caption_sampling=sampling,
        mixup=MixupConfig(prob=mixup),
    )
    uninterrupted = MixedStream(cfg, seed=7)
    reference = take(uninterrupted, split + 8)
    first = MixedStream(cfg, seed=7)
    it = iter(first)
    for _ in range(split):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # plain types only
    next(it)  # consuming more after the snapshot must not change it
    it.close()
    resumed = MixedStream(cfg, seed=7)
    resumed.load_state_dict(state)
    assert resumed.data_seen == state["data_seen"] and sum(state["data_seen"].values()) == 4 * split
    for expected, got in zip(reference[split:], take(resumed, 8), strict=True):
        assert_same_batch(expected, got)
    assert resumed.state_dict() == uninterrupted.state_dict()  # RNGs, shard positions, buffers: all equal


def test_reiterating_a_stream_continues_where_the_caller_stopped(toy_data):
    cfg = data_cfg(toy_data, num_workers=2)
    reference = take(MixedStream(cfg, seed=1), 10)
    stream = MixedStream(cfg, seed=1)
    head = take(stream, 5)
    tail = take(stream, 5)
    for expected, got in zip(reference, head + tail, strict=True):
        assert_same_batch(expected, got)
    old, new = iter(stream), iter(stream)
    next(old)
    next(new)
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)
    new.close()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(num_workers=1), r"num_workers=2, this stream has 1"),
        (dict(weak=[SourceConfig("wa", "WA", 1.0)]), r"sources="),
        (dict(caption_sampling="all"), r"caption_sampling='random', this stream has 'all'"),
    ],
)
def test_state_from_another_setup_is_refused(toy_data, change, match):
    stream = MixedStream(data_cfg(toy_data, num_workers=2), seed=0)
    state = stream.state_dict()
    if "weak" in change:
        change = dict(weak=[SourceConfig("wa", str(toy_data / "wa" / "wa-train-000000.tar"), 1.0)])
    with pytest.raises(ValueError, match=match):
        MixedStream(data_cfg(toy_data, **{"num_workers": 2, **change}), seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"world_size=1, this stream has 2"):
        MixedStream(data_cfg(toy_data, num_workers=2), rank=0, world_size=2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"seed=0, this stream has 1"):
        MixedStream(data_cfg(toy_data, num_workers=2), seed=1).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------------
# caption_sampling: all — (clip, caption) pairs, every pair once per pass
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_captions(tmp_path_factory, kit):
    """A Clotho-like source: 14 clips in 4 shards, 5 captions each (clip 3: 2 captions, clip 7: one)."""
    root = tmp_path_factory.mktemp("five")
    samples = kit.make_samples("cl", 14, SR, seed=4)
    for i, (meta, _) in enumerate(samples):
        meta["captions"] = [f"cl clip {i} caption {c}" for c in range({3: 2, 7: 1}.get(i, 5))]
    kit.write_tars(root / "cl", samples, 4, SR, prefix="cl-train")
    pairs = Counter((m["key"], c) for m, _ in samples for c in m["captions"])
    return root, pairs


def all_pairs_cfg(root, **kw) -> DataConfig:
    weak = [SourceConfig("cl", str(root / "cl"), 1.0)]
    kw = {"weak": weak, "strong": [], "strong_every": 0, "batch_size": 3, "shuffle_buffer": 5, **kw}
    return data_cfg(root, caption_sampling="all", **kw)


def pairs_of(batches) -> list[tuple[str, str]]:
    return [(k, c) for b in batches for k, c in zip(b["keys"], b["captions"])]


def test_all_yields_every_pair_once_per_pass(five_captions):
    root, pairs = five_captions
    assert len(pairs) == sum(pairs.values()) == 63
    drawn = pairs_of(take(MixedStream(all_pairs_cfg(root), seed=3), 63))  # batches of 3: three passes
    passes = [Counter(drawn[i : i + 63]) for i in range(0, 189, 63)]
    assert all(p == pairs for p in passes)
    assert drawn[:63] != drawn[63:126]  # a new order each pass


def test_all_over_two_ranks_and_workers_covers_every_pair_once(five_captions):
    # 2 ranks x 2 workers: each owns one of the 4 shards (17, 16, 20 and 10 pairs) and goes through it in passes.
    root, pairs = five_captions
    cfg = all_pairs_cfg(root, num_workers=2, batch_size=1)
    shares = []
    for rank in range(2):
        batches = take(MixedStream(cfg, rank=rank, world_size=2, seed=5), 200)
        for worker in range(2):
            drawn = pairs_of(batches[worker::2])
            share = Counter(set(drawn))  # each pair of the worker's shard once
            n = len(share)
            assert all(Counter(drawn[i : i + n]) == share for i in range(0, len(drawn) - n + 1, n))
            shares.append(share)
    assert sum(shares, Counter()) == pairs


def test_random_draws_one_caption_per_clip_read(five_captions):
    root, pairs = five_captions
    drawn = pairs_of(take(MixedStream(replace(all_pairs_cfg(root), caption_sampling="random"), seed=3), 20))
    assert set(drawn) <= set(pairs) and len({k for k, _ in drawn}) < len(drawn)


# ---------------------------------------------------------------------------------------------------------------------
# Mixup
# ---------------------------------------------------------------------------------------------------------------------


def laion_do_mixup(x: torch.Tensor, mixup_lambda: torch.Tensor) -> torch.Tensor:
    """LAION-AI/CLAP src/laion_clap/clap_module/utils.py do_mixup, line by line."""
    out = (
        x.transpose(0, -1) * mixup_lambda + torch.flip(x, dims=[0]).transpose(0, -1) * (1 - mixup_lambda)
    ).transpose(0, -1)
    return out


def test_mix_clips_equals_laion_do_mixup_and_joins_captions():
    rng = np.random.default_rng(0)
    lengths = [800, 600, 800, 700, 800]
    clips = [
        Clip(f"k{i}", "src", rng.integers(-20000, 20000, n).astype(np.int16), 0.0, [], f"Caption {i}.")
        for i, n in enumerate(lengths)
    ]
    lambdas = [0.7, None, 0.25, 0.9, 0.5]
    mixed = mix_clips(clips, lambdas)
    padded = torch.zeros(5, 800, dtype=torch.float64)
    for i, c in enumerate(clips):
        padded[i, : len(c.audio)] = torch.from_numpy(c.audio.astype(np.float64))
    lam = torch.tensor([1.0 if x is None else x for x in lambdas], dtype=torch.float64)
    reference = laion_do_mixup(padded, lam).round()
    for i, (clip, lam_i) in enumerate(zip(mixed, lambdas)):
        partner = 4 - i
        if lam_i is None or partner == i:
            assert clip is clips[i]
            continue
        n = max(lengths[i], lengths[partner])
        assert clip.audio.dtype == np.int16 and len(clip.audio) == n
        np.testing.assert_array_equal(clip.audio, reference[i, :n].numpy())
        assert clip.caption == f"Caption {i} and caption {partner}." and clip.captions == [clip.caption]
        assert clip.key == f"k{i}+k{partner}" and clip.source == "src"
    # the middle clip of an odd batch is its own mirror: mixing it with itself leaves it as it was (LAION too)
    assert mixed[2] is clips[2]


@pytest.mark.parametrize(
    ("first", "second", "joined"),
    [
        ("A dog barks.", "Rain falls on a roof.", "A dog barks and rain falls on a roof."),
        ("birds chirp", "TV plays loudly!", "birds chirp and TV plays loudly"),
        ("Wind howls!? ", " a car passes", "Wind howls and a car passes!"),
    ],
)
def test_join_captions(first, second, joined):
    assert join_captions(first, second) == joined


WORDS = ("first", "second")  # the toy captions: "{source} clip {i} first|second"


def test_stream_mixup_mixes_weak_clips_only_and_off_changes_nothing(toy_data):
    base = take(MixedStream(data_cfg(toy_data), seed=2), 6)
    off = take(MixedStream(data_cfg(toy_data, mixup=MixupConfig(prob=0.0, alpha=3.0)), seed=2), 6)
    for a, b in zip(base, off, strict=True):
        assert_same_batch(a, b)
    mixed = take(MixedStream(data_cfg(toy_data, mixup=MixupConfig(prob=1.0)), seed=2), 6)
    for b in mixed:
        if b["kind"] == "strong":
            assert not any("+" in k for k in b["keys"])
            continue
        for i, key in enumerate(b["keys"]):
            first, second = key.split("+")
            assert b["keys"][3 - i] == f"{second}+{first}"  # batch of 4: clip i mixed with clip 3 - i
            (a, i_a), (c, i_c) = (k.split("-") for k in (first, second))
            options = {f"{a} clip {int(i_a)} {x} and {c} clip {int(i_c)} {y}" for x in WORDS for y in WORDS}
            assert b["captions"][i] in options
        assert b["clip_ids"].unique().numel() == 4


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_weight_must_be_positive(toy_data, weight):
    cfg = data_cfg(toy_data)
    cfg.weak[1].weight = weight
    with pytest.raises(ValueError, match=r"data\.weak\.1 \(wb\)\.weight: must be a finite number > 0"):
        MixedStream(cfg)


def test_bad_sources_are_named(toy_data):
    cfg = data_cfg(
        toy_data, strong=[SourceConfig("st", str(toy_data / "st" / "st-train-{000000..000005}.tar"))]
    )
    with pytest.raises(ShardError, match=r"data\.strong\.0 \(st\): .*st-train-000003\.tar does not exist"):
        MixedStream(cfg)
    cfg = data_cfg(toy_data, strong=[SourceConfig("st", "pipe:cat " + str(toy_data / "st" / "x.tar"))])
    with pytest.raises(ShardError, match=r"data\.strong\.0 \(st\): pipe:.*allow_pipe"):
        MixedStream(cfg)
    with pytest.raises(ValueError, match=r"data\.strong: strong batches are scheduled but no strong source"):
        MixedStream(data_cfg(toy_data, strong=[]))


def test_worker_without_samples_is_an_error(tmp_path, kit):
    kit.write_tars(tmp_path / "tiny", kit.make_samples("tiny", 1, SR), 1, SR, prefix="tiny")
    cfg = data_cfg(tmp_path, weak=[SourceConfig("tiny", str(tmp_path / "tiny"))], strong=[], strong_every=0)
    with pytest.raises(
        ShardError, match=r"source tiny: worker 1 found no readable samples .*every 2-th sample"
    ):
        take(MixedStream(replace(cfg, num_workers=2)), 2)


def test_corrupt_samples_are_skipped_and_counted(tmp_path, kit):
    samples = kit.make_samples("bad", 12, SR)
    for s in range(2):
        members = []
        for i in range(6 * s, 6 * s + 6):
            meta, pcm = samples[i]
            flac = b"\x00" * 300 if i == 2 else kit.flac_bytes(pcm, SR)
            members += [(f"{meta['key']}.flac", flac), (f"{meta['key']}.json", json.dumps(meta).encode())]
        kit.write_tar(tmp_path / "bad" / f"bad-{s:06d}.tar", members)
    cfg = data_cfg(
        tmp_path,
        weak=[SourceConfig("bad", str(tmp_path / "bad"))],
        strong=[],
        strong_every=0,
        shuffle_buffer=2,
    )
    stream = MixedStream(cfg, seed=0)
    keys = Counter(k for b in take(stream, 12) for k in b["keys"])
    assert "bad-0002" not in keys and len(keys) == 11
    stats = stream.read_stats
    assert stats.skipped >= 1 and stats.expected == stats.read + stats.skipped
    resumed = MixedStream(cfg, seed=0)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.read_stats == stats


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_shard_is_skipped_and_counted_by_its_manifest_share(tmp_path, kit, workers):
    """The stream reads past a truncated shard forever: every pass counts the manifest's rest of it as skipped."""
    kit.write_tars(tmp_path / "cut", kit.make_samples("cut", 16, SR, seed=5), 8, SR, prefix="cut-train")
    shard = tmp_path / "cut" / "cut-train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:5000])  # inside its 2nd or 3rd sample of 8
    cfg = data_cfg(tmp_path, weak=[SourceConfig("cut", str(tmp_path / "cut"))], strong=[], strong_every=0)
    cfg = replace(cfg, num_workers=workers)
    stream = MixedStream(cfg, seed=0)
    keys = Counter(k for b in take(stream, 16) for k in b["keys"])
    stats = stream.read_stats
    assert stats.skipped >= 5 and stats.expected == stats.read + stats.skipped
    assert all(int(k.split("-")[1]) < 3 or int(k.split("-")[1]) >= 8 for k in keys)


def test_counts_carry_over_to_a_stream_that_replaces_another(toy_data):
    """A resume with another data setup starts a new stream; data_seen and the read counts go on from the old one."""
    old = MixedStream(data_cfg(toy_data), seed=0)
    take(old, 6)
    seen, stats = old.data_seen, old.read_stats.as_dict()
    new = MixedStream(data_cfg(toy_data, weak=[SourceConfig("wa", str(toy_data / "wa"), 1.0)]), seed=7)
    new.carry_counts(seen, stats)
    batches = take(new, 3)
    assert new.data_seen["wb"] == seen["wb"] > 0  # no longer configured, still counted
    assert new.data_seen["wa"] == seen["wa"] + sum(b["sources"].count("wa") for b in batches)
    assert new.read_stats.read >= stats["read"]
    again = MixedStream(data_cfg(toy_data, weak=[SourceConfig("wa", str(toy_data / "wa"), 1.0)]), seed=7)
    again.load_state_dict(new.state_dict())
    assert again.data_seen == new.data_seen and again.read_stats == new.read_stats


def test_weak_sources_need_weak_batches(toy_data):
    with pytest.raises(ValueError, match=r"data.weak: sources are configured but no weak batch is scheduled"):
        MixedStream(data_cfg(toy_data, strong_every=1), seed=0)
