"""A split converted in tasks (shards.parts): the same content for every task count, and the refusals."""

from __future__ import annotations

import json
import tarfile

import pytest

from shards.convert import ConvertError, convert
from shards.parts import ConvertOptions, listing_keys, merge_split, plan_split
from shards.sources import SOURCES
from shards.sources.tacos import Tacos
from shards.splitdir import PartsMissing, write_plan
from tests.shards.fixtures import write_clotho, write_tacos

OPTIONS = ConvertOptions(samples_per_shard=1)


def in_tasks(source, split, out, tasks):
    """Plan, convert every part here (last task first), merge; returns the split folder."""
    plan = plan_split(source, split, out, OPTIONS, tasks)
    write_plan(plan.out_dir, plan.record)
    for part in reversed(plan.todo):
        convert(source, split, out, **OPTIONS.kwargs(), part=part)
    merge_split(source, split, out, OPTIONS)
    return plan.out_dir


def content(split_dir):
    manifest = json.loads((split_dir / "manifest.json").read_text())
    members = []
    for info in manifest.pop("shards"):
        with tarfile.open(split_dir / info["name"]) as tar:
            members += [(m.name, tar.extractfile(m).read()) for m in tar]
    return manifest, members


@pytest.mark.parametrize(
    ("name", "write", "split"), [("clotho", write_clotho, "development"), ("tacos", write_tacos, "train")]
)
def test_every_task_count_gives_the_one_process_content(tmp_path, name, write, split):
    """Bad files, bad rows and duplicate ids anywhere in the listing: skips, keys and regions do not move."""
    write(tmp_path / "raw")
    source = Tacos(tmp_path / "raw", test_size=2) if name == "tacos" else SOURCES[name](tmp_path / "raw")
    convert(source, split, tmp_path / "one", **OPTIONS.kwargs())
    reference = content(tmp_path / "one" / name / split)
    assert reference[0]["skipped"], "the fixture has entries that are skipped"
    entries, keys = listing_keys(source, split)
    for tasks in (1, 2, 3, entries, entries + 2):
        assert content(in_tasks(source, split, tmp_path / f"x{tasks}", tasks)) == reference, tasks
    assert {m.split(".")[0] for m, _ in reference[1]} <= set(keys.values())


def test_refusals_name_the_problem(tmp_path):
    write_clotho(tmp_path / "raw")
    source = SOURCES["clotho"](tmp_path / "raw")
    out = tmp_path / "out"
    plan = plan_split(source, "development", out, OPTIONS, 3)
    write_plan(plan.out_dir, plan.record)
    convert(source, "development", out, **OPTIONS.kwargs(), part=plan.parts[0])
    with pytest.raises(PartsMissing, match=r"task\(s\) 1, 2 of 3 have not finished"):
        merge_split(source, "development", out, OPTIONS)
    with pytest.raises(ConvertError, match="tasks: was 3, now 2"):
        plan_split(source, "development", out, OPTIONS, 2)
    with pytest.raises(ConvertError, match="samples_per_shard: was 1, now 2"):
        plan_split(source, "development", out, ConvertOptions(samples_per_shard=2), 3)
    again = plan_split(source, "development", out, OPTIONS, 3)
    assert again.recorded and [p.task for p in again.todo] == [1, 2]
    with pytest.raises(ConvertError, match="cannot be combined"):
        convert(source, "development", out, **OPTIONS.kwargs(), part=plan.parts[1], limit=1)
    # The listing shrinks: a task that cannot reach its range, and the merge, say the source changed.
    captions = tmp_path / "raw" / "clotho_csv_files" / "clotho_captions_development.csv"
    lines = captions.read_text(encoding="utf-8").splitlines(keepends=True)
    captions.write_text("".join(lines[:-3]), encoding="utf-8")
    with pytest.raises(ConvertError, match="the source changed since the conversion was planned"):
        convert(source, "development", out, **OPTIONS.kwargs(), part=plan.parts[2])
    convert(source, "development", out, **OPTIONS.kwargs(), part=plan.parts[1])
    with pytest.raises(ConvertError, match="now lists 7 entries, 10 when it started"):
        merge_split(source, "development", out, OPTIONS)
