"""Atomic, resumable shard writing (DESIGN.md "Shard format").

    with ShardWriter(out / "clotho" / "development", "clotho", "development", 32000) as w:
        w.write(sample, flac_bytes, cursor=...)
        w.skip("bad.wav", "undecodable audio: ...")

Shards are ``DATASET-SPLIT-NNNNNN.tar`` with ``KEY.flac`` + ``KEY.json`` members whose tar headers are
fixed (mtime, owner, mode), so the same samples give byte-identical shards. A shard is written as
``NAME.tar.tmp`` and renamed when complete; then one line is appended (and fsynced) to the progress
journal ``.progress.jsonl``: the shard's size and sha256, the caller's `cursor` (where its input stands
after the shard's last sample) and the samples skipped before that sample. ``manifest.json`` is written
last, atomically, and the journal removed.

A writer opened on a folder with a journal resumes: it keeps the journaled shards whose size still
matches (and the sha256 too, for the last of them), deletes everything else it would have written (temp
files, shards the journal does not vouch for) and exposes the last kept `cursor`, so the caller can skip
the input those shards hold.

A split converted by several tasks (launch.convert) has one writer per task, each given its `Part`
(shards.splitdir: the part files, the plan and the merge into ``manifest.json``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shards.files import file_sha256, fsync_path, write_atomic
from shards.schema import Sample, validate_sample
from shards.splitdir import (
    JOURNAL,
    MANIFEST,
    MANIFEST_ORDER,
    PART_FILES,
    TMP_SUFFIX,
    DirLock,
    Part,
    WriterError,
    describe_difference,
    part_journal,
    part_lock,
    part_manifest_name,
    shard_name,
    write_json_atomic,
)

JOURNAL_VERSION = 1
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, and not the epoch some tar versions warn about
TAR_MODE = 0o644
BLOCK = 512


@dataclass
class ShardInfo:
    """One finished shard, as listed in the manifest."""

    name: str
    num_samples: int
    seconds: float
    bytes: int
    sha256: str


@dataclass
class _OpenShard:
    index: int
    path: Path
    raw: BinaryIO
    hashing: _HashingWriter
    tar: tarfile.TarFile
    num_samples: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)
    cursor: Any = None


class _HashingWriter:
    """File-like sink that forwards writes and keeps a running sha256 and byte count."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.raw.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A regular-file header with fixed metadata, so shards are reproducible byte for byte."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def member_bytes(name: str, size: int) -> int:
    """Bytes a member takes in the tar: header (plus a PAX header for long names) and padded data."""
    header = BLOCK if len(name) <= 100 else 3 * BLOCK + math.ceil(len(name) / BLOCK) * BLOCK
    return header + math.ceil(size / BLOCK) * BLOCK


class ShardWriter:
    """Writes one split's shards and manifest; resumes from the progress journal it finds."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        dataset: str,
        split: str,
        sample_rate: int,
        max_samples: int = 1000,
        max_bytes: int = 1_000_000_000,
        extra_manifest: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        part: Part | None = None,
    ) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.out_dir = Path(out_dir)
        self.dataset, self.split, self.sample_rate = dataset, split, sample_rate
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.extra_manifest: dict[str, Any] = dict(extra_manifest or {})
        self.settings = {"samples_per_shard": max_samples, "max_shard_bytes": max_bytes, **(settings or {})}
        self.part = part
        self.shards: list[ShardInfo] = []
        self.skipped: list[dict[str, str]] = []  # skips that belong to finished shards
        self.cursor: Any = None  # the caller's cursor after the last finished shard (None: from the start)
        self.resumed_shards = 0
        self._pending: list[dict[str, str]] = []
        self._keys: set[str] = set()
        self._open: _OpenShard | None = None
        self._closed = False
        task = None if part is None else part.task
        self._journal = JOURNAL if part is None else part_journal(part.task)
        stem = shard_name(dataset, split, 0, task)[: -len("000000.tar")]
        self._pattern = re.compile(rf"^{re.escape(stem)}(\d{{6}})\.tar$")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock: DirLock | None = None
        if part is not None:
            what = f"task {part.task} of {dataset}/{split}"
            self._lock = DirLock(self.out_dir / part_lock(part.task), what).acquire()
        try:
            self._check_folder()
            self._recover()
        except BaseException:
            self._release()
            raise

    def _check_folder(self) -> None:
        """Refuse a finished folder, and a one-process conversion mixed with one in tasks."""
        if (self.out_dir / MANIFEST).exists():
            raise WriterError(
                f"{self.out_dir} is already complete ({MANIFEST} exists); delete the folder to write it again"
            )
        if self.part is None:
            tasks = sorted(p.name for p in self.out_dir.iterdir() if PART_FILES.match(p.name))
            if tasks:
                raise WriterError(
                    f"{self.out_dir} is being converted in tasks ({tasks[0]} exists): finish it with the same "
                    f"`python -m launch.convert` command, or delete the folder to convert it in one process"
                )
            return
        if (self.out_dir / part_manifest_name(self.part.task)).exists():
            raise WriterError(
                f"task {self.part.task} of {self.out_dir} is already complete "
                f"({part_manifest_name(self.part.task)} exists)"
            )
        if (self.out_dir / JOURNAL).exists():
            raise WriterError(
                f"{self.out_dir} holds an unfinished one-process conversion ({JOURNAL}); finish it with "
                f"`python -m tools.convert`, or delete the folder to convert it in tasks"
            )

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- resume --------------------------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {
            "journal": JOURNAL_VERSION,
            "dataset": self.dataset,
            "split": self.split,
            "sample_rate": self.sample_rate,
            "settings": self.settings,
            **({} if self.part is None else {"part": asdict(self.part)}),
        }

    def _own_temp(self, name: str) -> bool:
        """A temp file this writer may have left: all of them, or a task's own only (others run beside it)."""
        if not name.endswith(TMP_SUFFIX):
            return False
        if self.part is None:
            return True
        base = name[: -len(TMP_SUFFIX)]
        return base == self._journal or bool(self._pattern.match(base))

    def _recover(self) -> None:
        for p in self.out_dir.iterdir():
            if self._own_temp(p.name) and p.is_file():
                p.unlink()
        journal = self.out_dir / self._journal
        ours = sorted(p for p in self.out_dir.iterdir() if self._pattern.match(p.name))
        if not journal.exists():
            if ours:
                raise WriterError(
                    f"{self.out_dir} holds shards ({ours[0].name}, ...) but no {self._journal} or {MANIFEST}, "
                    f"so they cannot be trusted; delete them (or the folder) to convert again"
                )
            self._rewrite_journal([])
            return
        lines = journal.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        expected = json.loads(json.dumps(self._header()))
        if header != expected:
            difference = describe_difference(header, expected)
            raise WriterError(
                f"{journal} belongs to a conversion with other options ({difference}); rerun with the same "
                f"options, or delete {self.out_dir} to start over"
            )
        # Finished shards were fsynced before their journal line, so a size check is enough for all but
        # the last; its sha256 is checked too (re-hashing terabytes on every resume is tools.verify's job).
        kept: list[dict[str, Any]] = []
        for line in lines[1:]:
            entry = _parse_line(line)
            if entry is None or not self._shard_present(entry["shard"], len(kept)):
                break
            kept.append(entry)
        while kept and file_sha256(self.out_dir / kept[-1]["shard"]["name"]) != kept[-1]["shard"]["sha256"]:
            kept.pop()
        keep_names = {e["shard"]["name"] for e in kept}
        for p in ours:
            if p.name not in keep_names:
                p.unlink()
        if len(kept) != len(lines) - 1:
            self._rewrite_journal(kept)
        for e in kept:
            self.shards.append(ShardInfo(**e["shard"]))
            self.skipped.extend(e["skipped"])
            self.cursor = e["cursor"]
        self.resumed_shards = len(kept)
        for info in self.shards:
            with tarfile.open(self.out_dir / info.name) as tar:
                self._keys.update(n.split(".", 1)[0] for n in tar.getnames())

    def _shard_present(self, info: dict[str, Any], index: int) -> bool:
        path = self.out_dir / str(info.get("name"))
        return (
            info.get("name") == shard_name(self.dataset, self.split, index, self._task)
            and path.is_file()
            and path.stat().st_size == info.get("bytes")
        )

    @property
    def _task(self) -> int | None:
        return None if self.part is None else self.part.task

    def _rewrite_journal(self, entries: list[dict[str, Any]]) -> None:
        lines = (json.dumps(obj, ensure_ascii=False) + "\n" for obj in [self._header(), *entries])
        write_atomic(self.out_dir / self._journal, "".join(lines))

    # -- writing -------------------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """Samples written so far, resumed shards included."""
        return sum(s.num_samples for s in self.shards) + (self._open.num_samples if self._open else 0)

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.shards) + (self._open.seconds if self._open else 0.0)

    def has_key(self, key: str) -> bool:
        return key in self._keys

    def write(self, sample: Sample, flac: bytes, cursor: Any = None) -> None:
        """Add one sample; `cursor` (JSON) says where the caller's input stands once it is written."""
        if self._closed:
            raise WriterError("write() after close()")
        validate_sample(sample)
        if (sample.dataset, sample.split, sample.sample_rate) != (self.dataset, self.split, self.sample_rate):
            raise ValueError(
                f"sample {sample.key}: dataset/split/sample_rate {sample.dataset}/{sample.split}/"
                f"{sample.sample_rate} do not match the writer's "
                f"{self.dataset}/{self.split}/{self.sample_rate}"
            )
        if sample.key in self._keys:
            raise WriterError(f"duplicate key {sample.key!r} (source id {sample.source_id!r})")
        meta = sample.to_json_bytes()
        size = member_bytes(sample.key + ".flac", len(flac)) + member_bytes(sample.key + ".json", len(meta))
        if self._open and self._open.num_samples and self._open.hashing.size + size > self.max_bytes:
            self._finish()
        shard = self._open or self._start()
        shard.tar.addfile(tar_info(sample.key + ".flac", len(flac)), io.BytesIO(flac))
        shard.tar.addfile(tar_info(sample.key + ".json", len(meta)), io.BytesIO(meta))
        self._keys.add(sample.key)
        shard.num_samples += 1
        shard.seconds += round(sample.duration, 6)
        shard.cursor = cursor
        shard.skipped += self._pending
        self._pending = []
        if shard.num_samples >= self.max_samples:
            self._finish()

    def skip(self, source_id: str, reason: str) -> None:
        """Record an input that did not become a sample; it is listed in the manifest's `skipped`."""
        self._pending.append({"source_id": str(source_id), "reason": str(reason)})

    def _start(self) -> _OpenShard:
        index = len(self.shards)
        path = self.out_dir / (shard_name(self.dataset, self.split, index, self._task) + TMP_SUFFIX)
        raw = path.open("wb")
        hashing = _HashingWriter(raw)
        tar = tarfile.TarFile(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
        self._open = _OpenShard(index, path, raw, hashing, tar)
        return self._open

    def _finish(self) -> None:
        shard, self._open = self._open, None
        assert shard is not None
        shard.tar.close()
        shard.raw.flush()
        os.fsync(shard.raw.fileno())
        shard.raw.close()
        name = shard_name(self.dataset, self.split, shard.index, self._task)
        os.replace(shard.path, self.out_dir / name)
        fsync_path(self.out_dir)
        info = ShardInfo(
            name,
            shard.num_samples,
            round(shard.seconds, 6),
            shard.hashing.size,
            shard.hashing.sha.hexdigest(),
        )
        self.shards.append(info)
        self.skipped.extend(shard.skipped)
        self.cursor = shard.cursor
        line = {"shard": asdict(info), "cursor": shard.cursor, "skipped": shard.skipped}
        with (self.out_dir / self._journal).open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def manifest(self) -> dict[str, Any]:
        """The manifest as it would be written now (finished shards only)."""
        reserved = set(MANIFEST_ORDER)
        clash = reserved & set(self.extra_manifest)
        if clash:
            raise ValueError(f"extra_manifest may not set {sorted(clash)}")
        return {
            "dataset": self.dataset,
            "split": self.split,
            "sample_rate": self.sample_rate,
            "num_samples": sum(s.num_samples for s in self.shards),
            "total_seconds": round(sum(s.seconds for s in self.shards), 6),
            "shards": [asdict(s) for s in self.shards],
            "skipped": self.skipped + self._pending,
            "settings": self.settings,
            **self.extra_manifest,
        }

    def close(self) -> dict[str, Any]:
        """Finish the last shard, write manifest.json atomically, drop the journal; returns the manifest.

        A task's writer writes its part manifest (the manifest plus ``part``) instead of manifest.json.
        """
        if self._closed:
            raise WriterError("close() called twice")
        if self._open:
            self._finish()
        manifest = self.manifest()
        if self.part is None:
            write_json_atomic(self.out_dir / MANIFEST, manifest)
        else:
            manifest["part"] = asdict(self.part)
            write_json_atomic(self.out_dir / part_manifest_name(self.part.task), manifest)
        (self.out_dir / self._journal).unlink(missing_ok=True)
        self._closed = True
        self._release()
        return manifest

    def abort(self) -> None:
        """Drop the shard in progress (its temp file); finished shards and the journal stay for a resume."""
        if self._open:
            shard, self._open = self._open, None
            shard.raw.close()
            shard.path.unlink(missing_ok=True)
        self._closed = True
        self._release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _parse_line(line: str) -> dict[str, Any] | None:
    """A journal line, or None if it is torn or malformed (the run was killed while appending it)."""
    try:
        entry = json.loads(line)
        ShardInfo(**entry["shard"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(entry.get("skipped"), list):
        return None
    return entry
