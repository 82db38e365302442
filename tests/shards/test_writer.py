"""ShardWriter: tar layout, limits, reproducible bytes, atomic finish, journal-based resume."""

from __future__ import annotations

import hashlib
import json
import tarfile

import numpy as np
import pytest

from shards.audio import decode_flac, encode_flac
from shards.schema import Region, Sample, SchemaError
from shards.splitdir import (
    JOURNAL,
    MANIFEST,
    Part,
    PartsMissing,
    WriterError,
    merge_parts,
    partition,
    read_manifest,
    read_part_manifest,
    sum_counts,
)
from shards.writer import ShardWriter

RATE = 8000


def make_samples(n: int, seconds: float = 0.25) -> list[tuple[Sample, bytes]]:
    """n distinct tiny samples (different tones, every third one strong-labelled) with their FLAC."""
    out = []
    t = np.arange(round(seconds * RATE)) / RATE
    for i in range(n):
        x = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32)
        strong = [Region(f"tone {i}", 0.0, seconds / 2, {"mid": "/m/x"})] if i % 3 == 0 else []
        s = Sample(
            f"ds-clip_{i}", "ds", "train", f"clip {i}.wav", seconds, RATE, [f"caption {i}"], strong, {"i": i}
        )
        out.append((s, encode_flac(x, RATE)))
    return out


def write_all(out_dir, samples, skips=(), **kw):
    """Write samples (with skips interleaved before sample i) and close; returns the manifest."""
    skips = dict(skips)
    with ShardWriter(out_dir, "ds", "train", RATE, **kw) as w:
        for i, (s, flac) in enumerate(samples):
            if i in skips:
                w.skip(*skips[i])
            w.write(s, flac, cursor={"n": i + 1})
    return read_manifest(out_dir)


def folder_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_round_trip_through_webdataset(tmp_path):
    import webdataset as wds

    samples = make_samples(5)
    manifest = write_all(tmp_path, samples, skips={2: ("gone.wav", "missing audio: gone.wav")}, max_samples=2)
    assert [s["name"] for s in manifest["shards"]] == [f"ds-train-00000{i}.tar" for i in range(3)]
    assert [s["num_samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["num_samples"] == 5 and manifest["total_seconds"] == pytest.approx(1.25)
    assert manifest["skipped"] == [{"source_id": "gone.wav", "reason": "missing audio: gone.wav"}]
    for info in manifest["shards"]:
        data = (tmp_path / info["name"]).read_bytes()
        assert len(data) == info["bytes"] and hashlib.sha256(data).hexdigest() == info["sha256"]
    urls = [str(tmp_path / s["name"]) for s in manifest["shards"]]
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert [g["__key__"] for g in got] == [s.key for s, _ in samples]
    for g, (s, flac) in zip(got, samples):
        assert Sample.from_json(g["json"]) == s
        pcm, sr = decode_flac(g["flac"], dtype="int16")
        ref, _ = decode_flac(flac, dtype="int16")
        assert sr == RATE and np.array_equal(pcm, ref)
    assert not (tmp_path / JOURNAL).exists()


def test_max_bytes_closes_shards_before_they_overflow(tmp_path):
    samples = make_samples(6)
    one = len(samples[0][1]) + 3 * 512 + 1024  # a sample's FLAC + JSON + headers, roughly
    manifest = write_all(tmp_path, samples, max_bytes=2 * one + 10240)
    assert len(manifest["shards"]) > 1
    for info in manifest["shards"]:
        assert info["bytes"] <= 2 * one + 2 * 10240  # the end-of-archive padding may add one record
    assert sum(s["num_samples"] for s in manifest["shards"]) == 6


def test_fixed_tar_headers_give_identical_bytes(tmp_path):
    samples = make_samples(4)
    write_all(tmp_path / "a", samples, max_samples=3)
    write_all(tmp_path / "b", samples, max_samples=3)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    with tarfile.open(tmp_path / "a" / "ds-train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [f"ds-clip_{i}.{ext}" for i in range(3) for ext in ("flac", "json")]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (946684800, 0, 0, "", "", 0o644)
    }


def test_error_inside_leaves_finished_shards_and_resumes_identically(tmp_path):
    samples = make_samples(7)
    skips = {1: ("a", "bad row: a"), 4: ("b", "bad row: b"), 5: ("c", "bad row: c")}
    reference = write_all(tmp_path / "ref", samples, skips, max_samples=2)

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(out, "ds", "train", RATE, max_samples=2) as w:
        for i, (s, flac) in enumerate(samples[:5]):
            if i in skips:
                w.skip(*skips[i])
            w.write(s, flac, cursor={"n": i + 1})
        raise RuntimeError("boom")
    names = sorted(p.name for p in out.iterdir())
    assert names == [JOURNAL, "ds-train-000000.tar", "ds-train-000001.tar"]  # sample 4's shard was dropped

    with ShardWriter(out, "ds", "train", RATE, max_samples=2) as w:
        assert w.resumed_shards == 2 and w.cursor == {"n": 4} and w.num_samples == 4
        assert w.skipped == [{"source_id": "a", "reason": "bad row: a"}]
        assert w.has_key("ds-clip_3") and not w.has_key("ds-clip_4")
        for i in range(w.cursor["n"], len(samples)):
            if i in skips:
                w.skip(*skips[i])
            w.write(*samples[i], cursor={"n": i + 1})
    assert read_manifest(out) == reference
    assert folder_bytes(out) == folder_bytes(tmp_path / "ref")


def test_resume_discards_what_the_journal_does_not_vouch_for(tmp_path):
    samples = make_samples(6)
    with pytest.raises(KeyboardInterrupt), ShardWriter(tmp_path, "ds", "train", RATE, max_samples=2) as w:
        for i, (s, flac) in enumerate(samples):
            w.write(s, flac, cursor={"n": i + 1})
        raise KeyboardInterrupt
    assert not (tmp_path / MANIFEST).exists()  # all three shards finished, but the writer was not closed
    journal = (tmp_path / JOURNAL).read_text().splitlines()
    # a kill while appending shard 2's line leaves it torn; shard 1 got corrupted on disk; a temp file remains
    (tmp_path / JOURNAL).write_text("\n".join(journal[:3]) + "\n" + journal[3][:25])
    (tmp_path / "ds-train-000003.tar.tmp").write_bytes(b"partial")
    shard1 = tmp_path / "ds-train-000001.tar"
    data = bytearray(shard1.read_bytes())
    data[700] ^= 0xFF
    shard1.write_bytes(bytes(data))

    with ShardWriter(tmp_path, "ds", "train", RATE, max_samples=2) as w:
        assert w.resumed_shards == 1 and w.cursor == {"n": 2}
        assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL, "ds-train-000000.tar"]
        assert len((tmp_path / JOURNAL).read_text().splitlines()) == 2  # header + shard 0
        for i in range(2, 6):
            w.write(*samples[i], cursor={"n": i + 1})
    assert read_manifest(tmp_path)["num_samples"] == 6


def test_resume_with_other_options_is_refused(tmp_path):
    samples = make_samples(3)
    with pytest.raises(ValueError), ShardWriter(tmp_path, "ds", "train", RATE, max_samples=2) as w:
        for s, flac in samples:
            w.write(s, flac)
        raise ValueError
    with pytest.raises(WriterError, match="samples_per_shard: was 2, now 3"):
        ShardWriter(tmp_path, "ds", "train", RATE, max_samples=3)


def test_refuses_to_overwrite(tmp_path):
    write_all(tmp_path / "done", make_samples(1))
    with pytest.raises(WriterError, match="already complete"):
        ShardWriter(tmp_path / "done", "ds", "train", RATE)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "ds-train-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(WriterError, match=r"no \.progress\.jsonl"):
        ShardWriter(tmp_path / "foreign", "ds", "train", RATE)


def test_rejects_bad_samples(tmp_path):
    (s, flac), (t, flac2) = make_samples(2)
    with ShardWriter(tmp_path, "ds", "train", RATE) as w:
        w.write(s, flac)
        with pytest.raises(WriterError, match="duplicate key 'ds-clip_0'"):
            w.write(s, flac)
        t.strong = [Region("late", 0.1, 9.0)]
        with pytest.raises(SchemaError, match=r"ds-clip_1: strong\[0\].offset 9.0 exceeds duration"):
            w.write(t, flac2)
        t.strong, t.split = [], "test"
        with pytest.raises(ValueError, match="do not match the writer's ds/train"):
            w.write(t, flac2)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["num_samples"] == 1


# -- a split written by several tasks ------------------------------------------------------------------------


def write_part(out_dir, part, samples, max_samples=2):
    """Task `part.task` writes its range of `samples` (entry i = sample i) and closes its part."""
    with ShardWriter(out_dir, "ds", "train", RATE, max_samples=max_samples, part=part) as w:
        for i in range(part.start, part.stop):
            w.write(*samples[i], cursor={"n": i + 1})


def test_partition_is_contiguous_and_balanced():
    parts = partition(10, 4)
    assert [(p.start, p.stop) for p in parts] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert [(p.start, p.stop) for p in partition(2, 3)] == [(0, 0), (0, 1), (1, 2)]
    assert partition(2, 3)[0].empty and not partition(2, 3)[1].empty
    with pytest.raises(ValueError, match="bad part: task 3 of 3"):
        Part(3, 3, 10)


def test_parts_merge_into_the_manifest_of_one_writer(tmp_path):
    """Three tasks' parts, merged, list the same samples, seconds and skips as one writer; names carry the task."""
    samples = make_samples(7)
    reference = write_all(tmp_path / "one", samples, max_samples=2)
    parts = partition(7, 3)
    out = tmp_path / "tasks"
    for part in reversed(parts):  # the order tasks finish in does not matter
        write_part(out, part, samples)
    assert sorted(p.name for p in out.iterdir()) == [
        ".lock-0000",
        ".lock-0001",
        ".lock-0002",
        ".part-0000.json",
        ".part-0001.json",
        ".part-0002.json",
        "ds-train-0000-000000.tar",
        "ds-train-0001-000000.tar",
        "ds-train-0002-000000.tar",
        "ds-train-0002-000001.tar",
    ]
    settings = {"samples_per_shard": 2, "max_shard_bytes": 1_000_000_000}
    merged = merge_parts(out, "ds", "train", RATE, settings, parts, {"note": "extra"})
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the bookkeeping is gone
    assert read_manifest(out) == merged and merged["note"] == "extra"
    assert [s["num_samples"] for s in merged["shards"]] == [2, 2, 2, 1]
    for k in ("num_samples", "total_seconds", "skipped", "settings", "dataset", "split", "sample_rate"):
        assert merged[k] == reference[k], k
    keys = []
    for info in merged["shards"]:
        with tarfile.open(out / info["name"]) as tar:
            keys += [m.name for m in tar]
    assert keys == [f"ds-clip_{i}.{ext}" for i in range(7) for ext in ("flac", "json")]


def test_merge_names_the_missing_tasks_and_writes_nothing(tmp_path):
    samples = make_samples(6)
    parts = partition(6, 3)
    write_part(tmp_path, parts[1], samples)
    with pytest.raises(PartsMissing, match=r"ds/train: task\(s\) 0, 2 of 3 have not finished") as e:
        merge_parts(tmp_path, "ds", "train", RATE, {"samples_per_shard": 2, "max_shard_bytes": 10**9}, parts)
    assert e.value.tasks == [0, 2] and not (tmp_path / MANIFEST).exists()
    with pytest.raises(WriterError, match="written with other options"):
        merge_parts(
            tmp_path, "ds", "train", RATE, {"samples_per_shard": 3, "max_shard_bytes": 10**9}, parts[1:2]
        )


def test_a_task_resumes_its_own_part_and_leaves_the_others_alone(tmp_path):
    samples = make_samples(8)
    part0 = partition(8, 2)[0]
    # task 1 is running (its temp shard exists) while task 0 is killed after one finished shard
    (tmp_path / "ds-train-0001-000000.tar.tmp").write_bytes(b"task 1 writing")
    with pytest.raises(KeyboardInterrupt), ShardWriter(tmp_path, "ds", "train", RATE, 2, part=part0) as w:
        for i in range(3):
            w.write(*samples[i], cursor={"n": i + 1})
        raise KeyboardInterrupt
    assert (tmp_path / ".progress-0000.jsonl").is_file() and not (tmp_path / ".part-0000.json").exists()
    (tmp_path / "ds-train-0000-000001.tar.tmp").write_bytes(b"what the kill left")
    with ShardWriter(tmp_path, "ds", "train", RATE, 2, part=part0) as w:
        assert w.resumed_shards == 1 and w.cursor == {"n": 2}
        assert not (tmp_path / "ds-train-0000-000001.tar.tmp").exists()  # its own leftover: dropped
        assert (tmp_path / "ds-train-0001-000000.tar.tmp").exists()  # task 1's: untouched
        for i in range(2, 4):
            w.write(*samples[i], cursor={"n": i + 1})
    assert read_part_manifest(tmp_path, 0)["num_samples"] == 4
    assert read_part_manifest(tmp_path, 0)["part"] == {"task": 0, "tasks": 2, "entries": 8}


def test_one_task_at_a_time_and_no_mixing_with_a_one_process_conversion(tmp_path):
    samples = make_samples(4)
    part0, part1 = partition(4, 2)
    first = ShardWriter(tmp_path, "ds", "train", RATE, 2, part=part0)
    with pytest.raises(WriterError, match=r"task 0 of ds/train is being written by pid \d+ on "):
        ShardWriter(tmp_path, "ds", "train", RATE, 2, part=part0)
    ShardWriter(tmp_path, "ds", "train", RATE, 2, part=part1).abort()  # another task runs beside it
    with pytest.raises(WriterError, match="is being converted in tasks"):
        ShardWriter(tmp_path, "ds", "train", RATE, 2)
    first.abort()
    write_part(tmp_path, part0, samples)
    with pytest.raises(WriterError, match=r"task 0 of .* is already complete"):
        ShardWriter(tmp_path, "ds", "train", RATE, 2, part=part0)
    with pytest.raises(
        WriterError, match=r"\.progress-0001\.jsonl belongs to a conversion with other options"
    ):
        ShardWriter(tmp_path, "ds", "train", RATE, 2, part=Part(1, 2, 5))  # task 1's journal: 4 entries
    one = tmp_path / "one"
    with pytest.raises(KeyboardInterrupt), ShardWriter(one, "ds", "train", RATE, 2) as w:
        w.write(*samples[0])
        raise KeyboardInterrupt
    with pytest.raises(WriterError, match="unfinished one-process conversion"):
        ShardWriter(one, "ds", "train", RATE, 2, part=part0)


def test_counts_over_samples_add_up_over_parts(tmp_path):
    samples = make_samples(4)
    parts = partition(4, 2)
    for part, counts in zip(parts, ({"Y{id}.wav": 2}, {"Y{id}.wav": 1, "{id}.flac": 1})):
        with ShardWriter(tmp_path, "ds", "train", RATE, max_samples=2, part=part) as w:
            w.extra_manifest.update({"namings": counts, "cut": part.task + 1})
            for i in range(part.start, part.stop):
                w.write(*samples[i])
    settings = {"samples_per_shard": 2, "max_shard_bytes": 1_000_000_000}
    merged = merge_parts(tmp_path, "ds", "train", RATE, settings, parts, summed=("namings", "cut"))
    assert merged["namings"] == {"Y{id}.wav": 3, "{id}.flac": 1} and merged["cut"] == 3
    assert sum_counts([1, 2], "x") == 3
    with pytest.raises(ValueError, match="x: expected ints or"):
        sum_counts([1, {"a": 1}], "x")
