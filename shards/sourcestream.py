"""One source inside one worker of the training stream: its part of the shards, read resampled (or in passes)
through a shuffle buffer, with a resumable state (shards.mixing builds the batches from these).

The shuffle buffer is saved as (shard, position) references and refilled on load, so a state stays small and a
resumed stream yields exactly the records an uninterrupted one would. Remote shards: a shard still unreadable after
the retries of shards.remote is skipped with a warning and counted (`unreadable_shards`); a worker whose shards of
one source all fail one after the other stops with ShardError.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.records import (
    CorruptSample,
    ReadStats,
    Record,
    ShardReadError,
    iter_groups,
    keeps,
    lost_rest,
    parse_record,
    share,
)
from shards.remote import ReadPolicy
from shards.shardlist import Shard, ShardError, train_parts

WEAK, STRONG = "weak", "strong"


def u64(x: int) -> int:
    return x & 0xFFFF_FFFF_FFFF_FFFF


def seeded_rng(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([u64(e) for e in entropy])))


@dataclass(frozen=True)
class SourceSpec:
    """One configured source with its resolved shards."""

    name: str
    kind: str
    shards: tuple[Shard, ...]
    weight: float


@dataclass(frozen=True)
class MixSpec:
    """Everything a worker needs to build its batches (picklable, sent to DataLoader workers)."""

    sources: tuple[SourceSpec, ...]
    sample_rate: int
    window: int
    batch_size: int
    strong_every: int
    strong_prob: float | None
    shuffle_buffer: int
    min_overlap: float
    max_text_chars: int
    seed: int
    rank: int
    world_size: int
    num_workers: int
    read: ReadPolicy
    caption_sampling: str = "random"
    mixup_prob: float = 0.0
    mixup_alpha: float = 0.5


class SourceStream:
    """Endless records of one source for one (rank, worker): resampled shards of its part, a shuffle buffer."""

    def __init__(self, spec: MixSpec, source: int, worker: int, stats: ReadStats) -> None:
        src = spec.sources[source]
        self.name, self.shards, self.stats, self.read = src.name, src.shards, stats, spec.read
        self.max_text_chars = spec.max_text_chars
        self.passes = spec.caption_sampling == "all"
        self.per_caption = self.passes and src.kind == WEAK
        total = spec.world_size * spec.num_workers
        self.global_worker = spec.rank * spec.num_workers + worker
        self.parts = {p[0]: p for p in train_parts(len(src.shards), total, self.global_worker)}
        self.order = sorted(self.parts)
        counts = [src.shards[s].num_samples for s in self.order]
        weights = np.array(counts if all(counts) else [1] * len(counts), dtype=np.float64)
        self.probs = weights / weights.sum()
        self.size = max(1, spec.shuffle_buffer)
        if all(counts) and not self.passes:  # a buffer larger than the worker's share would only hold repeats
            share = sum(len(range(self.parts[s][4], c, self.parts[s][3])) for s, c in zip(self.order, counts))
            self.size = max(1, min(self.size, share))
        self.rng = seeded_rng(spec.seed, spec.rank, worker, source, 1)
        self.buffer: list[Record] | list[tuple[Record, int | None]] = []
        self.groups: Iterator[tuple[str, dict[str, bytes]]] | None = None
        self.shard: int | None = None
        self.pos = 0
        self.kept = 0
        self.barren: set[int] = set()
        self.failing: set[int] = set()
        self.pass_order: list[int] = []  # passes: this pass's shards, in reading order
        self.pass_next = 0  # passes: position in pass_order of the next shard to open

    def next_record(self) -> tuple[Record, int | None]:
        """The next record out of the shuffle buffer, and the caption it stands for (None: the clip draws one)."""
        if self.passes:
            return self._next_item()
        while len(self.buffer) < self.size:
            self.buffer.append(self._read())
        return self._take(), None

    def _take(self):
        i = int(self.rng.integers(len(self.buffer)))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    def _next_item(self) -> tuple[Record, int | None]:
        while True:
            while len(self.buffer) < self.size:
                record = self._read()
                if record is None:  # this pass is read; the buffer empties before the next one begins
                    break
                captions = len(record.sample.captions) if self.per_caption else 0
                self.buffer.extend([(record, c) for c in range(captions)] or [(record, None)])
            if self.buffer:
                return self._take()
            self.pass_order = [self.order[int(i)] for i in self.rng.permutation(len(self.order))]
            self.pass_next = 0

    def _read(self) -> Record | None:
        while True:
            if self.groups is None:
                if not self.passes:
                    self._open(self.order[int(self.rng.choice(len(self.order), p=self.probs))], 0)
                elif self.pass_next < len(self.pass_order):
                    self.pass_next += 1
                    self._open(self.pass_order[self.pass_next - 1], 0)
                else:
                    return None
            assert self.groups is not None and self.shard is not None
            part, shard = self.parts[self.shard], self.shards[self.shard]
            try:
                key, members = next(self.groups)
            except StopIteration:
                if shard.num_samples is not None and self.pos < shard.num_samples:
                    error = CorruptSample(
                        f"{shard.url}: the shard ends after {self.pos} samples, its manifest says {shard.num_samples}"
                    )
                    lost_rest(self.stats, error, part, self.pos, shard.num_samples)
                self._close()
                continue
            except ShardReadError as e:
                self._unreadable(e)
                continue
            except CorruptSample as e:
                lost_rest(self.stats, e, part, self.pos, shard.num_samples)
                self._close()
                continue
            index, self.pos = self.pos, self.pos + 1
            if not keeps(part, index):
                continue
            try:
                record = parse_record(
                    key, members, shard.url, self.shard, index, self.max_text_chars, self.stats
                )
            except CorruptSample as e:
                self.stats.skip(e)
                continue
            self.stats.got()
            self.kept += 1
            self.failing.clear()
            return record

    def _open(self, shard: int, skip: int) -> None:
        self.shard, self.pos, self.kept = shard, 0, 0
        self.groups = iter_groups(self.shards[shard].url, self.read)
        for _ in range(skip):
            try:
                next(self.groups)
            except ShardReadError as e:
                # unreachable now: skipped, as if its read had failed in the first run
                self._unreadable(e)
                return
            except (StopIteration, CorruptSample):
                raise ShardError(
                    f"source {self.name}: shard {self.shards[shard].url} has fewer than {skip} samples now; "
                    "it changed since the data state was saved"
                ) from None
            self.pos += 1
        self.kept = skip

    def _close(self) -> None:
        assert self.shard is not None
        if self.kept == 0:
            self.barren.add(self.shard)
            if self.barren >= set(self.order):
                _, _, _, stride, _ = self.parts[self.shard]
                raise ShardError(
                    f"source {self.name}: worker {self.global_worker} found no readable samples in its shards "
                    f"({', '.join(self.shards[s].url for s in self.order)}"
                    + (f", every {stride}-th sample" if stride > 1 else "")
                    + "); add shards or use fewer workers/ranks"
                )
        self.groups, self.shard = None, None

    def _unreadable(self, error: ShardReadError) -> None:
        """Skip and count a shard whose read failed after every retry; an error once all of ours failed in a row."""
        assert self.shard is not None
        rest = share(self.parts[self.shard], self.pos, self.shards[self.shard].num_samples)
        self.stats.skip(error, 1 if rest is None else rest)  # counted in unreadable_shards too
        self.failing.add(self.shard)
        self.groups, self.shard = None, None
        if self.failing >= set(self.order):
            raise ShardError(
                f"source {self.name}: worker {self.global_worker} could read none of its {len(self.order)} "
                f"shard(s), one after the other (the last: {error}); is the server or store reachable?"
            )

    def state_dict(self) -> dict[str, Any]:
        if not self.passes:
            refs = [(r.shard, r.index) for r in self.buffer]
        else:  # (shard, position, caption; -1: none)
            refs = [(r.shard, r.index, -1 if c is None else c) for r, c in self.buffer]
        state = {
            "rng": self.rng.bit_generator.state,
            "shard": self.shard,
            "pos": self.pos,
            "buffer": np.array(refs, dtype=np.int64).reshape(-1, 3 if self.passes else 2),
        }
        if self.passes:
            state.update(pass_order=list(self.pass_order), pass_next=self.pass_next)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore RNG and shard position, and refill the shuffle buffer by re-reading the referenced samples."""
        items = np.asarray(state["buffer"], dtype=np.int64).reshape(-1, 3 if self.passes else 2)
        refs = [(int(row[0]), int(row[1])) for row in items]
        wanted: dict[int, set[int]] = {}
        for s, i in refs:
            if s not in self.parts:
                raise ValueError(f"source {self.name}: state refers to shard {s}, not one of this worker's")
            wanted.setdefault(s, set()).add(i)
        found: dict[tuple[int, int], Record] = {}
        unreadable: set[int] = set()
        for s, indices in sorted(wanted.items()):
            url = self.shards[s].url
            last = max(indices)
            try:
                for index, (key, members) in enumerate(iter_groups(url, self.read)):
                    if index in indices:
                        found[s, index] = parse_record(key, members, url, s, index, self.max_text_chars)
                    if index >= last:
                        break
            except ShardReadError as e:
                # its buffered samples are dropped (counted as skipped); the buffer refills from the stream
                self.stats.skip(e, len(indices))
                unreadable.add(s)
        refs = [ref for ref in refs if ref[0] not in unreadable or ref in found]
        missing = [ref for ref in refs if ref not in found]
        if missing:
            s, i = missing[0]
            raise ShardError(
                f"source {self.name}: shard {self.shards[s].url} has no sample at position {i} any more; "
                "it changed since the data state was saved"
            )
        if self.passes:
            self.buffer = [(found[ref], None if c < 0 else int(c)) for ref, c in zip(refs, items[:, 2])]
            self.pass_order = [int(s) for s in state["pass_order"]]
            self.pass_next = int(state["pass_next"])
        else:
            self.buffer = [found[ref] for ref in refs]
        self.rng.bit_generator.state = state["rng"]
        self.groups, self.shard = None, None
        if state["shard"] is not None:
            self._open(int(state["shard"]), int(state["pos"]))
