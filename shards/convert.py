"""The conversion engine: a source's entries -> decoded, resampled, segmented FLAC samples -> shards.

    result = convert(Clotho(src), "development", out, sample_rate=32000, workers=4)

The main process lists entries (metadata only), allocates keys, drops duplicate ids and writes shards
in listing order; worker processes run shards.encode.convert_item (decode, downmix, resample, cut into
``max_seconds`` segments, encode FLAC), a bounded number of items ahead. Bad audio becomes a `skipped`
entry, never a crash.

Resume: each finished shard's journal line carries a cursor ``{"entries": n, "done": k, "index": i,
"id": source_id, "namings": {...}, "truncated": t}``: the first n entries are fully written and k samples
of entry n already are; the counts are those of the entries before the cursor. A rerun re-lists the
entries without decoding the first n, checks that entry i is still `id` (else the source changed), drops
the first k samples of entry n and goes on, so shards and manifest come out exactly as from an
uninterrupted run.

One conversion at a time per split: ``OUT/DATASET/.SPLIT.lock`` (beside the split folder, so the folder
holds only shards and manifest) is held with flock while a run writes; the OS releases it when that
process ends, however it ends. The work on one item (decode, resample, segment, encode) is shards.encode;
shards.check lists and resolves a split exactly as :func:`convert` would, decoding and writing nothing.

In tasks (launch.convert): ``convert(..., part=Part(i, N, entries))`` converts only the entries
[start, stop) of the listing (keys are still allocated over the whole listing before them, so they are
those of a one-process run), holds its task's lock instead of the split's and finishes with a part
manifest; :mod:`shards.parts` merges the parts.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards.encode import Job, Outcome, cap_texts, run_job
from shards.schema import KeyAllocator
from shards.sources.base import Item, Skip, Source
from shards.splitdir import (
    JOURNAL,
    TMP_SUFFIX,
    DirLock,
    LockHeld,
    Part,
    describe_difference,
    read_manifest,
    read_part_manifest,
)
from shards.writer import ShardWriter

DEFAULT_SAMPLE_RATE = 32000
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_MAX_SHARD_BYTES = 1_000_000_000
DEFAULT_MAX_TEXT_CHARS = 2000
"""Captions and region texts longer than this (characters) are cut to it and counted in the manifest."""
LOCK_SUFFIX = ".lock"
IN_FLIGHT_PER_WORKER = 2
"""Items submitted ahead per worker process: keeps workers busy without queueing a whole listing."""


class ConvertError(RuntimeError):
    """The conversion cannot run as asked (wrong split, output folder from other options, source changed)."""


@dataclass
class ConvertResult:
    dataset: str
    split: str
    out_dir: Path
    status: str
    """'converted', 'resumed' (continued an interrupted run) or 'complete' (nothing left to do)."""
    num_samples: int
    num_shards: int
    total_seconds: float
    skipped: list[dict[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    resumed_shards: int = 0
    audio_namings: dict[str, int] = field(default_factory=dict)
    """How many clips' audio was found under each naming (found: written or failed to decode)."""
    texts_truncated: int = 0
    region_fixes: int = 0

    def skip_counts(self) -> Counter[str]:
        """Skips per reason category (the text before the first ':')."""
        return Counter(s["reason"].split(":", 1)[0] for s in self.skipped)


# ---------------------------------------------------------------------------------------------------------
# Ordered, bounded parallel map
# ---------------------------------------------------------------------------------------------------------

Task = tuple[int, Item | Skip, Job | None]
Done = tuple[int, Item | Skip, Job | None, Outcome | None]


def ordered_results(tasks: Iterator[Task], workers: int) -> Iterator[Done]:
    """Run the tasks' jobs with `workers` processes (in-process for 1), yielding results in task order.

    At most IN_FLIGHT_PER_WORKER x workers tasks are in flight, so a listing of millions never sits in memory.
    """
    if workers <= 1:
        for index, entry, job in tasks:
            yield index, entry, job, run_job(job) if job else None
        return
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    window: deque[tuple[Task, Future | None]] = deque()
    try:
        for task in tasks:
            window.append((task, executor.submit(run_job, task[2]) if task[2] else None))
            while len(window) >= IN_FLIGHT_PER_WORKER * workers:
                yield _pop(window)
        while window:
            yield _pop(window)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _pop(window: deque[tuple[Task, Future | None]]) -> Done:
    (index, entry, job), future = window.popleft()
    try:
        return index, entry, job, future.result() if future else None
    except BrokenProcessPool:
        raise ConvertError(
            f"a worker process died while converting {entry.source_id!r} (out of memory?); rerun to resume"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------------


def conversion_settings(
    source: Source, max_seconds: float, limit: int | None, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
) -> dict[str, Any]:
    """The options (besides rate and shard size) a resumed or repeated run must share."""
    return {
        "max_seconds": max_seconds,
        "limit": limit,
        "max_text_chars": max_text_chars,
        "source": source.settings(),
    }


def lock_path(out_dir: Path) -> Path:
    """OUT/DATASET/.SPLIT.lock for OUT/DATASET/SPLIT."""
    return out_dir.with_name(f".{out_dir.name}{LOCK_SUFFIX}")


@contextmanager
def split_lock(out_dir: Path) -> Iterator[None]:
    """Hold OUT_DIR's lock file (.SPLIT.lock beside it) exclusively (flock), or ConvertError naming who holds it.

    The OS drops the lock when the holding process ends, so a killed run never blocks the next one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = DirLock(lock_path(out_dir), str(out_dir))
    try:
        lock.acquire()
    except LockHeld as e:
        raise ConvertError(
            f"{out_dir} is being written by another conversion ({e.holder}, holding {lock.path}); wait for it to "
            f"finish or stop it (its lock goes away when it ends), then rerun"
        ) from None
    try:
        yield
    finally:
        lock.release()


def convert(
    source: Source,
    split: str,
    out: str | Path,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    workers: int = 1,
    limit: int | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    part: Part | None = None,
) -> ConvertResult:
    """Convert one split of `source` into OUT/DATASET/SPLIT; resumes an interrupted run of the same options.

    `limit` stops after that many samples; `on_progress(entries, samples, seconds)` is called per entry.
    `part` converts only that task's share of the listing, into its part (see shards.parts).
    Captions and region texts over `max_text_chars` characters are cut to it (counted in the manifest).
    Raises SourceError for a wrong layout, ConvertError for an output folder it must not touch (or one
    another conversion is writing), OSError when the output cannot be written (finished shards are kept).
    """
    t0 = time.monotonic()
    if split not in source.splits:
        raise ConvertError(
            f"unknown split {split!r} for {source.name}; expected one of {', '.join(source.splits)}"
        )
    if (
        sample_rate <= 0
        or max_seconds <= 0
        or samples_per_shard < 1
        or max_shard_bytes < 1
        or workers < 1
        or max_text_chars < 1
    ):
        raise ConvertError(
            "sample_rate, max_seconds, samples_per_shard, max_shard_bytes, workers and max_text_chars must be "
            f"positive, got {sample_rate}, {max_seconds}, {samples_per_shard}, {max_shard_bytes}, {workers}, "
            f"{max_text_chars}"
        )
    if limit is not None and limit < 1:
        raise ConvertError(f"limit must be >= 1, got {limit}")
    if limit is not None and part is not None:
        raise ConvertError("limit cannot be combined with a conversion in tasks")
    dataset = source.name
    out_dir = Path(out) / dataset / split
    settings = conversion_settings(source, max_seconds, limit, max_text_chars)
    done = _finished(out_dir, sample_rate, samples_per_shard, max_shard_bytes, settings)
    if done is None and part is not None:
        done = _finished_part(out_dir, part, sample_rate, samples_per_shard, max_shard_bytes, settings)
    if done is not None:
        done.wall_seconds = time.monotonic() - t0
        return done

    entries = iter(source.entries(split))
    first = next(entries, None)  # a header problem surfaces now, before the output folder exists
    listing = entries if first is None else _chain(first, entries)
    # one process holds the split's lock; a task holds its own (taken by its ShardWriter), beside the others
    with split_lock(out_dir) if part is None else nullcontext():
        done = _finished(out_dir, sample_rate, samples_per_shard, max_shard_bytes, settings)
        if done is None:  # (else another run finished the split while this one was listing)
            done = _write_split(
                source, split, listing, out_dir, settings, sample_rate, samples_per_shard, max_shard_bytes,
                max_seconds, max_text_chars, workers, limit, on_progress, part,
            )  # fmt: skip
    done.wall_seconds = time.monotonic() - t0
    return done


def _write_split(
    source: Source,
    split: str,
    listing: Iterator[Item | Skip],
    out_dir: Path,
    settings: dict[str, Any],
    sample_rate: int,
    samples_per_shard: int,
    max_shard_bytes: int,
    max_seconds: float,
    max_text_chars: int,
    workers: int,
    limit: int | None,
    on_progress: Callable[[int, int, float], None] | None,
    part: Part | None = None,
) -> ConvertResult:
    """The conversion proper, under the split's lock (or, for a task's part, its task's)."""
    dataset = source.name
    keys: dict[str, str] = {}
    with ShardWriter(
        out_dir, dataset, split, sample_rate, samples_per_shard, max_shard_bytes, settings=settings, part=part
    ) as writer:
        start = 0 if part is None else part.start
        cursor = writer.cursor or {"entries": start, "done": 0, "index": -1, "id": None}
        counts = Counts(Counter(cursor.get("namings", {})), cursor.get("truncated", 0))

        def make_job(item: Item, key: str) -> Job:
            item, truncated = cap_texts(item, max_text_chars)
            return Job(item, key, dataset, split, sample_rate, max_seconds, source.src, truncated)

        tasks = _tasks(listing, cursor, keys, dataset, make_job, None if part is None else part.stop)
        seen = 0
        for index, entry, job, outcome in ordered_results(tasks, workers):
            seen = index + 1
            if limit is not None and writer.num_samples >= limit:
                break
            if job is None:
                writer.skip(entry.source_id, entry.reason)  # type: ignore[union-attr]
            else:
                assert outcome is not None
                resumed_item = index == cursor["entries"] and cursor["done"] > 0  # counted before the kill
                if outcome.naming and not resumed_item:
                    counts.namings[outcome.naming] += 1
                _write_item(writer, index, entry, job, outcome, cursor, limit, counts)
            if on_progress:
                on_progress(seen, writer.num_samples, writer.total_seconds)
        writer.extra_manifest.update(
            {"audio_namings": dict(sorted(counts.namings.items())), "texts_truncated": counts.truncated}
        )
        if part is None:  # a conversion in tasks gets these when its parts are merged
            writer.extra_manifest.update(source.manifest_extra(split, keys))
        manifest = writer.close()
    status = "resumed" if writer.resumed_shards else "converted"
    return _result(manifest, out_dir, status, writer.resumed_shards)


@dataclass
class Counts:
    """Running counts that go into the manifest and, through each shard's cursor, survive a kill."""

    namings: Counter[str]
    truncated: int


def _result(manifest: dict[str, Any], out_dir: Path, status: str, resumed_shards: int = 0) -> ConvertResult:
    return ConvertResult(
        dataset=manifest["dataset"],
        split=manifest["split"],
        out_dir=out_dir,
        status=status,
        num_samples=manifest["num_samples"],
        num_shards=len(manifest["shards"]),
        total_seconds=manifest["total_seconds"],
        skipped=manifest["skipped"],
        resumed_shards=resumed_shards,
        audio_namings=dict(manifest.get("audio_namings", {})),
        texts_truncated=int(manifest.get("texts_truncated", 0)),
        region_fixes=len(manifest.get("region_fixes", [])),
    )


def _chain(first: Item | Skip, rest: Iterator[Item | Skip]) -> Iterator[Item | Skip]:
    yield first
    yield from rest


def _finished(
    out_dir: Path, sample_rate: int, samples_per_shard: int, max_shard_bytes: int, settings: dict[str, Any]
) -> ConvertResult | None:
    """A ConvertResult if OUT/DATASET/SPLIT already holds this conversion; ConvertError if another one."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        return None
    expected = {
        "sample_rate": sample_rate,
        "settings": {"samples_per_shard": samples_per_shard, "max_shard_bytes": max_shard_bytes, **settings},
    }
    found = {"sample_rate": manifest.get("sample_rate"), "settings": manifest.get("settings")}
    if found != json.loads(json.dumps(expected)):
        raise ConvertError(
            f"{out_dir} already holds a finished conversion with other options "
            f"({describe_difference(found, expected)}); delete that folder to convert again"
        )
    for p in out_dir.iterdir():  # leftovers of a run killed right after writing its manifest
        if p.name == JOURNAL or p.name.endswith(TMP_SUFFIX):
            p.unlink()
    return _result(manifest, out_dir, "complete")


def plan_entries(
    entries: Iterable[Item | Skip], keys: dict[str, str], dataset: str
) -> Iterator[tuple[int, Item | Skip]]:
    """Number the entries, allocate keys and turn repeated ids into skips (conversion and check share this)."""
    allocate = KeyAllocator()
    for index, entry in enumerate(entries):
        if isinstance(entry, Item):
            if entry.source_id in keys:
                entry = Skip(entry.source_id, f"duplicate id: {entry.source_id!r} is listed more than once")
            else:
                keys[entry.source_id] = allocate(dataset, entry.source_id)
        yield index, entry


def _tasks(
    entries: Iterator[Item | Skip],
    cursor: dict[str, Any],
    keys: dict[str, str],
    dataset: str,
    make_job: Callable[[Item, str], Job],
    stop: int | None = None,
) -> Iterator[Task]:
    """Planned entries as tasks, dropping what resumed shards hold and checking the source did not change.

    `stop`: the listing is read up to that entry only (a task's share ends there).
    """
    start, boundary, boundary_id = cursor["entries"], cursor["index"], cursor["id"]
    index = -1
    for index, entry in plan_entries(entries, keys, dataset):
        if stop is not None and index >= stop:
            index -= 1
            break
        if index == boundary and entry.source_id != boundary_id:
            raise ConvertError(
                f"the source changed since the interrupted run: entry #{index} is {entry.source_id!r}, was "
                f"{boundary_id!r}; delete the output split folder to convert again"
            )
        if index < start:
            continue
        if isinstance(entry, Skip):
            yield index, entry, None
        else:
            yield index, entry, make_job(entry, keys[entry.source_id])
    if index < boundary:
        raise ConvertError(
            f"the source changed since the interrupted run: it now lists {index + 1} entries, the "
            f"interrupted run had written up to entry #{boundary} ({boundary_id!r}); delete the output "
            f"split folder to convert again"
        )
    if stop is not None and index + 1 < stop:
        raise ConvertError(
            f"the source changed since the conversion was planned: it now lists {index + 1} entries, this "
            f"task was to convert up to entry #{stop - 1}; delete the output split folder to convert again"
        )


def _finished_part(
    out_dir: Path,
    part: Part,
    sample_rate: int,
    samples_per_shard: int,
    max_shard_bytes: int,
    settings: dict[str, Any],
) -> ConvertResult | None:
    """A ConvertResult if this task's part is finished already; ConvertError if with other options."""
    manifest = read_part_manifest(out_dir, part.task)
    if manifest is None:
        return None
    expected = {
        "sample_rate": sample_rate,
        "settings": {"samples_per_shard": samples_per_shard, "max_shard_bytes": max_shard_bytes, **settings},
        "part": asdict(part),
    }
    found = {k: manifest.get(k) for k in expected}
    if found != json.loads(json.dumps(expected)):
        raise ConvertError(
            f"{out_dir}: task {part.task} finished with other options ({describe_difference(found, expected)});"
            f" delete that folder to convert again"
        )
    return _result(manifest, out_dir, "complete")


def _write_item(
    writer: ShardWriter,
    index: int,
    entry: Item | Skip,
    job: Job,
    outcome: Outcome,
    cursor: dict[str, Any],
    limit: int | None,
    counts: Counts,
) -> None:
    if outcome.error is not None:
        writer.skip(entry.source_id, outcome.error)
        return
    samples = outcome.samples
    first = cursor["done"] if index == cursor["entries"] else 0  # samples a resumed shard already holds
    todo = samples[first:]
    clash = next((s.key for s, _ in todo if writer.has_key(s.key)), None)
    if clash is not None:
        writer.skip(entry.source_id, f"key collision: key {clash!r} is already taken by another id")
        return
    if first == 0:
        counts.truncated += job.truncated
    for j, (sample, flac) in enumerate(todo, first):
        if limit is not None and writer.num_samples >= limit:
            return
        last = j == len(samples) - 1
        position = {"entries": index + 1 if last else index, "done": 0 if last else j + 1}
        state = {"namings": dict(counts.namings), "truncated": counts.truncated}
        writer.write(sample, flac, cursor={**position, "index": index, "id": entry.source_id, **state})
