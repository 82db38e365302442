"""Tar shards -> records: each sample's parsed JSON and FLAC bytes, with where it came from.

Only a sample's `.flac` and `.json` members are read (JSON with json; nothing is ever unpickled) and member names
never touch the filesystem. A corrupt sample is skipped and counted, never fatal: every reader of shards (the
training stream, the tokenizer pass, evaluation) keeps a `ReadStats` and reports the same counts, `expected`,
`read` and `skipped` (see `ReadStats` for how a broken shard is counted). Captions and region texts are cut to a
maximum length on the way (`cap_texts`), counted as `truncated`. A shard the network or store could not deliver
after every retry (shards.remote) raises ShardReadError, a CorruptSample: training skips and counts it like a
corrupt shard (`unreadable_shards`); evaluation (`iter_part`) and the tokenizer pass let it through, since a split
read in part would give wrong metrics, and ranks must see the same texts.
"""

from __future__ import annotations

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
DEFAULT_MAX_TEXT_CHARS = 2000
"""Captions and region texts are cut to this many characters by default (as the converters do)."""


class CorruptSample(ValueError):
    """A sample (or the rest of a shard) that cannot be read; skipped with a warning, never fatal."""


class ShardReadError(CorruptSample):
    """A shard that could not be read to its end: its url failed after every retry (or for good: 404, 403).

    Names the url and the cause; training skips and counts it, evaluation stops on it.
    """

    def __init__(self, message: str, url: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.url, self.cause = url, cause


COUNTS = ("expected", "read", "skipped", "truncated", "unreadable_shards")
"""The fields of ReadStats.as_dict(), in report order."""


class ReadStats:
    """What one reader of shards met: samples expected, read intact and skipped as corrupt; texts truncated.

    `expected == read + skipped` at every moment. A sample is expected once the reader reaches its position in a
    shard; when a shard breaks (truncated, not a tar, unreachable) or ends early, the rest of this reader's share of
    it is expected and skipped at once: the share left per the manifest's sample count, or 1 when the count is
    unknown. Every skip is logged as a warning naming the shard and why; a shard given up after every network retry
    (ShardReadError) is also counted in `unreadable_shards`.

    Readers that run in several processes (DataLoader workers, ranks) each keep one and add them up (`add`,
    `as_dict`/`from_dict` to send them between processes).
    """

    def __init__(
        self,
        expected: int = 0,
        read: int = 0,
        skipped: int = 0,
        truncated: int = 0,
        unreadable_shards: int = 0,
    ) -> None:
        self.expected, self.read, self.skipped, self.truncated = expected, read, skipped, truncated
        self.unreadable_shards = unreadable_shards

    def got(self, samples: int = 1) -> None:
        """`samples` read intact."""
        self.expected += samples
        self.read += samples

    def skip(self, error: Exception, samples: int = 1) -> None:
        """`samples` lost to `error` (a corrupt member, or the unreadable rest of a shard)."""
        self.expected += samples
        self.skipped += samples
        if isinstance(error, ShardReadError):
            self.unreadable_shards += 1
            log.warning(
                "skipping unreadable shard: %s (%d sample%s)", error, samples, "" if samples == 1 else "s"
            )
            return
        log.warning("skipping corrupt data (%d sample%s): %s", samples, "" if samples == 1 else "s", error)

    def reject(self, error: Exception) -> None:
        """A sample counted as read turned out unusable (its audio does not decode): now counted as skipped."""
        self.read -= 1
        self.skipped += 1
        log.warning("skipping corrupt data (1 sample): %s", error)

    def add(self, other: ReadStats | dict[str, int]) -> ReadStats:
        """Add another reader's counts (a ReadStats or its as_dict()) to these; returns self."""
        d = other.as_dict() if isinstance(other, ReadStats) else other
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + int(d.get(name, 0)))
        return self

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in COUNTS}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ReadStats:
        return cls().add(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReadStats) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"ReadStats({', '.join(f'{k}={v}' for k, v in self.as_dict().items())})"


def share(part: Part, begin: int, end: int | None) -> int | None:
    """How many positions in [begin, end) of a shard a reader of `part` keeps; None when the end is unknown."""
    _, start, stop, stride, offset = part
    if stop is not None:
        end = stop if end is None else min(end, stop)
    if end is None:
        return None
    first = max(begin, start)
    first += (offset - first) % stride
    return len(range(first, end, stride))


def lost_rest(stats: ReadStats, error: Exception, part: Part, pos: int, count: int | None) -> None:
    """A shard broke (or ended) at position `pos`: the rest of the reader's share is skipped (1 when unknown)."""
    rest = share(part, pos, count)
    if rest is None:
        rest = 1
    if rest > 0:
        stats.skip(error, rest)


def cap_texts(sample: Sample, max_chars: int | None) -> int:
    """Cut the captions and region texts of `sample` to `max_chars` characters, in place; how many were cut."""
    if max_chars is None:
        return 0
    cut = 0
    for i, caption in enumerate(sample.captions):
        if isinstance(caption, str) and len(caption) > max_chars:
            sample.captions[i] = caption[:max_chars].rstrip()
            cut += 1
    for region in sample.strong:
        if isinstance(region.text, str) and len(region.text) > max_chars:
            region.text = region.text[:max_chars].rstrip()
            cut += 1
    return cut


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


def iter_groups(
    url: str, policy: ReadPolicy | None = None, wanted: Sequence[str] = MEMBERS
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a tar shard, in tar order; only the `wanted` members are read.

    Raises ShardError for a shard with no samples, CorruptSample when the tar itself breaks and ShardReadError
    when the url cannot be read (after `policy`'s retries), each after yielding what came before.
    """
    n = 0
    key, members, error, stopped = None, {}, None, False
    try:
        with closing(open_stream(url, policy)) as stream:
            for name, data in iter_tar(stream, lambda name: split_member(name)[1] in wanted):
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


def iter_samples(
    urls: str | Sequence[str],
    limit: int | None = None,
    allow_pipe: bool = False,
    stats: ReadStats | None = None,
    max_text_chars: int | None = None,
    policy: ReadPolicy | None = None,
) -> Iterator[Sample]:
    """The parsed JSON of each sample, in shard order, without reading audio (e.g. captions for a vocabulary).

    At most `limit` samples; corrupt samples and shards are skipped and counted in `stats` like the other readers
    do; texts are cut to `max_text_chars`. A shard unreadable after every network retry is a ShardError: every
    process must see the same texts (a silent skip on one rank would give it another vocabulary).
    """
    stats = stats if stats is not None else ReadStats()
    n = 0
    for s, shard in enumerate(expand_urls(urls, allow_pipe, policy)):
        whole: Part = (s, 0, None, 1, 0)
        pos = 0
        try:
            for key, members in iter_groups(shard.url, policy, wanted=("json",)):
                if limit is not None and n >= limit:
                    return
                pos += 1
                if "json" not in members:
                    stats.skip(CorruptSample(f"{shard.url}: sample {key}: missing member {key}.json"))
                    continue
                try:
                    sample = Sample.from_json(members["json"])
                except SchemaError as e:
                    stats.skip(CorruptSample(f"{shard.url}: {key}.json: {e}"))
                    continue
                stats.truncated += cap_texts(sample, max_text_chars)
                stats.got()
                n += 1
                yield sample
        except ShardReadError as e:
            raise ShardError(f"cannot read the sample JSON of a shard: {e}") from None
        except CorruptSample as e:
            lost_rest(stats, e, whole, pos, shard.num_samples)
            continue
        if shard.num_samples is not None and pos < shard.num_samples and (limit is None or n < limit):
            lost_rest(stats, _ended(shard.url, pos, shard.num_samples), whole, pos, shard.num_samples)


def split_member(name: str) -> tuple[str, str]:
    """Tar member name -> (sample key, lower-case extension), split at the first dot of the file name."""
    folder, _, file = name.rpartition("/")
    stem, _, ext = file.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _ended(url: str, pos: int, count: int) -> CorruptSample:
    return CorruptSample(f"{url}: the shard ends after {pos} samples, its manifest says {count}")


def parse_record(
    key: str,
    members: dict[str, bytes],
    url: str,
    shard: int,
    index: int,
    max_text_chars: int | None = None,
    stats: ReadStats | None = None,
) -> Record:
    """Check and parse one sample's members; CorruptSample names the shard, key and problem.

    Texts longer than `max_text_chars` are cut (counted in `stats.truncated` when given).
    """
    for ext in MEMBERS:
        if ext not in members:
            raise CorruptSample(f"{url}: sample {key}: missing member {key}.{ext}")
    try:
        sample = Sample.from_json(members["json"])
    except SchemaError as e:
        raise CorruptSample(f"{url}: {key}.json: {e}") from None
    if sample.key != key.rsplit("/", 1)[-1]:
        raise CorruptSample(f"{url}: member key {key!r} does not match the JSON key {sample.key!r}")
    cut = cap_texts(sample, max_text_chars)
    if stats is not None:
        stats.truncated += cut
    return Record(sample, members["flac"], url, shard, index)


def keeps(part: Part, index: int) -> bool:
    """Whether a worker reading `part` keeps the sample at position `index` of the shard."""
    _, start, stop, stride, offset = part
    return index >= start and (stop is None or index < stop) and index % stride == offset


def iter_part(
    shards: Sequence[Shard],
    part: Part,
    stats: ReadStats,
    max_text_chars: int | None = None,
    policy: ReadPolicy | None = None,
) -> Iterator[Record]:
    """The records of one part of a shard, in order; corrupt ones are skipped, everything counted in `stats`.

    An unreadable shard (ShardReadError) is raised, not skipped: the caller reads a split whole or not at all.
    """
    s, _, stop, _, _ = part
    url, count = shards[s].url, shards[s].num_samples
    pos = 0
    try:
        for index, (key, members) in enumerate(iter_groups(url, policy)):
            if stop is not None and index >= stop:
                return
            pos = index + 1
            if keeps(part, index):
                try:
                    record = parse_record(key, members, url, s, index, max_text_chars, stats)
                except CorruptSample as e:
                    stats.skip(e)
                    continue
                stats.got()
                yield record
    except ShardReadError:
        raise
    except CorruptSample as e:
        lost_rest(stats, e, part, pos, count)
        return
    end = stop if stop is not None else count
    if end is not None and pos < end:
        lost_rest(stats, _ended(url, pos, count if count is not None else end), part, pos, count)
