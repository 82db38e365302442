"""The files of a split folder besides the shards: names, the manifest, atomic JSON, locks, and the bookkeeping of
a split converted by several tasks (DESIGN.md "Shard format").

A split converted by several tasks (launch.convert) has one writer per task, each given its :class:`Part`:
task i writes ``DATASET-SPLIT-{i:04d}-NNNNNN.tar`` (names unique across tasks and, sorted, in listing
order), journals to ``.progress-{i:04d}.jsonl``, holds the lock ``.lock-{i:04d}`` while it runs and closes
with a part manifest ``.part-{i:04d}.json`` instead of ``manifest.json``. :func:`merge_parts` then
concatenates the part manifests, in task order, into the split's ``manifest.json``; the plan
(``.tasks.json``: how many tasks, how many entries) says which parts to expect.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shards.files import TMP_SUFFIX, write_atomic

MANIFEST = "manifest.json"
JOURNAL = ".progress.jsonl"
PLAN = ".tasks.json"
MANIFEST_ORDER = ("dataset", "split", "sample_rate", "num_samples", "total_seconds", "shards", "skipped")
MERGE_LOCK = ".lock-merge"
PART_FILES = re.compile(r"^\.(part-\d{4}\.json|progress-\d{4}\.jsonl|lock-\d{4}|lock-merge|tasks\.json)$")
"""Bookkeeping of a conversion in tasks: part manifests, task journals, locks, the plan."""


class WriterError(RuntimeError):
    """The output folder cannot be written or resumed as asked; the message says what to delete."""


class LockHeld(WriterError):
    """A DirLock that another process holds; `holder` says who ("pid N on HOST")."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class PartsMissing(WriterError):
    """A merge found tasks that have not finished their part; rerunning the conversion completes them."""

    def __init__(self, message: str, tasks: list[int]) -> None:
        super().__init__(message)
        self.tasks = tasks


@dataclass(frozen=True)
class Part:
    """Task `task` of `tasks` converting one split: the contiguous entries [start, stop) of its listing."""

    task: int
    tasks: int
    entries: int
    """Entries the split's listing holds (all tasks together)."""

    def __post_init__(self) -> None:
        if not (self.tasks >= 1 and 0 <= self.task < self.tasks and self.entries >= 0):
            raise ValueError(f"bad part: task {self.task} of {self.tasks} over {self.entries} entries")
        if self.tasks > 9999:
            raise ValueError(f"at most 9999 tasks per split (shard names carry 4 digits), got {self.tasks}")

    @property
    def start(self) -> int:
        return self.task * self.entries // self.tasks

    @property
    def stop(self) -> int:
        return (self.task + 1) * self.entries // self.tasks

    @property
    def empty(self) -> bool:
        return self.start == self.stop


def partition(entries: int, tasks: int) -> list[Part]:
    """The parts of a split of `entries` entries over `tasks` tasks (contiguous, sizes differ by <= 1)."""
    return [Part(t, tasks, entries) for t in range(tasks)]


def part_journal(task: int) -> str:
    return f".progress-{task:04d}.jsonl"


def part_manifest_name(task: int) -> str:
    return f".part-{task:04d}.json"


def part_lock(task: int) -> str:
    return f".lock-{task:04d}"


class DirLock:
    """An exclusive, non-blocking ``flock`` on a file in the output folder, held by one process at a time.

    flock works across the nodes of a cluster on NFSv4 and on Lustre mounted with ``-o flock``. The file
    records who holds it, for the error message of the process that finds it taken.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LockHeld(
                    f"{self.what} is being written by {holder} (lock {self.path}); wait for it to end or "
                    f"stop it first",
                    holder,
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def holder(self) -> str | None:
        """Who holds the lock now ("pid N on HOST"), or None when nobody does (a look; takes nothing)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise
        finally:
            os.close(fd)  # also drops the shared lock taken to look
        return None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def shard_name(dataset: str, split: str, index: int, task: int | None = None) -> str:
    """``DATASET-SPLIT-NNNNNN.tar``, or ``DATASET-SPLIT-TTTT-NNNNNN.tar`` for shard NNNNNN of task TTTT."""
    if task is None:
        return f"{dataset}-{split}-{index:06d}.tar"
    return f"{dataset}-{split}-{task:04d}-{index:06d}.tar"


def shard_pattern(dataset: str, split: str) -> re.Pattern[str]:
    """Names of a split's shards, one-process or per task."""
    return re.compile(rf"^{re.escape(dataset)}-{re.escape(split)}-(\d{{4}}-)?\d{{6}}\.tar$")


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON into `path` atomically (shards.files.write_atomic)."""
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def read_manifest(split_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The split's manifest, or None if there is none yet; WriterError if it is unreadable."""
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WriterError(f"{path}: not valid JSON ({e}); delete {path.parent} to convert again") from None
    if not isinstance(manifest, dict):
        raise WriterError(f"{path}: expected a JSON object; delete {path.parent} to convert again")
    return manifest


def read_part_manifest(split_dir: str | os.PathLike, task: int) -> dict[str, Any] | None:
    """The part manifest task `task` wrote on finishing, or None; WriterError if it is unreadable."""
    path = Path(split_dir) / part_manifest_name(task)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WriterError(f"{path}: not valid JSON ({e}); delete it to convert task {task} again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise WriterError(f"{path}: not a part manifest; delete it to convert task {task} again")
    return manifest


def read_plan(split_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The plan of a conversion in tasks (``.tasks.json``), or None when there is none."""
    path = Path(split_dir) / PLAN
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WriterError(f"{path}: not valid JSON ({e}); delete {path.parent} to convert again") from None
    if (
        not isinstance(plan, dict)
        or not isinstance(plan.get("tasks"), int)
        or not isinstance(plan.get("entries"), int)
    ):
        raise WriterError(f"{path}: expected {{tasks, entries, ...}}; delete {path.parent} to convert again")
    return plan


def write_plan(split_dir: str | os.PathLike, plan: dict[str, Any]) -> None:
    """Record how a split is converted in tasks, before the first task starts (atomically)."""
    Path(split_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(split_dir) / PLAN, plan)


def remove_part_files(split_dir: str | os.PathLike) -> None:
    """Drop the bookkeeping of a conversion in tasks (after manifest.json is written)."""
    for p in Path(split_dir).iterdir():
        if PART_FILES.match(p.name) or (
            p.name.endswith(TMP_SUFFIX) and PART_FILES.match(p.name[: -len(TMP_SUFFIX)])
        ):
            p.unlink(missing_ok=True)


def merge_parts(
    split_dir: str | os.PathLike,
    dataset: str,
    split: str,
    sample_rate: int,
    settings: dict[str, Any],
    parts: Sequence[Part],
    extra_manifest: dict[str, Any] | None = None,
    summed: Sequence[str] = (),
) -> dict[str, Any]:
    """Concatenate the finished parts, in task order, into the split's manifest.json; returns it.

    `settings` are the writers' settings (what every part manifest must carry). Parts over no entries
    need no part manifest. `summed` names manifest fields that count something over the samples (an int,
    or a {name: int} table) and so add up over the parts. PartsMissing names the tasks still to run;
    nothing is written then. The part files are removed once manifest.json is in place.
    """
    split_dir = Path(split_dir)
    with DirLock(split_dir / MERGE_LOCK, f"the merge of {dataset}/{split}"):
        done = read_manifest(split_dir)
        if done is not None:
            remove_part_files(split_dir)
            return done
        found: list[dict[str, Any]] = []
        missing = []
        expected = json.loads(json.dumps({"dataset": dataset, "split": split, "sample_rate": sample_rate}))
        expected["settings"] = json.loads(json.dumps(settings))
        for part in parts:
            if part.empty:
                continue
            manifest = read_part_manifest(split_dir, part.task)
            if manifest is None:
                missing.append(part.task)
                continue
            name = split_dir / part_manifest_name(part.task)
            if manifest.get("part") != asdict(part):
                raise WriterError(
                    f"{name}: written for {manifest.get('part')}, expected {asdict(part)}; delete "
                    f"{split_dir} to convert again"
                )
            got = {k: manifest.get(k) for k in expected}
            if got != expected:
                raise WriterError(
                    f"{name}: written with other options ({describe_difference(got, expected)}); delete "
                    f"{split_dir} to convert again"
                )
            found.append(manifest)
        if missing:
            tasks = len(parts)
            raise PartsMissing(
                f"{dataset}/{split}: task(s) {', '.join(map(str, missing))} of {tasks} have not finished; "
                f"rerun the same command to complete them",
                missing,
            )
        shards = [s for m in found for s in m["shards"]]
        manifest = {
            **expected,
            "num_samples": sum(s["num_samples"] for s in shards),
            "total_seconds": round(sum(s["seconds"] for s in shards), 6),
            "shards": shards,
            "skipped": [k for m in found for k in m["skipped"]],
        }
        manifest = {k: manifest[k] for k in (*MANIFEST_ORDER, "settings")}
        reserved = set(manifest)
        clash = reserved & set(extra_manifest or {})
        if clash:
            raise ValueError(f"extra_manifest may not set {sorted(clash)}")
        manifest.update(extra_manifest or {})
        for name in summed:
            manifest[name] = sum_counts([m[name] for m in found if name in m], f"{split_dir}: {name}")
        write_json_atomic(split_dir / MANIFEST, manifest)
        remove_part_files(split_dir)
    (split_dir / MERGE_LOCK).unlink(missing_ok=True)
    return manifest


def sum_counts(values: Sequence[Any], what: str) -> Any:
    """The sum of ints, or of {name: int} tables (keys sorted); ValueError for anything else."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    if all(isinstance(v, dict) and all(isinstance(n, int) for n in v.values()) for v in values):
        total: dict[str, int] = {}
        for v in values:
            for k, n in v.items():
                total[k] = total.get(k, 0) + n
        return dict(sorted(total.items()))
    raise ValueError(f"{what}: expected ints or {{name: int}} tables in every part, got {values!r}")


def describe_difference(found: Any, expected: dict[str, Any]) -> str:
    """Short description of how recorded options differ from the current ones."""
    if not isinstance(found, dict):
        return "unreadable header"
    out = []
    for k in sorted(set(found) | set(expected)):
        if found.get(k) != expected.get(k):
            if isinstance(found.get(k), dict) and isinstance(expected.get(k), dict):
                out.append(f"{k}: {describe_difference(found[k], expected[k])}")
            else:
                out.append(f"{k}: was {found.get(k)!r}, now {expected.get(k)!r}")
    return "; ".join(out)
