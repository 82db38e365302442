"""The conversion engine on real files: the releases' own rows, round trips per dataset, skips, --check's
agreement with the conversion, segmentation, determinism, resume, the split lock, the caption cap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from shards.audio import decode_flac, read_audio
from shards.check import check
from shards.convert import ConvertError, convert, lock_path
from shards.encode import Job, convert_item, cut_regions, run_job
from shards.schema import Region, Sample
from shards.sources import SOURCES, Item
from shards.sources.audiosetcaps import AudioSetCaps
from shards.sources.base import Candidate, resolve_audio
from shards.sources.tacos import Tacos
from shards.sources.wavcaps import WavCaps
from shards.splitdir import JOURNAL, MANIFEST
from shards.verify import verify_split
from tests.shards.fixtures import (
    write_audio,
    write_audiocaps,
    write_audioset_strong,
    write_audiosetcaps,
    write_bad,
    write_clotho,
    write_tacos,
    write_wavcaps,
)
from tests.shards.release_fixtures import LAYERS, tacos_fixes

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {
    "clotho": write_clotho,
    "audiocaps": write_audiocaps,
    "wavcaps": write_wavcaps,
    "audiosetcaps": write_audiosetcaps,
    "audioset-strong": write_audioset_strong,
}
MAX_SECONDS = {"wavcaps": 1.0}  # the fixtures' expectations for wavcaps are for 1 s segments


def read_split(split_dir: Path) -> list[tuple[Sample, np.ndarray]]:
    """Every (sample, int16 audio) of a split, in manifest and tar order."""
    manifest = json.loads((split_dir / MANIFEST).read_text())
    out = []
    for info in manifest["shards"]:
        with tarfile.open(split_dir / info["name"]) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for name in files:
            if name.endswith(".json"):
                sample = Sample.from_json(files[name])
                pcm, _ = decode_flac(files[name[:-5] + ".flac"], dtype="int16")
                out.append((sample, pcm))
    return out


def folder_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_trip(tmp_path, name):
    expect = BUILDERS[name](tmp_path / "raw")
    source = SOURCES[name](tmp_path / "raw")
    max_seconds = MAX_SECONDS.get(name, 60.0)
    for split, want in expect.items():
        result = convert(source, split, tmp_path / "out", samples_per_shard=2, max_seconds=max_seconds)
        split_dir = tmp_path / "out" / name / split
        assert result.status == "converted" and result.out_dir == split_dir
        assert {s["source_id"]: s["reason"].split(":")[0] for s in result.skipped} == want.skipped
        samples = read_split(split_dir)
        counts: dict[str, int] = {}
        for sample, pcm in samples:
            counts[sample.source_id] = counts.get(sample.source_id, 0) + 1
            assert sample.dataset == name and sample.split == split and sample.sample_rate == 32000
            assert len(pcm) == round(sample.duration * 32000)
        assert counts == want.samples
        assert verify_split(split_dir).problems == []
        items: dict[str, Item] = {}
        for e in source.entries(split):
            if isinstance(e, Item):
                items.setdefault(e.source_id, e)
        for sample, pcm in samples:
            item = items[sample.source_id]
            assert sample.captions == list(item.captions) and sample.meta.items() >= item.meta.items()
            if "segment" not in sample.meta:  # whole clip: the decoded, downmixed, resampled source
                ref, _ = read_audio(resolve_audio(item).path, 32000)
                assert np.abs(pcm / 32767.0 - ref).max() < 2e-4
                assert sample.strong == cut_regions(item.strong, 0.0, len(ref) / 32000)


def test_tacos_round_trip(tmp_path):
    files = write_tacos(tmp_path / "raw")
    source = Tacos(tmp_path / "raw", test_size=2)
    results = {s: convert(source, s, tmp_path / "out", samples_per_shard=3) for s in source.splits}
    samples = [s for split in source.splits for s, _ in read_split(tmp_path / "out" / "tacos" / split)]
    # a clip whose only region is reversed keeps its clip caption; the region is dropped and listed
    assert sorted(s.source_id for s in samples) == sorted([*files["good"], files["bad"][0]])
    skipped = {s["source_id"]: s["reason"].split(":")[0] for r in results.values() for s in r.skipped}
    assert skipped == dict(zip(files["bad"][1:], ["missing audio", "bad row"]))
    first = next(s for s in samples if s.source_id == files["good"][0])
    assert first.duration == pytest.approx(1.5, abs=0.01)  # the MP3 decodes to its length
    assert first.strong[0] == Region("a dog sound", 0.1, 0.9, {"annotator": "ann1"})
    assert first.strong[1].text == "background hum" and first.strong[1].offset == pytest.approx(
        first.duration, abs=0.01
    )
    test = results["test"]
    assert test.num_samples + len(test.skipped) == 2  # --test-size 2
    assert json.loads((test.out_dir / MANIFEST).read_text())["split_method"].startswith("stratified")


# ---------------------------------------------------------------------------------------------------------
# The releases' own rows: exact samples, exact skips, and --check agrees
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYERS))
def test_release_rows_become_exactly_their_samples_and_check_agrees(tmp_path, name):
    """Every row with audio becomes a sample with the release's id, captions and regions; the skipped
    list is exactly the clips without audio; the naming counts are right; --check's counts are the
    conversion's (found = written, missing = skipped for missing audio, same namings, same region fixes)."""
    release = LAYERS[name](tmp_path / "raw")
    for split, want in release.splits.items():
        checked = check(release.source(name, split), split, workers=2)
        result = convert(release.source(name, split), split, tmp_path / "out", samples_per_shard=4, workers=2)
        manifest = json.loads((result.out_dir / MANIFEST).read_text())
        samples = {s.source_id: s for s, _ in read_split(result.out_dir)}
        assert list(samples) == list(want.clips)
        for source_id, clip in want.clips.items():
            sample = samples[source_id]
            assert sample.captions == clip.captions
            assert [r.text for r in sample.strong] == [t for t, _, _ in clip.strong]
            for region, (_, onset, offset) in zip(sample.strong, clip.strong):
                assert region.onset == onset
                assert region.offset == pytest.approx(min(offset, sample.duration), abs=1e-6)
            assert {k: sample.meta.get(k) for k in clip.meta} == clip.meta
        assert {s["source_id"]: s["reason"].split(":")[0] for s in result.skipped} == want.skipped
        assert manifest["audio_namings"] == want.namings() == result.audio_namings
        assert verify_split(result.out_dir).problems == []

        assert checked.found == len(samples) and checked.missing == len(want.skipped)
        assert checked.listed == result.num_samples + len(result.skipped)
        assert checked.skipped == [s for s in result.skipped if not s["reason"].startswith("missing audio")]
        assert checked.audio_namings == manifest["audio_namings"]
        assert checked.extra.get("region_fixes") == manifest.get("region_fixes")
        assert lock_path(result.out_dir).is_file()  # beside the split folder, which holds shards + manifest
        assert {p.suffix for p in result.out_dir.iterdir()} == {".tar", ".json"}
    if name == "tacos":
        for split, fixes in tacos_fixes().items():
            manifest = json.loads((tmp_path / "out" / "tacos" / split / MANIFEST).read_text())
            assert [(f["source_id"], f["action"]) for f in manifest["region_fixes"]] == fixes


@pytest.mark.parametrize("name", list(BUILDERS))
def test_check_counts_equal_what_the_conversion_writes_and_skips(tmp_path, name):
    """With bad rows, duplicates, blacklists and broken audio: found = written clips + audio failures,
    missing = missing-audio skips, listing skips = the other skips, nothing written by --check."""
    expect = BUILDERS[name](tmp_path / "raw")
    for split in expect:
        checked = check(SOURCES[name](tmp_path / "raw"), split)
        assert not (tmp_path / "out" / SOURCES[name].name / split).exists()  # --check writes nothing
        result = convert(
            SOURCES[name](tmp_path / "raw"), split, tmp_path / "out", max_seconds=MAX_SECONDS.get(name, 60.0)
        )
        written = {s.source_id for s, _ in read_split(result.out_dir)}
        reasons = [s["reason"].split(":")[0] for s in result.skipped]
        audio_failures = sum(r in ("empty audio", "undecodable audio", "truncated audio") for r in reasons)
        listing_skips = [s for s in result.skipped if s["reason"].split(":")[0] not in AUDIO_REASONS]
        assert checked.found == len(written) + audio_failures
        assert checked.missing == reasons.count("missing audio")
        assert checked.skipped == listing_skips
        assert checked.listed == len(written) + len(result.skipped)
        assert sum(checked.audio_namings.values()) == checked.found == sum(result.audio_namings.values())


AUDIO_REASONS = ("missing audio", "empty audio", "undecodable audio", "truncated audio")


def test_long_file_is_segmented_with_regions_cut(tmp_path):
    path = write_audio(tmp_path / "long one.wav", 3.3)
    regions = (
        Region("crosses a boundary", 0.5, 1.5),
        Region("a sliver each side", 0.95, 1.05),
        Region("inside the third", 2.2, 2.6),
        Region("in the dropped tail", 3.1, 3.2),
    )
    item = Item("long one.wav", (Candidate(path, "x"),), ("a long recording",), regions, {"author": "x"})
    samples = convert_item(Job(item, "ds-long_one", "ds", "train", 16000, 1.0, tmp_path))
    assert [s.key for s, _ in samples] == ["ds-long_one-seg000", "ds-long_one-seg001", "ds-long_one-seg002"]
    assert [s.meta["segment"] for s, _ in samples] == [{"index": i, "start": float(i)} for i in range(3)]
    assert [[(r.text, r.onset, r.offset) for r in s.strong] for s, _ in samples] == [
        [("crosses a boundary", 0.5, 1.0)],
        [("crosses a boundary", 0.0, 0.5)],
        [("inside the third", 0.2, 0.6)],
    ]
    audio = np.concatenate([decode_flac(flac)[0] for _, flac in samples])
    whole, _ = read_audio(path, 16000)
    assert all(s.duration == 1.0 for s, _ in samples)
    np.testing.assert_allclose(audio, whole[: len(audio)], atol=2e-4)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: write_bad(p.with_suffix(".flac"), "truncated"), "truncated audio"),
        (lambda p: write_bad(p.with_suffix(".mp3"), "truncated"), "truncated audio"),
        (lambda p: write_bad(p.with_suffix(".wav"), "truncated"), "truncated audio"),
        (lambda p: write_bad(p.with_suffix(".wav"), "garbage"), "undecodable audio"),
        (lambda p: write_bad(p.with_suffix(".flac"), "empty"), "empty audio"),
        (lambda p: p.with_suffix(".flac"), "missing audio"),
    ],
)
def test_bad_audio_becomes_a_reason(tmp_path, make, reason):
    path = make(tmp_path / "clip")
    item = Item("clip", (Candidate(path, "{id}"),), ("caption",))
    samples, error, naming = run_job(Job(item, "ds-clip", "ds", "train", 16000, 60.0, tmp_path))
    assert samples == [] and error.startswith(f"{reason}: ") and "clip." in error
    assert naming == (None if reason == "missing audio" else "{id}")  # found audio counts, even if broken
    assert str(tmp_path) not in error  # reasons name files relative to --src


def test_workers_and_reruns_give_identical_shards(tmp_path):
    write_wavcaps(tmp_path / "raw")
    runs = []
    for i, workers in enumerate((1, 2, 1)):
        out = tmp_path / f"out{i}"
        convert(
            WavCaps(tmp_path / "raw"), "FreeSound", out, samples_per_shard=2, max_seconds=1.0, workers=workers
        )
        runs.append(folder_bytes(out / "wavcaps" / "FreeSound"))
    assert runs[0] == runs[1] == runs[2]
    again = convert(
        WavCaps(tmp_path / "raw"), "FreeSound", tmp_path / "out0", samples_per_shard=2, max_seconds=1.0
    )
    assert again.status == "complete" and again.num_samples == 5


def test_key_collision_and_limit(tmp_path):
    for stem in ("555", "555-seg001"):
        write_audio(
            tmp_path / "Audio" / "FreeSound" / f"{stem}.flac", 2.5 if stem == "555" else 1.0, rate=32000
        )
    (tmp_path / "json_files" / "FreeSound").mkdir(parents=True)
    (tmp_path / "json_files" / "blacklist").mkdir()
    (tmp_path / "json_files" / "blacklist" / "blacklist_exclude_test_ac.json").write_text("{}")
    data = [
        {"id": "555", "caption": "long"},
        {"id": "555-seg001", "caption": "an id that looks like a segment"},
    ]
    (tmp_path / "json_files" / "FreeSound" / "fsd_final.json").write_text(json.dumps({"data": data}))
    result = convert(WavCaps(tmp_path), "FreeSound", tmp_path / "out", max_seconds=1.0)
    assert result.num_samples == 3
    assert result.skipped == [
        {
            "source_id": "555-seg001",
            "reason": "key collision: key 'wavcaps-555-seg001' is already taken by another id",
        }
    ]
    limited = convert(WavCaps(tmp_path), "FreeSound", tmp_path / "limited", max_seconds=1.0, limit=2)
    assert limited.num_samples == 2 and limited.skipped == []


# Runs a conversion that stalls (forever) when its listing reaches entry STALL, after touching MARK; the
# test SIGKILLs it there, so what the killed run leaves is exactly known.
STALLING_RUN = """
import sys, time
from pathlib import Path
from shards.convert import convert
from shards.sources import get_source

name, split, src, out, mark, stall, workers, per_shard, max_seconds, max_text = sys.argv[1:]
source = get_source(name)(Path(src))
listing = source.entries

def stalling(split):
    for i, entry in enumerate(listing(split)):
        if i == int(stall):
            Path(mark).touch()
            time.sleep(600)
        yield entry

source.entries = stalling
options = {"samples_per_shard": int(per_shard), "max_seconds": float(max_seconds), "workers": int(workers)}
convert(source, split, Path(out), max_text_chars=int(max_text), **options)
"""


def start_stalled(tmp_path, name, split, stall, workers, per_shard, max_seconds, max_text=2000):
    """A conversion subprocess stalled at listing entry `stall` (its own process group)."""
    mark = tmp_path / "stalled"
    mark.unlink(missing_ok=True)
    args = [
        name,
        split,
        tmp_path / "raw",
        tmp_path / "out",
        mark,
        stall,
        workers,
        per_shard,
        max_seconds,
        max_text,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLING_RUN, *map(str, args)], cwd=ROOT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, "the conversion ended before it stalled"
            assert time.monotonic() < deadline, "the conversion never stalled"
            time.sleep(0.02)
    except BaseException:
        kill(proc)
        raise
    return proc


def kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
    proc.wait()


def run_and_kill(tmp_path, name, split, stall, workers, per_shard, max_seconds, max_text=2000):
    kill(start_stalled(tmp_path, name, split, stall, workers, per_shard, max_seconds, max_text))
    return tmp_path / "out" / SOURCES[name].name / split


@pytest.mark.parametrize(
    ("name", "split", "stall", "workers", "per_shard", "max_seconds", "max_text"),
    [("clotho", "development", 6, 1, 2, 60.0, 30), ("wavcaps", "FreeSound", 5, 2, 3, 1.0, 2000)],
)
def test_resume_after_kill_matches_an_uninterrupted_run(
    tmp_path, name, split, stall, workers, per_shard, max_seconds, max_text
):
    """Shards and manifest (skips, naming counts, truncation counts included) as from one run."""
    BUILDERS[name](tmp_path / "raw")
    options = {"samples_per_shard": per_shard, "max_seconds": max_seconds, "max_text_chars": max_text}
    reference = convert(SOURCES[name](tmp_path / "raw"), split, tmp_path / "ref", **options)
    assert sum(reference.audio_namings.values()) > 0
    assert reference.texts_truncated == (15 if name == "clotho" else 0)  # 3 clips x 5 captions over 30 chars
    split_dir = run_and_kill(tmp_path, name, split, stall, workers, per_shard, max_seconds, max_text)

    left = sorted(p.name for p in split_dir.iterdir())
    assert MANIFEST not in left and JOURNAL in left
    assert any(n.endswith(".tar.tmp") for n in left)  # killed in the middle of a shard
    cursor = json.loads((split_dir / JOURNAL).read_text().splitlines()[-1])["cursor"]
    if name == "wavcaps":
        assert cursor["done"] == 2  # killed inside the segments of one recording

    resumed = convert(SOURCES[name](tmp_path / "raw"), split, tmp_path / "out", **options)
    assert resumed.status == "resumed" and resumed.resumed_shards >= 1
    assert folder_bytes(split_dir) == folder_bytes(reference.out_dir)
    assert resumed.skipped == reference.skipped


def test_resume_refuses_a_changed_source(tmp_path):
    write_clotho(tmp_path / "raw")
    split_dir = run_and_kill(tmp_path, "clotho", "development", 6, 1, 2, 60.0)
    captions = tmp_path / "raw" / "clotho_csv_files" / "clotho_captions_development.csv"
    captions.write_text(captions.read_text().replace("rain, heavy (2).wav", "renamed.wav"))
    with pytest.raises(
        ConvertError, match=r"source changed .* entry #1 is 'renamed\.wav', was 'rain, heavy \(2\)\.wav'"
    ):
        convert(SOURCES["clotho"](tmp_path / "raw"), "development", tmp_path / "out", samples_per_shard=2)
    assert (split_dir / JOURNAL).exists()  # nothing was thrown away
    shutil.rmtree(split_dir)
    fresh = convert(SOURCES["clotho"](tmp_path / "raw"), "development", tmp_path / "out", samples_per_shard=2)
    assert fresh.status == "converted" and fresh.num_samples == 2  # renamed.wav has no audio file
    assert {
        "source_id": "renamed.wav",
        "reason": "missing audio: clotho_audio_files/development/renamed.wav",
    } in (fresh.skipped)


def test_cut_regions_drops_slivers_but_keeps_short_whole_regions():
    regions = [Region("short", 0.30, 0.35), Region("cut", 0.95, 1.5), Region("outside", 2.0, 3.0)]
    assert cut_regions(regions, 0.0, 1.0) == [Region("short", 0.3, 0.35)]
    assert cut_regions(regions, 1.0, 2.0) == [Region("cut", 0.0, 0.5)]


def test_a_second_conversion_of_a_split_is_refused_and_a_killed_one_blocks_nothing(tmp_path):
    write_clotho(tmp_path / "raw")
    reference = convert(
        SOURCES["clotho"](tmp_path / "raw"), "development", tmp_path / "ref", samples_per_shard=2
    )
    proc = start_stalled(tmp_path, "clotho", "development", 6, 1, 2, 60.0)
    try:
        lock = tmp_path / "out" / "clotho" / ".development.lock"
        with pytest.raises(
            ConvertError, match=rf"another conversion \(pid {proc.pid} on .*, holding {lock}\)"
        ):
            convert(SOURCES["clotho"](tmp_path / "raw"), "development", tmp_path / "out", samples_per_shard=2)
        other = convert(
            SOURCES["clotho"](tmp_path / "raw"), "validation", tmp_path / "out", samples_per_shard=2
        )
        assert other.status == "converted"  # other splits are not locked
    finally:
        kill(proc)
    resumed = convert(
        SOURCES["clotho"](tmp_path / "raw"), "development", tmp_path / "out", samples_per_shard=2
    )
    assert resumed.status == "resumed"  # the killed run's lock went with it
    assert folder_bytes(resumed.out_dir) == folder_bytes(reference.out_dir)


def test_long_captions_and_region_texts_are_cut_and_counted(tmp_path):
    """A 3 MB caption becomes 2,000 characters (the default cap); region texts are capped too."""
    write_audiosetcaps(tmp_path / "raw")
    huge = "A dog barks and " * 200_000
    with (tmp_path / "raw" / "Dataset" / "VGGSound_AudioSetCaps_caption.csv").open(
        "a", encoding="utf-8"
    ) as f:
        f.write(f"long_000001,{huge}\r\n")
    write_audio(tmp_path / "raw" / "audio" / "vggsound" / "long_000001.wav", 0.5)
    result = convert(AudioSetCaps(tmp_path / "raw"), "vggsound", tmp_path / "out")
    samples = {s.source_id: s for s, _ in read_split(result.out_dir)}
    assert samples["long_000001"].captions == [huge[:2000].rstrip()]
    assert samples["v_id-1_000030"].captions == ["Engine hum"]
    assert result.texts_truncated == 1
    assert json.loads((result.out_dir / MANIFEST).read_text())["texts_truncated"] == 1

    release = LAYERS["tacos"](tmp_path / "tacos")
    result = convert(Tacos(release.root), "train", tmp_path / "out", max_text_chars=20)
    texts = [
        t for c in release.splits["train"].clips.values() for t in (*c.captions, *(r[0] for r in c.strong))
    ]
    assert result.texts_truncated == sum(len(t) > 20 for t in texts) > 0
    for sample, _ in read_split(result.out_dir):
        assert all(len(t) <= 20 for t in (*sample.captions, *(r.text for r in sample.strong)))
