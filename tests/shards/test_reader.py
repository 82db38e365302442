"""Streaming reader: url resolution, worker partitioning, decode/crop/regions, evaluation batches, bad data."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from torch.utils.data import DataLoader, IterableDataset

from shards.audio import resample
from shards.clips import crop_regions, pick_crop, read_window
from shards.reader import iter_eval_batches
from shards.records import ReadStats, iter_groups, iter_samples, share
from shards.schema import stable_id
from shards.shardlist import ShardError, eval_parts, expand_urls, train_parts
from shards.tarstream import TarError, iter_tar
from shards.transfer import BatchBuffers, BatchReceiver, passthrough

SR = 8000


def eval_keys(urls, **kw) -> list[str]:
    args = dict(sample_rate=SR, batch_size=3)
    args.update(kw)
    return [k for b in iter_eval_batches(urls, **args) for k in b["keys"]]


# ---------------------------------------------------------------------------------------------------------------------
# urls -> shards
# ---------------------------------------------------------------------------------------------------------------------


def test_expand_brace_pattern_list_and_split_dir(toy_data):
    pattern = str(toy_data / "wa" / "wa-train-{000000..000003}.tar")
    shards = expand_urls(pattern)
    assert [Path(s.url).name for s in shards] == [f"wa-train-{i:06d}.tar" for i in range(4)]
    assert [s.num_samples for s in shards] == [10, 10, 10, 10]  # from manifest.json
    assert expand_urls(str(toy_data / "wa")) == shards
    both = expand_urls([str(toy_data / "wa"), str(toy_data / "st" / "st-train-00000{0,2}.tar")])
    assert [Path(s.url).name for s in both[4:]] == ["st-train-000000.tar", "st-train-000002.tar"]
    assert expand_urls(str(toy_data / "st" / "st-train-*.tar"))[2].num_samples == 10


def test_split_dir_without_manifest_lists_tars(toy_data, tmp_path):
    for p in (toy_data / "wa").glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    shards = expand_urls(str(tmp_path))
    assert len(shards) == 4 and all(s.num_samples is None for s in shards)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda d: str(d / "wa" / "wa-train-{000000..000009}.tar"),
            r"matches no file: .*wa-train-000004\.tar",
        ),
        (lambda d: str(d / "nowhere" / "*.tar"), r"matches no file"),
        (lambda d: str(d / "wa") + "/missing.tar", r"missing\.tar does not exist"),
        (lambda d: "pipe:cat " + str(d / "wa" / "wa-train-000000.tar"), r"data\.allow_pipe=true"),
        (lambda d: "ftp://example.org/x-{0..3}.tar", r"unsupported url scheme 'ftp'"),
        (lambda d: [str(d / "wa"), str(d / "wa" / "wa-train-000001.tar")], r"listed twice"),
    ],
)
def test_bad_urls_name_the_problem(toy_data, make, match):
    with pytest.raises(ShardError, match=match):
        expand_urls(make(toy_data))


def test_empty_shards_are_errors(tmp_path, kit):
    (tmp_path / "zero.tar").write_bytes(b"")
    with pytest.raises(ShardError, match=r"empty shard: .*zero\.tar has 0 bytes"):
        expand_urls(str(tmp_path / "zero.tar"))
    kit.write_tar(tmp_path / "none" / "x.tar", [])  # a valid tar without members, no manifest
    with pytest.raises(ShardError, match=r"empty shard: .*x\.tar contains no"):
        eval_keys(str(tmp_path / "none"))
    (tmp_path / "none" / "manifest.json").write_text(
        json.dumps({"shards": [{"name": "x.tar", "num_samples": 0}]})
    )
    with pytest.raises(ShardError, match=r"empty shard: .*x\.tar holds 0 samples"):
        expand_urls(str(tmp_path / "none"))


def test_pipe_urls_work_when_allowed(toy_data):
    url = "pipe:cat " + str(toy_data / "wa" / "wa-train-00000{0,1}.tar")
    assert eval_keys(url, allow_pipe=True) == [f"wa-{i:04d}" for i in range(20)]


# ---------------------------------------------------------------------------------------------------------------------
# Partitioning over workers
# ---------------------------------------------------------------------------------------------------------------------


def _owners(parts_of, counts, total):
    owners: dict[tuple[int, int], list[int]] = {}
    for t in range(total):
        for s, start, stop, stride, offset in parts_of(t):
            for i in range(counts[s]):
                if start <= i < (stop if stop is not None else counts[s]) and i % stride == offset:
                    owners.setdefault((s, i), []).append(t)
    return owners


@pytest.mark.parametrize("counts", [[10, 10, 10, 10], [7, 1, 12], [5], [3, 9, 9, 2, 8, 6, 1]])
@pytest.mark.parametrize("total", [1, 2, 3, 4, 6, 16])
def test_every_sample_has_exactly_one_worker(counts, total):
    every = {(s, i) for s, c in enumerate(counts) for i in range(c)}
    for parts_of in (
        lambda t: train_parts(len(counts), total, t),
        lambda t: eval_parts(counts, total, t),
        lambda t: eval_parts([None] * len(counts), total, t),
    ):
        owners = _owners(parts_of, counts, total)
        assert set(owners) == every and all(len(v) == 1 for v in owners.values())
    sizes = [sum(len(range(a, b)) for _, a, b, _, _ in eval_parts(counts, total, t)) for t in range(total)]
    assert max(sizes) - min(sizes) <= 1  # known counts: balanced to one sample


def test_train_parts_hand_computed():
    assert train_parts(5, 2, 1) == [(1, 0, None, 1, 0), (3, 0, None, 1, 0)]
    # 3 shards, 8 workers: shard 2 is shared by workers 2 and 5, who keep every other sample
    assert train_parts(3, 8, 5) == [(2, 0, None, 2, 1)]
    assert train_parts(3, 8, 6) == [(0, 0, None, 3, 2)]


# ---------------------------------------------------------------------------------------------------------------------
# Crop and regions
# ---------------------------------------------------------------------------------------------------------------------


def test_crop_regions_hand_computed():
    regions = [("a", 1.0, 3.0), ("b", 4.0, 4.5), ("c", 0.0, 10.0), ("d", 5.5, 7.0), ("e", 5.0, 6.0)]
    # window [2.5, 5.5): a keeps 0.5 s of 2 s (25%), c covers the whole window, d only touches its end,
    # e keeps 0.5 s of 1 s (exactly the threshold)
    assert crop_regions(regions, 2.5, 3.0, 0.5) == [("b", 1.5, 2.0), ("c", 0.0, 3.0), ("e", 2.5, 3.0)]
    assert crop_regions(regions, 2.5, 3.0, 0.2)[0] == ("a", 0.0, 0.5)
    assert crop_regions(regions, 2.5, 3.0, 0.6) == [("b", 1.5, 2.0), ("c", 0.0, 3.0)]
    assert crop_regions(regions, 8.0, 3.0, 0.0) == [("c", 0.0, 2.0)]


def test_pick_crop_falls_back_to_a_window_around_a_region():
    rng = np.random.default_rng(0)
    # 10 s at 10 Hz, 1 s window. Centred on [9.5, 9.9] the start would be 92, clamped to the last start 90.
    assert pick_crop(rng, 100, 10, 10, [("x", 9.5, 9.9)], 0.5, tries=0) == (
        90,
        [("x", pytest.approx(0.5), pytest.approx(0.9))],
    )
    assert pick_crop(rng, 100, 10, 10, [("y", 4.0, 4.4)], 0.5, tries=0) == (
        37,
        [("y", pytest.approx(0.3), pytest.approx(0.7))],
    )
    for seed in range(20):  # with random tries first, the result always keeps a region
        start, kept = pick_crop(np.random.default_rng(seed), 100, 10, 10, [("x", 9.5, 9.9)], 0.5)
        assert 0 <= start <= 90 and kept


def test_read_window_decodes_only_the_window_exactly(kit):
    pcm = kit.ramp(3 * SR)
    with sf.SoundFile(io.BytesIO(kit.flac_bytes(pcm, SR))) as f:
        np.testing.assert_array_equal(read_window(f, SR, 5000, 4000), pcm[5000:9000])
        np.testing.assert_array_equal(read_window(f, SR, 23000, 4000), pcm[23000:])  # clipped at the end


def test_read_window_resamples_like_the_whole_file(kit):
    t = np.arange(2 * 16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 300 * t) + 0.2 * np.sin(2 * np.pi * 1700 * t)).astype(np.float32)
    with sf.SoundFile(io.BytesIO(kit.flac_bytes(np.round(x * 32767).astype(np.int16), 16000))) as f:
        got = read_window(f, SR, 3000, 4000).astype(np.float32) / 32768
        f.seek(0)
        whole = resample(f.read(dtype="float32"), 16000, SR)
    assert got.shape == (4000,)
    np.testing.assert_allclose(got, whole[3000:7000], atol=2e-3)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation batches
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", [True, False])
def test_eval_every_sample_exactly_once_over_ranks_and_workers(toy_data, tmp_path, manifest):
    urls = str(toy_data / "wa")
    if not manifest:
        for p in (toy_data / "wa").glob("*.tar"):
            shutil.copy(p, tmp_path / p.name)
        urls = str(tmp_path)
    keys = []
    for rank in range(3):  # 3 ranks x 2 workers = 6 readers for 4 shards
        keys += eval_keys(urls, rank=rank, world_size=3, num_workers=2)
    assert sorted(keys) == [f"wa-{i:04d}" for i in range(40)]


def test_eval_max_samples_is_the_same_subset_for_any_world_size(toy_data):
    urls = str(toy_data / "wa")
    single = eval_keys(urls, rank=0, world_size=1, num_workers=0, max_samples=13)
    split = [
        k
        for rank in range(3)
        for k in eval_keys(urls, rank=rank, world_size=3, num_workers=2, max_samples=13)
    ]
    assert sorted(single) == sorted(split) == [f"wa-{i:04d}" for i in range(13)]


def test_eval_max_samples_needs_counts(toy_data, tmp_path):
    for p in (toy_data / "wa").glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    with pytest.raises(ShardError, match="max_samples needs sample counts"):
        eval_keys(str(tmp_path), rank=0, world_size=1, num_workers=0, max_samples=5)


def test_eval_whole_clips_padded_with_mask(toy_data, kit):
    samples = {m["key"]: (m, pcm) for m, pcm in kit.make_samples("st", 30, SR, strong=True, seed=3)}
    batches = list(iter_eval_batches(str(toy_data / "st"), sample_rate=SR, batch_size=4))
    assert sum(len(b["keys"]) for b in batches) == 30
    for b in batches:
        lengths = [len(samples[k][1]) for k in b["keys"]]
        assert b["audio"].shape == (len(lengths), max(lengths)) and b["kind"] == "strong"
        assert b["audio_mask"].sum(1).tolist() == lengths
        assert b["durations"].tolist() == pytest.approx([n / SR for n in lengths])
        for row, n in zip(b["audio"], lengths):
            np.testing.assert_array_equal((row[:n] * 32768).round().numpy(), kit.ramp(n))
            assert not row[n:].any()
        assert b["captions"] == [samples[k][0]["captions"] for k in b["keys"]]
        expected = [(i, r["text"]) for i, k in enumerate(b["keys"]) for r in samples[k][0]["strong"]]
        assert list(zip(b["region_clip"].tolist(), b["region_text"])) == expected
        assert b["region_text_ids"].tolist() == [stable_id(t) for _, t in expected]


def test_eval_fixed_crop_from_zero(toy_data, kit):
    samples = {m["key"]: m for m, _ in kit.make_samples("st", 30, SR, strong=True, seed=3)}
    for b in iter_eval_batches(str(toy_data / "st"), sample_rate=SR, batch_size=8, clip_seconds=0.6):
        assert b["audio"].shape[1] == 4800
        assert [kit.ramp_position(float(v)) for v in b["audio"][:, 0]] == [0] * len(b["keys"])
        got = list(
            zip(b["region_clip"].tolist(), b["region_text"], b["onsets"].tolist(), b["offsets"].tolist())
        )
        want = []
        for i, key in enumerate(b["keys"]):
            for r in samples[key]["strong"]:
                a, z = r["onset"], min(r["offset"], 0.6)
                if z > a and z - a >= 0.5 * min(r["offset"] - r["onset"], 0.6) - 1e-6:
                    want.append((i, r["text"], a, z))
        assert got == [(i, t, pytest.approx(a, abs=1e-6), pytest.approx(z, abs=1e-6)) for i, t, a, z in want]


# ---------------------------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------------------------


def _good(kit, i):
    meta = kit.sample_meta(f"toy-{i:04d}", 0.25, SR, [f"caption {i}"])
    return [
        (f"toy-{i:04d}.flac", kit.flac_bytes(kit.ramp(2000), SR)),
        (f"toy-{i:04d}.json", json.dumps(meta).encode()),
    ]


def test_corrupt_members_are_skipped_counted_and_logged(tmp_path, caplog, kit):
    mismatch = kit.sample_meta("toy-other", 0.25, SR, ["x"])
    members = [
        *_good(kit, 0),
        ("toy-0001.flac", b"not a flac file at all"),
        ("toy-0001.json", json.dumps(kit.sample_meta("toy-0001", 0.25, SR, ["x"])).encode()),
        *_good(kit, 2),
        ("toy-0003.flac", kit.flac_bytes(kit.ramp(2000), SR)),
        ("toy-0003.json", b"{broken json"),
        ("toy-0004.flac", kit.flac_bytes(kit.ramp(2000), SR)),  # no json member
        *_good(kit, 5),
        ("toy-0006.flac", kit.flac_bytes(kit.ramp(2000), SR)),
        ("toy-0006.json", json.dumps(mismatch).encode()),
        *_good(kit, 7),
    ]
    kit.write_tar(tmp_path / "bad.tar", members)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="shards.records"):
        keys = eval_keys(str(tmp_path / "bad.tar"), stats=stats)
    assert keys == ["toy-0000", "toy-0002", "toy-0005", "toy-0007"]
    assert stats == ReadStats(expected=8, read=4, skipped=4)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for needle in (
        "toy-0001.flac: cannot decode",
        "toy-0003.json",
        "missing member toy-0004.json",
        "toy-other",
    ):
        assert needle in messages and "bad.tar" in messages


def test_truncated_shard_keeps_what_came_before(tmp_path, kit):
    kit.write_tar(tmp_path / "full.tar", [m for i in range(6) for m in _good(kit, i)])
    data = (tmp_path / "full.tar").read_bytes()
    # each sample is 2 members of 512 header + 512 data bytes: cut inside toy-0003.flac
    (tmp_path / "cut.tar").write_bytes(data[: 3 * 2048 + 700])
    stats = ReadStats()
    assert eval_keys(str(tmp_path / "cut.tar"), stats=stats) == ["toy-0000", "toy-0001", "toy-0002"]
    assert stats == ReadStats(expected=4, read=3, skipped=1)  # no manifest: the lost rest counts as 1


def damage(path: Path, how: str) -> None:
    """Cut a shard inside its 3rd sample ("truncated"), before it on a member boundary ("boundary": the rest looks
    like a complete tar), or replace it with something that is not a tar."""
    with tarfile.open(path) as tar:
        third = [m for m in tar.getmembers()][4]  # members: KEY.flac, KEY.json per sample
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: third.offset_data + 100])
    elif how == "boundary":
        path.write_bytes(data[: third.offset])
    else:
        path.write_bytes(b"<html>502 Bad Gateway</html>")


@pytest.mark.parametrize("how", ["truncated", "boundary", "not-a-tar"])
@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2)])
def test_damaged_shard_counts_the_same_in_every_reader(tmp_path, how, world, workers):
    """Eval batches (any ranks x workers), the tokenizer pass and verify count a damaged shard alike:
    expected (the manifest's) = read + skipped, and the samples before the damage are kept."""
    from shards.verify import verify_split
    from tests.helpers import tone, toy_sample, write_split

    samples = [
        (toy_sample(f"c{i}", "train", SR, [f"caption {i}"], seconds=0.5), tone(0.5, SR, 300 + 50 * i))
        for i in range(10)
    ]
    assert verify_split(write_split(tmp_path / "intact", "train", samples, SR, per_shard=6)).ok
    folder = write_split(tmp_path, "train", samples, SR, per_shard=6)
    damage(folder / "toy-train-000000.tar", how)
    intact = {"truncated": 2, "boundary": 2, "not-a-tar": 0}[how]
    want = ReadStats(expected=10, read=intact + 4, skipped=6 - intact)

    total, keys = ReadStats(), []
    for rank in range(world):
        stats = ReadStats()
        keys += eval_keys(str(folder), stats=stats, rank=rank, world_size=world, num_workers=workers)
        total.add(stats)
    assert total == want and len(keys) == want.read

    stats = ReadStats()
    assert len(list(iter_samples(str(folder), stats=stats))) == want.read
    assert stats == want

    report = verify_split(folder)
    assert not report.ok and (report.expected, report.read, report.skipped) == (10, want.read, want.skipped)


def test_share_hand_computed():
    assert share((0, 0, None, 1, 0), 3, 10) == 7
    assert share((0, 0, None, 3, 1), 0, 10) == 3  # positions 1, 4, 7
    assert share((0, 0, None, 3, 1), 5, 10) == 1  # 7
    assert share((0, 2, 6, 1, 0), 0, 10) == 4  # an eval part [2, 6)
    assert share((0, 2, 6, 1, 0), 4, None) == 2
    assert share((0, 0, None, 1, 0), 3, None) is None


def test_texts_are_capped_and_counted(tmp_path, kit):
    meta = kit.sample_meta("toy-0000", 0.25, SR, ["a" * 5000, "short"], [("b" * 3000, 0.0, 0.1)])
    kit.write_tar(
        tmp_path / "long.tar",
        [("toy-0000.flac", kit.flac_bytes(kit.ramp(2000), SR)), ("toy-0000.json", json.dumps(meta).encode())],
    )
    stats = ReadStats()
    (batch,) = iter_eval_batches(str(tmp_path / "long.tar"), sample_rate=SR, batch_size=1, stats=stats)
    assert [len(c) for c in batch["captions"][0]] == [2000, 5] and len(batch["region_text"][0]) == 2000
    assert stats.truncated == 2
    stats = ReadStats()
    (sample,) = iter_samples(str(tmp_path / "long.tar"), stats=stats, max_text_chars=100)
    assert [len(c) for c in sample.captions] == [100, 5] and stats.truncated == 2


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_never_unpickles_or_writes_member_paths(tmp_path, kit):
    target = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(target)))
    members = [
        *_good(kit, 0),
        ("toy-0000.pickle", payload),
        ("toy-0000.pyd", payload),
        ("toy-0000.pth", payload),
        *_good(kit, 1),
    ]
    kit.write_tar(tmp_path / "s.tar", members)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert eval_keys(str(tmp_path / "s.tar")) == ["toy-0000", "toy-0001"]
    finally:
        os.chdir(cwd)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar"]


def test_shard_rate_differs_from_model_rate(tmp_path, kit):
    kit.write_tars(
        tmp_path / "hi", kit.make_samples("hi", 4, 16000, seconds=(0.5, 0.5)), 4, 16000, prefix="hi"
    )
    (b,) = iter_eval_batches(str(tmp_path / "hi"), sample_rate=SR, batch_size=4)
    assert b["audio"].shape == (4, 4000) and b["audio_mask"].all()


# ---------------------------------------------------------------------------------------------------------------------
# Tar parsing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_iter_tar_matches_tarfile(tmp_path, fmt):
    names = ["a.flac", "a.json", "dir/b.json", "x" * 90 + "/" + "k" * 60 + ".flac"]  # the last needs a prefix
    if fmt != tarfile.USTAR_FORMAT:
        names += ["long-" + "n" * 150 + ".json", "café-ünïcode.json"]
    rng = np.random.default_rng(0)
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = rng.bytes(int(rng.integers(0, 3000)))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if i == 1:
                folder = tarfile.TarInfo("folder")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    with path.open("rb") as f:
        assert list(iter_tar(f)) == expected
    with path.open("rb") as f:
        assert [n for n, _ in iter_tar(f, lambda n: n.endswith(".json"))] == [
            n for n, _ in expected if n.endswith(".json")
        ]


def test_iter_tar_rejects_damage(tmp_path):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.json")
        info.size = 1000
        tar.addfile(info, io.BytesIO(b"x" * 1000))
    data = bytearray(path.read_bytes())
    with pytest.raises(TarError, match="truncated member"):
        list(iter_tar(io.BytesIO(bytes(data[:900]))))
    data[10] ^= 0xFF
    with pytest.raises(TarError, match="checksum"):
        list(iter_tar(io.BytesIO(bytes(data))))
    with pytest.raises(TarError, match="not a tar header"):
        list(iter_tar(io.BytesIO(b"fLaC" * 200)))


# ---------------------------------------------------------------------------------------------------------------------
# Batch buffers shared between worker and consumer
# ---------------------------------------------------------------------------------------------------------------------


class _Numbered(IterableDataset):
    """A worker that fills each batch with its own number, through a 2-slot BatchBuffers ring."""

    def __iter__(self):
        buffers = BatchBuffers(slots=2)
        for g in range(8):
            audio, ack = buffers.take(2, 1000)
            audio.fill_(g)
            yield {"audio": audio, "_ack": ack, "lengths": np.array([1000, 500])}


def test_batch_buffers_never_overwrite_an_unconverted_batch():
    loader = DataLoader(
        _Numbered(), batch_size=None, num_workers=1, collate_fn=passthrough, prefetch_factor=8
    )
    held = list(loader)  # nothing converted, so nothing acknowledged
    assert [b["audio"].unique().tolist() for b in held] == [[g] for g in range(8)]
    assert [b["_ack"] is not None for b in held] == [True, True] + [False] * 6


def test_batch_buffers_reuse_slots_once_converted():
    receive = BatchReceiver(8000)
    loader = DataLoader(
        _Numbered(), batch_size=None, num_workers=1, collate_fn=passthrough, prefetch_factor=1
    )
    out = [receive(b) for b in loader]
    assert [b["audio"].mul(32768).unique().tolist() for b in out] == [[g] for g in range(8)]
    assert [b["audio_mask"].sum(1).tolist() for b in out] == [[1000, 500]] * 8
    assert len(receive.mapped) == 2  # the worker's two ring slots, reused for all 8 batches


def test_stopping_early_on_a_pipe_is_quiet(tmp_path, kit):
    rng = np.random.default_rng(0)
    members = []
    for i in range(8):  # noise does not compress: 8 x 16 kB, more than a pipe buffer
        meta = kit.sample_meta(f"toy-{i:04d}", 1.0, SR, ["noise"])
        pcm = rng.integers(-20000, 20000, SR).astype(np.int16)
        members += [
            (f"toy-{i:04d}.flac", kit.flac_bytes(pcm, SR)),
            (f"toy-{i:04d}.json", json.dumps(meta).encode()),
        ]
    kit.write_tar(tmp_path / "big.tar", members)
    # like curl's "write error" exit: a reader that stops early makes the command fail
    url = f"pipe:cat {tmp_path / 'big.tar'} || exit 23"
    assert len([key for key, _ in iter_groups(url)]) == 8
    groups = iter_groups(url)
    assert next(groups)[0] == "toy-0000"
    groups.close()  # the command exits 23; that must not surface as an error
