"""python -m tools.verify: a sound split passes; corruption, manifest mismatches and leftovers fail."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from shards.convert import convert
from shards.sources import SOURCES
from tests.shards.fixtures import write_clotho
from tools.verify import main

ROOT = Path(__file__).resolve().parents[2]
# tests/ is not a package (and an installed dependency ships a top-level `tests`): load the builders by path.


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    write_clotho(base / "raw")
    result = convert(SOURCES["clotho"](base / "raw"), "development", base / "out", samples_per_shard=2)
    return result.out_dir


@pytest.fixture
def split_dir(converted, tmp_path):
    return Path(shutil.copytree(converted, tmp_path / "clotho" / "development"))


def manifest_of(d):
    return json.loads((d / "manifest.json").read_text())


def test_sound_split_passes(split_dir, capsys):
    assert main([str(split_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"OK {split_dir}: 3 samples in 2 shards, 0.00 h of audio"


def test_flipped_bytes_are_caught(split_dir, capsys):
    shard = split_dir / "clotho-development-000000.tar"
    data = bytearray(shard.read_bytes())
    for i in range(2000, 2064):  # inside the first FLAC member's frames
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    assert main([str(split_dir)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED {split_dir}: ")
    assert "clotho-development-000000.tar: sha256 differs from manifest.json (corrupted or changed)" in out
    assert "clotho-Santa_Motor.flac: cannot decode audio bytes" in out


def test_truncated_shard_counts_what_a_reader_keeps(split_dir, capsys):
    """A shard cut inside its 2nd sample: the 1st is read, the 2nd skipped, as the training/eval readers count."""
    shard = split_dir / "clotho-development-000000.tar"
    with tarfile.open(shard) as tar:
        second = tar.getmembers()[2]
    shard.write_bytes(shard.read_bytes()[: second.offset_data + 10])
    assert main([str(split_dir)]) == 1
    out = capsys.readouterr().out
    assert "read 2 of 3 expected samples intact, 1 skipped" in out.splitlines()[0]
    assert "clotho-development-000000.tar: unreadable tar after 1 samples" in out


def test_manifest_mismatches_are_caught(split_dir, capsys):
    manifest = manifest_of(split_dir)
    manifest["num_samples"] = 4
    manifest["shards"][1]["bytes"] += 512
    manifest["shards"][1]["num_samples"] = 2
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(split_dir)]) == 1
    out = capsys.readouterr().out
    assert "manifest.json: num_samples is 4, the shards hold 3" in out
    assert "clotho-development-000001.tar: 30720 bytes, manifest.json says 31232" in out
    assert "clotho-development-000001.tar: 1 samples, manifest.json says 2" in out


def test_schema_and_duration_problems_inside_a_rewritten_shard(split_dir, capsys):
    """A shard rebuilt with a lying JSON (and a matching checksum) still fails on its content."""
    name = "clotho-development-000001.tar"
    with tarfile.open(split_dir / name) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, payload in members:
            if m.name.endswith(".json"):
                meta = json.loads(payload)
                meta["duration"] = 5.0
                meta["strong"] = [{"text": "late", "onset": 3.0, "offset": 2.0}]
                payload = json.dumps(meta).encode()
                m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    (split_dir / name).write_bytes(buf.getvalue())
    manifest = manifest_of(split_dir)
    manifest["shards"][1].update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(split_dir)]) == 1
    out = capsys.readouterr().out
    assert (
        "clotho-cafe_ambience_u.json: sample clotho-cafe_ambience_u: strong[0] needs 0 <= onset < offset"
        in out
    )
    assert "sha256" not in out

    meta = json.loads(members[1][1])
    meta["duration"] = 5.0
    payload = json.dumps(meta).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(members[0][0], io.BytesIO(members[0][1]))
        members[1][0].size = len(payload)
        tar.addfile(members[1][0], io.BytesIO(payload))
    (split_dir / name).write_bytes(buf.getvalue())
    manifest["shards"][1].update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(split_dir)]) == 1
    out = capsys.readouterr().out
    assert "clotho-cafe_ambience_u.flac lasts 1.500000 s, its JSON says 5.0" in out
    assert "clotho-development-000001.tar: 5.000000 s of audio, manifest.json says 1.5" in out


def test_leftovers_and_unlisted_shards_are_caught(split_dir, capsys):
    (split_dir / "clotho-development-000002.tar.tmp").write_bytes(b"partial")
    shutil.copy(split_dir / "clotho-development-000001.tar", split_dir / "clotho-development-000007.tar")
    assert main([str(split_dir), "--max-problems", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    counts = "read 3 of 3 expected samples intact, 0 skipped"
    assert out[0] == f"FAILED {split_dir}: 2 problem(s); {counts}; 3 samples in 2 shards, 0.00 h of audio"
    assert out[1:] == [
        "  clotho-development-000002.tar.tmp: stray file left by an interrupted run",
        "  ... and 1 more",
    ]


def test_unfinished_and_missing_folders(tmp_path, capsys):
    (tmp_path / ".progress.jsonl").write_text("{}\n")
    assert main([str(tmp_path)]) == 1
    assert (
        "manifest.json: missing (conversion unfinished: rerun tools.convert to resume)"
        in capsys.readouterr().out
    )
    assert main([str(tmp_path / "nope")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"python -m tools.verify: error: {tmp_path / 'nope'} is not a folder"
    )


@pytest.fixture(scope="module")
def in_tasks(tmp_path_factory):
    """The same Clotho development split converted by 5 tasks and merged (shards named -TTTT-NNNNNN.tar)."""
    from shards.convert import convert as convert_part
    from shards.parts import ConvertOptions, merge_split, plan_split
    from shards.splitdir import write_plan

    base = tmp_path_factory.mktemp("verify-tasks")
    write_clotho(base / "raw")
    source, options = SOURCES["clotho"](base / "raw"), ConvertOptions(samples_per_shard=1)
    plan = plan_split(source, "development", base / "out", options, 5)
    write_plan(plan.out_dir, plan.record)
    for part in plan.todo:
        convert_part(source, "development", base / "out", **options.kwargs(), part=part)
    merge_split(source, "development", base / "out", options)
    return plan.out_dir


def test_split_converted_in_tasks_passes_and_workers_give_the_same_report(in_tasks, tmp_path, capsys):
    names = [s["name"] for s in manifest_of(in_tasks)["shards"]]
    expected = [
        "clotho-development-0000-000000",
        "clotho-development-0000-000001",
        "clotho-development-0001-000000",
    ]
    assert names == [f"{name}.tar" for name in expected]
    assert main([str(in_tasks), "--workers", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {in_tasks}: 3 samples in 3 shards")
    broken = Path(shutil.copytree(in_tasks, tmp_path / "clotho" / "development"))
    shard = broken / "clotho-development-0001-000000.tar"
    data = bytearray(shard.read_bytes())
    for i in range(1200, 1400):
        data[i] ^= 0x5A
    shard.write_bytes(bytes(data))
    shutil.copy(broken / "clotho-development-0000-000000.tar", broken / "clotho-development-0001-000009.tar")
    manifest = manifest_of(broken)
    manifest["shards"].append({**manifest["shards"][0], "name": "clotho-development-0001-000009.tar"})
    manifest["num_samples"] += 1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / ".part-0001.json").write_text("{}")
    reports = []
    for workers in ("1", "3"):
        assert main([str(broken), "--workers", workers, "--max-problems", "50"]) == 1
        reports.append(capsys.readouterr().out)
    assert reports[0] == reports[1]
    assert ".part-0001.json: stray file left by an unfinished conversion in tasks" in reports[0]
    assert "clotho-development-0001-000000.tar: sha256 differs" in reports[0]
    assert "clotho-development-0001-000009.tar: key 'clotho-Santa_Motor' appears more than once" in reports[0]


def test_unfinished_conversion_in_tasks_says_how_to_finish(tmp_path, capsys):
    (tmp_path / ".tasks.json").write_text('{"tasks": 2, "entries": 5}')
    assert main([str(tmp_path)]) == 1
    assert "rerun the same launch.convert command to complete it" in capsys.readouterr().out
