"""One split converted by several tasks: plan, per-task conversion, merge (the library side of launch.convert).

    plan = plan_split(source, "development", out, options, tasks=16)       # lists the entries, writes nothing
    write_plan(plan.out_dir, plan.record)                                   # before the first task starts
    convert(source, "development", out, **options.kwargs(), part=plan.parts[i], workers=K)   # task i
    merge_split(source, "development", out, options)                        # -> manifest.json

The listing is cut into contiguous ranges, one per task (task i: entries [i*M//N, (i+1)*M//N) of M), so
task 0's shards, then task 1's, ... hold the samples in the order of a one-process conversion and only
the shard boundaries differ. Every task allocates keys over the whole listing before its range, so keys,
duplicate-id skips and the manifest's extra fields (computed at the merge from a full listing) are those
of a one-process conversion too. The same N gives byte-identical shards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.convert import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_MAX_SHARD_BYTES,
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SAMPLES_PER_SHARD,
    JOURNAL,
    ConvertError,
    conversion_settings,
)
from shards.schema import KeyAllocator
from shards.sources.base import Item, Source
from shards.splitdir import (
    DirLock,
    Part,
    describe_difference,
    merge_parts,
    part_lock,
    partition,
    read_manifest,
    read_part_manifest,
    read_plan,
    remove_part_files,
)

SUMMED_FIELDS: tuple[str, ...] = ("audio_namings", "texts_truncated")
"""Manifest fields a conversion counts over its samples (int or {name: int}); the merge adds up the parts'."""


@dataclass(frozen=True)
class ConvertOptions:
    """The conversion options every task of a split shares (tools.convert's flags of the same names)."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    max_seconds: float = DEFAULT_MAX_SECONDS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of shards.convert.convert."""
        return asdict(self)

    def writer_settings(self, source: Source) -> dict[str, Any]:
        """The `settings` a manifest of these options carries (as a one-process conversion writes them)."""
        settings = conversion_settings(source, self.max_seconds, None, self.max_text_chars)
        return {
            "samples_per_shard": self.samples_per_shard,
            "max_shard_bytes": self.max_shard_bytes,
            **settings,
        }


@dataclass
class SplitPlan:
    """Where one split stands: complete, or the parts still to convert."""

    dataset: str
    split: str
    out_dir: Path
    tasks: int
    entries: int = 0
    complete: bool = False
    parts: list[Part] = field(default_factory=list)
    todo: list[Part] = field(default_factory=list)
    """Parts over at least one entry whose part manifest is not written yet and that nobody is converting."""
    running: dict[int, str] = field(default_factory=dict)
    """Tasks whose lock is held right now (a run of an earlier submission): task -> "pid N on HOST"."""
    record: dict[str, Any] = field(default_factory=dict)
    """What `.tasks.json` holds for this plan."""
    recorded: bool = False
    """True when `.tasks.json` exists already (a rerun)."""


def listing_keys(source: Source, split: str) -> tuple[int, dict[str, str]]:
    """(number of entries, source id -> key) of a split's listing, as shards.convert allocates them."""
    allocate = KeyAllocator()
    keys: dict[str, str] = {}
    count = 0
    for entry in source.entries(split):
        count += 1
        if isinstance(entry, Item) and entry.source_id not in keys:
            keys[entry.source_id] = allocate(source.name, entry.source_id)
    return count, keys


def count_entries(source: Source, split: str) -> int:
    """Entries the split lists (metadata only; raises SourceError for a wrong layout)."""
    return sum(1 for _ in source.entries(split))


def _check_finished(out_dir: Path, manifest: dict[str, Any], options: ConvertOptions, source: Source) -> None:
    expected = {"sample_rate": options.sample_rate, "settings": options.writer_settings(source)}
    found = {k: manifest.get(k) for k in expected}
    if found != json.loads(json.dumps(expected)):
        raise ConvertError(
            f"{out_dir} already holds a finished conversion with other options "
            f"({describe_difference(found, expected)}); delete that folder to convert again"
        )


def plan_split(source: Source, split: str, out: str | Path, options: ConvertOptions, tasks: int) -> SplitPlan:
    """Where `split` stands for a conversion in `tasks` tasks; ConvertError if the folder holds another one."""
    if split not in source.splits:
        raise ConvertError(
            f"unknown split {split!r} for {source.name}; expected one of {', '.join(source.splits)}"
        )
    if tasks < 1:
        raise ConvertError(f"tasks must be >= 1, got {tasks}")
    out_dir = Path(out) / source.name / split
    plan = SplitPlan(source.name, split, out_dir, tasks)
    manifest = read_manifest(out_dir)
    if manifest is not None:
        _check_finished(out_dir, manifest, options, source)
        plan.complete = True
        plan.entries = -1
        return plan
    plan.entries = count_entries(source, split)
    plan.record = {
        "dataset": source.name,
        "split": split,
        "sample_rate": options.sample_rate,
        "settings": options.writer_settings(source),
        "tasks": tasks,
        "entries": plan.entries,
    }
    found = read_plan(out_dir) if out_dir.is_dir() else None
    if found is not None:
        expected = json.loads(json.dumps(plan.record))
        if found != expected:
            raise ConvertError(
                f"{out_dir} is being converted with other options or from another listing "
                f"({describe_difference(found, expected)}); rerun with the options it was started with, or "
                f"delete that folder to start over"
            )
        plan.recorded = True
    elif (out_dir / JOURNAL).exists():
        raise ConvertError(
            f"{out_dir} holds an unfinished one-process conversion ({JOURNAL}); finish it with "
            f"`python -m tools.convert`, or delete that folder to convert it in tasks"
        )
    plan.parts = partition(plan.entries, tasks)
    for part in plan.parts:
        if part.empty or read_part_manifest(out_dir, part.task) is not None:
            continue
        holder = DirLock(out_dir / part_lock(part.task), "").holder() if out_dir.is_dir() else None
        if holder is None:
            plan.todo.append(part)
        else:
            plan.running[part.task] = holder
    return plan


def merge_split(source: Source, split: str, out: str | Path, options: ConvertOptions) -> dict[str, Any]:
    """Merge the finished parts of `split` into its manifest.json (a finished split is returned as is).

    Raises PartsMissing (naming the tasks) while parts are missing, ConvertError when the folder holds no
    conversion in tasks or the source lists other entries than planned.
    """
    out_dir = Path(out) / source.name / split
    manifest = read_manifest(out_dir)
    if manifest is not None:
        _check_finished(out_dir, manifest, options, source)
        remove_part_files(out_dir)  # a merge killed between writing manifest.json and cleaning up
        return manifest
    plan = read_plan(out_dir) if out_dir.is_dir() else None
    if plan is None:
        raise ConvertError(f"{out_dir}: nothing to merge (no conversion in tasks was planned there)")
    settings = options.writer_settings(source)
    if (
        plan.get("settings") != json.loads(json.dumps(settings))
        or plan.get("sample_rate") != options.sample_rate
    ):
        raise ConvertError(
            f"{out_dir} is being converted with other options than these; rerun the same command"
        )
    count, keys = listing_keys(source, split)
    if count != plan["entries"]:
        raise ConvertError(
            f"the source changed since the conversion was planned: {source.name}/{split} now lists {count} "
            f"entries, {plan['entries']} when it started; delete {out_dir} to convert again"
        )
    parts = partition(plan["entries"], plan["tasks"])
    extra = source.manifest_extra(split, keys)
    return merge_parts(
        out_dir, source.name, split, options.sample_rate, settings, parts, extra, SUMMED_FIELDS
    )
