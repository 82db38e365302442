"""Re-read a converted split and check it against its manifest and the shard format.

Checks: every listed shard exists with the listed size and sha256; no stray files (temp files, a
progress journal, the bookkeeping of an unfinished conversion in tasks, unlisted shards); each shard
holds ``KEY.flac`` + ``KEY.json`` pairs, adjacent, keys unique in the split; every JSON validates and
matches the manifest's dataset/split/sample_rate; every FLAC decodes at that rate and lasts its
``duration``; per-shard and total counts and seconds add up.

Shards are checked one by one, or by `workers` processes in parallel (the same report, in the same
order: results are taken in manifest order and keys are compared across shards in this process).

The report counts samples as every reader of shards does (shards.records.ReadStats): `expected` (the manifest's
num_samples), `read` (samples intact: both members, valid JSON, audio that decodes) and `skipped` (the rest, what
a reader would skip); a damaged shard keeps the samples before the damage.
"""

from __future__ import annotations

import json
import multiprocessing
import tarfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards.audio import AudioError, decode_flac
from shards.files import file_sha256
from shards.schema import Sample, SchemaError
from shards.splitdir import JOURNAL, MANIFEST, PART_FILES, PLAN, TMP_SUFFIX, shard_pattern

MANIFEST_FIELDS = ("dataset", "split", "sample_rate", "num_samples", "total_seconds", "shards", "skipped")
SHARD_FIELDS = ("name", "num_samples", "seconds", "bytes", "sha256")


@dataclass
class VerifyReport:
    split_dir: Path
    num_shards: int = 0
    num_samples: int = 0
    total_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    expected: int = 0
    """Samples the manifest lists."""
    read: int = 0
    """Samples found intact (both members, valid JSON, decodable audio)."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def skipped(self) -> int:
        """Samples a reader would skip: expected but not intact."""
        return max(0, self.expected - self.read)


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol


@dataclass
class ShardCheck:
    """What checking one shard found."""

    count: int
    seconds: float
    keys: list[str]
    problems: list[str]
    intact: int = 0


def verify_split(
    split_dir: str | Path,
    decode_audio: bool = True,
    on_shard: Callable[[str], None] | None = None,
    workers: int = 1,
) -> VerifyReport:
    """Check OUT/DATASET/SPLIT; every problem found is listed in the report (none: it is sound).

    `workers` > 1 checks that many shards at a time in worker processes; the report is the same.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    split_dir = Path(split_dir)
    report = VerifyReport(split_dir)
    problems = report.problems
    manifest_path = split_dir / MANIFEST
    if not manifest_path.is_file():
        hint = ""
        if (split_dir / JOURNAL).exists():
            hint = " (conversion unfinished: rerun tools.convert to resume)"
        elif (split_dir / PLAN).exists():
            hint = " (conversion in tasks unfinished: rerun the same launch.convert command to complete it)"
        problems.append(f"{manifest_path}: missing{hint}")
        return report
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{manifest_path}: not valid JSON: {e}")
        return report
    missing = [k for k in MANIFEST_FIELDS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        problems.append(f"{manifest_path}: missing field(s) {', '.join(missing)}")
        return report
    shards = manifest["shards"]
    if isinstance(manifest["num_samples"], int):
        report.expected = manifest["num_samples"]
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and set(SHARD_FIELDS) <= set(s) for s in shards
    ):
        problems.append(f"{manifest_path}: 'shards' must be a list of {{{', '.join(SHARD_FIELDS)}}}")
        return report
    pattern = shard_pattern(str(manifest["dataset"]), str(manifest["split"]))
    listed = {s["name"] for s in shards}
    for p in sorted(split_dir.iterdir()):
        if p.name.endswith(TMP_SUFFIX) or p.name == JOURNAL:
            problems.append(f"{p.name}: stray file left by an interrupted run")
        elif PART_FILES.match(p.name):
            problems.append(f"{p.name}: stray file left by an unfinished conversion in tasks")
        elif p.name.endswith(".tar") and p.name not in listed:
            problems.append(f"{p.name}: shard not listed in {MANIFEST}")
    for i, s in enumerate(manifest["skipped"] if isinstance(manifest["skipped"], list) else [None]):
        if (
            not isinstance(s, dict)
            or not isinstance(s.get("source_id"), str)
            or not isinstance(s.get("reason"), str)
        ):
            problems.append(f"{MANIFEST}: skipped[{i}] must be {{source_id, reason}}, got {s!r}")
            break
    keys: set[str] = set()
    header = {k: manifest[k] for k in ("dataset", "split", "sample_rate")}
    jobs = [(split_dir / info["name"], info, header, decode_audio) for info in shards]
    for info, check in zip(shards, _check_all(jobs, workers)):
        if not pattern.match(info["name"]):
            problems.append(
                f"{info['name']}: name does not follow {manifest['dataset']}-{manifest['split']}-NNNNNN.tar "
                f"(or -TTTT-NNNNNN.tar for task TTTT)"
            )
        if on_shard:
            on_shard(info["name"])
        problems.extend(check.problems)
        for key in check.keys:
            if key in keys:
                problems.append(f"{info['name']}: key {key!r} appears more than once in the split")
            keys.add(key)
        report.num_shards += 1
        report.num_samples += check.count
        report.read += check.intact
        report.total_seconds += check.seconds
    if report.num_samples != manifest["num_samples"]:
        problems.append(
            f"{MANIFEST}: num_samples is {manifest['num_samples']}, the shards hold {report.num_samples}"
        )
    if not _close(report.total_seconds, manifest["total_seconds"], 1e-3 + 1e-6 * report.num_samples):
        problems.append(
            f"{MANIFEST}: total_seconds is {manifest['total_seconds']}, "
            f"the shards hold {report.total_seconds:.6f}"
        )
    return report


def _check_all(
    jobs: list[tuple[Path, dict[str, Any], dict[str, Any], bool]], workers: int
) -> Iterator[ShardCheck]:
    """check_shard over `jobs`, results in order: in this process, or in `workers` worker processes."""
    if workers <= 1 or len(jobs) <= 1:
        yield from (check_shard(*job) for job in jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(check_shard, *zip(*jobs), chunksize=1)


def check_shard(path: Path, info: dict[str, Any], manifest: dict[str, Any], decode_audio: bool) -> ShardCheck:
    """Check one shard against its manifest entry (and `manifest`'s dataset/split/sample_rate)."""
    problems: list[str] = []
    keys: list[str] = []
    count, seconds, intact = _verify_shard(path, info, manifest, keys, decode_audio, problems)
    return ShardCheck(count, seconds, keys, problems, intact)


def _verify_shard(
    path: Path,
    info: dict[str, Any],
    manifest: dict[str, Any],
    keys: list[str],
    decode_audio: bool,
    problems: list[str],
) -> tuple[int, float, int]:
    """Check one shard; returns (samples, seconds, intact samples) found in it and appends its keys, in order, to
    `keys`."""
    name = info["name"]
    if not path.is_file():
        problems.append(f"{name}: listed in {MANIFEST} but missing")
        return 0, 0.0, 0
    size = path.stat().st_size
    if size != info["bytes"]:
        problems.append(f"{name}: {size} bytes, {MANIFEST} says {info['bytes']}")
    if file_sha256(path) != info["sha256"]:
        problems.append(f"{name}: sha256 differs from {MANIFEST} (corrupted or changed)")
    count, seconds, intact = 0, 0.0, 0
    try:
        for key, parts in _pairs(path, name, problems):
            keys.append(key)
            if set(parts) != {"flac", "json"}:
                problems.append(f"{name}: sample {key!r} has members {sorted(parts)}, expected flac and json")
                continue
            before = len(problems)
            duration = _check_sample(name, key, parts, manifest, decode_audio, problems)
            count += 1
            intact += len(problems) == before
            seconds += duration
    except (tarfile.TarError, EOFError, OSError) as e:
        problems.append(f"{name}: unreadable tar after {count} samples: {e}")
    if count != info["num_samples"]:
        problems.append(f"{name}: {count} samples, {MANIFEST} says {info['num_samples']}")
    if not _close(seconds, info["seconds"], 1e-4 + 1e-6 * count):
        problems.append(f"{name}: {seconds:.6f} s of audio, {MANIFEST} says {info['seconds']}")
    return count, seconds, intact


def _pairs(path: Path, name: str, problems: list[str]) -> Iterable[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) in tar order, each sample once all its members are read (a tar that breaks keeps
    the samples before the damage); a key's members must be adjacent, as WebDataset reads them."""
    current: tuple[str, dict[str, bytes]] | None = None
    seen: set[str] = set()
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isfile():
                problems.append(f"{name}: member {m.name!r} is not a regular file")
                continue
            key, dot, ext = m.name.partition(".")
            if not dot or "/" in m.name:
                problems.append(f"{name}: member {m.name!r} is not KEY.ext")
                continue
            if current is not None and current[0] != key:
                yield current  # before reading on: the next member may be the damaged one
                current = None
            f = tar.extractfile(m)
            payload = f.read() if f else b""
            if current is not None:
                if ext in current[1]:
                    problems.append(f"{name}: member {m.name!r} appears twice")
                current[1][ext] = payload
                continue
            if key in seen:
                problems.append(f"{name}: members of {key!r} are not adjacent")
            seen.add(key)
            current = (key, {ext: payload})
    if current is not None:
        yield current


def _check_sample(
    name: str,
    key: str,
    parts: dict[str, bytes],
    manifest: dict[str, Any],
    decode_audio: bool,
    problems: list[str],
) -> float:
    """Validate one sample's JSON and audio; returns its duration (0 if the JSON is unusable)."""
    try:
        sample = Sample.from_json(parts["json"])
    except SchemaError as e:
        problems.append(f"{name}: {key}.json: {e}")
        return 0.0
    if sample.key != key:
        problems.append(f"{name}: {key}.json says key {sample.key!r}")
    for k in ("dataset", "split", "sample_rate"):
        if getattr(sample, k) != manifest[k]:
            problems.append(
                f"{name}: {key}.json has {k} {getattr(sample, k)!r}, {MANIFEST} says {manifest[k]!r}"
            )
    if decode_audio:
        try:
            audio, rate = decode_flac(parts["flac"], dtype="int16")
        except AudioError as e:
            problems.append(f"{name}: {key}.flac: {e}")
            return sample.duration
        if rate != sample.sample_rate:
            problems.append(f"{name}: {key}.flac is {rate} Hz, its JSON says {sample.sample_rate}")
        elif not _close(len(audio) / rate, sample.duration, 1.5 / rate + 1e-6):
            problems.append(
                f"{name}: {key}.flac lasts {len(audio) / rate:.6f} s, its JSON says {sample.duration}"
            )
    return sample.duration
