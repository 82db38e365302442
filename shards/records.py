"""Tar shards -> records: each sample's parsed JSON and FLAC bytes, with where it came from.

Only a sample's `.flac` and `.json` members are read (JSON with json; nothing is ever unpickled) and member names
never touch the filesystem. A corrupt sample is skipped and counted (`Skips`), never fatal. A shard the network
or store could not deliver after every retry (shards.remote) raises ShardReadError, a CorruptSample: training
skips and counts it like a corrupt shard; evaluation (`iter_part`) lets it through, since a split read in part
would give wrong metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

from shards.remote import ReadFailed, ReadPolicy, open_stream
from shards.schema import Sample, SchemaError
from shards.shardlist import Part, Shard, ShardError, expand_urls
from shards.tarstream import iter_tar

log = logging.getLogger(__name__)

MEMBERS = ("flac", "json")
"""Tar members a sample is made of; every other member is ignored (never decoded)."""


class CorruptSample(ValueError):
    """A sample (or the rest of a shard) that cannot be read; skipped with a warning, never fatal."""


class ShardReadError(CorruptSample):
    """A shard that could not be read to its end: its url failed after every retry (or for good: 404, 403).

    Names the url and the cause; training skips and counts it, evaluation stops on it.
    """

    def __init__(self, message: str, url: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.url, self.cause = url, cause


class Skips:
    """Counts corrupt samples (`count`) and unreadable shards (`unreadable`) skipped; logs each as a warning."""

    def __init__(self, count: int = 0, unreadable: int = 0) -> None:
        self.count = count
        self.unreadable = unreadable

    def note(self, error: Exception) -> None:
        if isinstance(error, ShardReadError):
            self.unreadable += 1
            log.warning("skipping unreadable shard: %s", error)
            return
        self.count += 1
        log.warning("skipping corrupt data: %s", error)


# ---------------------------------------------------------------------------------------------------------------------
# Tar members -> records
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One sample read from a shard: parsed JSON, FLAC bytes and where it came from (shard index, position)."""

    sample: Sample
    flac: bytes
    url: str
    shard: int
    index: int


def iter_groups(url: str, policy: ReadPolicy | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a tar shard, in tar order; only .flac/.json members are read.

    Raises ShardError for a shard with no samples, CorruptSample when the tar itself breaks and ShardReadError
    when the url cannot be read (after `policy`'s retries), each after yielding what came before.
    """
    n = 0
    key, members, error, stopped = None, {}, None, False
    try:
        with closing(open_stream(url, policy)) as stream:
            for name, data in iter_tar(stream, _wanted):
                base, ext = split_member(name)
                if base != key:
                    if key is not None:
                        n += 1
                        try:
                            yield key, members
                        except GeneratorExit:
                            stopped = True
                            raise
                    key, members = base, {}
                members[ext] = data
    except Exception as e:
        if stopped:  # the reader stopped early; a pipe command complaining on close does not matter
            return
        error = e
    unreadable = isinstance(error, ReadFailed)
    if key is not None and not (unreadable and not all(ext in members for ext in MEMBERS)):
        n += 1  # (a sample cut off by a failed read is part of the unread rest, not a corrupt sample)
        yield key, members
    if unreadable:
        raise ShardReadError(f"{error} ({n} samples read before)", url, str(error.__cause__ or error))
    if error is not None:
        raise CorruptSample(f"{url}: unreadable tar after {n} samples: {error}")
    if n == 0:
        raise ShardError(f"empty shard: {url} contains no .flac/.json samples")


def iter_sample_json(
    urls: str | Sequence[str],
    limit: int | None = None,
    allow_pipe: bool = False,
    policy: ReadPolicy | None = None,
) -> Iterator[dict]:
    """The parsed JSON member of each sample, in shard order, without reading audio (e.g. captions for a vocabulary)."""
    n = 0
    for shard in expand_urls(urls, allow_pipe, policy):
        try:
            with closing(open_stream(shard.url, policy)) as stream:
                for _, data in iter_tar(stream, lambda name: split_member(name)[1] == "json"):
                    if limit is not None and n >= limit:
                        return
                    try:
                        yield json.loads(data)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        log.warning("%s: skipping unreadable JSON member: %s", shard.url, e)
                        continue
                    n += 1
        except ReadFailed as e:  # every process must see the same texts: no silent skip here
            raise ShardError(f"cannot read the sample JSON of a shard: {e}") from None


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, lower-case extension), split at the first dot of the file name."""
    folder, _, file = name.rpartition("/")
    stem, _, ext = file.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _wanted(name: str) -> bool:
    return split_member(name)[1] in MEMBERS


def parse_record(key: str, members: dict[str, bytes], url: str, shard: int, index: int) -> Record:
    """Check and parse one sample's members; CorruptSample names the shard, key and problem."""
    for ext in MEMBERS:
        if ext not in members:
            raise CorruptSample(f"{url}: sample {key}: missing member {key}.{ext}")
    try:
        sample = Sample.from_json(members["json"])
    except SchemaError as e:
        raise CorruptSample(f"{url}: {key}.json: {e}") from None
    if sample.key != key.rsplit("/", 1)[-1]:
        raise CorruptSample(f"{url}: member key {key!r} does not match the JSON key {sample.key!r}")
    return Record(sample, members["flac"], url, shard, index)


def keeps(part: Part, index: int) -> bool:
    """Whether a worker reading `part` keeps the sample at position `index` of the shard."""
    _, start, stop, stride, offset = part
    return index >= start and (stop is None or index < stop) and index % stride == offset


def iter_part(
    shards: Sequence[Shard], part: Part, skips: Skips, policy: ReadPolicy | None = None
) -> Iterator[Record]:
    """The records of one part of a shard, in order; corrupt ones are skipped and counted.

    An unreadable shard (ShardReadError) is raised, not skipped: the caller reads a split whole or not at all.
    """
    s, _, stop, _, _ = part
    url = shards[s].url
    try:
        for index, (key, members) in enumerate(iter_groups(url, policy)):
            if stop is not None and index >= stop:
                return
            if keeps(part, index):
                try:
                    yield parse_record(key, members, url, s, index)
                except CorruptSample as e:
                    skips.note(e)
    except ShardReadError:
        raise
    except CorruptSample as e:
        skips.note(e)
