"""Weighted mixing of weak and strong sources into an endless, exactly resumable stream of batches.

    stream = MixedStream(cfg.data, rank=rank, world_size=world, seed=cfg.run.seed)
    for batch in stream: ...                   # batch["kind"] is "weak" or "strong"
    sd = stream.state_dict()                   # after the batches consumed so far; plain types
    stream = MixedStream(...); stream.load_state_dict(sd)   # continues with exactly the same batches

How it works. Each rank runs W logical workers (W = data.num_workers, or 1 in-process); worker w builds whole
batches g = w, w+W, w+2W, ... of the rank's batch sequence. Batch g is strong or weak by a rule that depends
only on (g, config, seed), so every rank has the same kind at the same step (the cross-rank losses need that).
Inside a batch each sample's source is drawn by weight with the worker's RNG. Each (rank, worker) owns a
disjoint part of every source's shards (shards.shardlist.train_parts), reads resampled shards of that part
forever (open_clip style) through a per-source shuffle buffer. With `caption_sampling: all` it reads its part in
passes instead (each pass: its shards in a new random order, every sample once, a weak sample as one item per
caption) and empties the shuffle buffer before the next pass begins, so each pass yields every (clip, caption) pair
exactly once, like an epoch of the DCASE baseline's DataLoader over Clotho(flat_captions=True).

Resuming exactly: every batch carries its worker's state after producing it (RNG states, open shard and
position, and the shuffle buffer as (shard, position) references, refilled on load). The consuming process
keeps the latest state per worker and the number of batches consumed n. On load, physical DataLoader worker
p runs logical worker (p + n) % W, so the DataLoader's round-robin (which always starts at worker 0)
continues the original order with no reordering buffer.

Remote shards (shards.remote): a read retried successfully is invisible (the same bytes, the same batches). A shard
still unreadable after the retries is skipped with a warning and counted (`unreadable_shards`) and drawn again later
like any other; a worker whose shards of one source all fail one after the other stops with ShardError.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.clips import Clip, collate, draw_mixup, load_clip, mix_clips
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
from shards.shardlist import Shard, ShardError, expand_urls, train_parts
from shards.transfer import BatchBuffers, BatchReceiver, passthrough, worker_shutdown

WEAK, STRONG = "weak", "strong"
STATE_VERSION = 1
MAX_UNUSABLE = 1000
"""Consecutive samples of a source without captions (weak) / regions (strong) before it is an error."""


class SourceSettings(Protocol):
    """What MixedStream reads from one source config (trainer.config.SourceConfig)."""

    name: str
    urls: str | list[str]
    weight: float


class DataSettings(Protocol):
    """What MixedStream reads from the data config (trainer.config.DataConfig; shards does not import trainer)."""

    sample_rate: int
    clip_seconds: float
    batch_size: int
    num_workers: int
    weak: Sequence[SourceSettings]
    strong: Sequence[SourceSettings]
    strong_every: int
    strong_prob: float | None
    shuffle_buffer: int
    min_region_overlap: float
    allow_pipe: bool
    retries: int
    timeout_s: float
    retry_backoff_s: float
    caption_sampling: str
    mixup: Any
    """`prob` and `alpha` (trainer.config.MixupConfig)."""
    max_text_chars: int


def batch_kind(index: int, strong_every: int, strong_prob: float | None, seed: int) -> str:
    """Kind of the rank's batch `index`: the same on every rank (depends on index, config and seed only)."""
    if strong_prob is not None:
        draw = np.random.default_rng([_u64(seed), index, 0x5EED]).random()
        return STRONG if draw < strong_prob else WEAK
    return STRONG if strong_every > 0 and (index + 1) % strong_every == 0 else WEAK


def choose_sources(rng: np.random.Generator, weights: Sequence[float], n: int) -> np.ndarray:
    """`n` source indices drawn independently with probability proportional to `weights`."""
    w = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(w), size=n, p=w / w.sum())


def _u64(x: int) -> int:
    return x & 0xFFFF_FFFF_FFFF_FFFF


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_u64(e) for e in entropy])))


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


# ---------------------------------------------------------------------------------------------------------------------
# One source inside one worker
# ---------------------------------------------------------------------------------------------------------------------


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
        self.rng = _rng(spec.seed, spec.rank, worker, source, 1)
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


# ---------------------------------------------------------------------------------------------------------------------
# One logical worker: batches g = worker, worker+W, ...
# ---------------------------------------------------------------------------------------------------------------------


class WorkerStream:
    """Builds the batches of one logical worker of one rank, and its resumable state."""

    def __init__(self, spec: MixSpec, worker: int, state: dict[str, Any] | None = None) -> None:
        self.spec, self.worker = spec, worker
        self.stats = ReadStats()
        self.sources = [SourceStream(spec, i, worker, self.stats) for i in range(len(spec.sources))]
        self.rng = _rng(spec.seed, spec.rank, worker, 0)
        self.buffers = BatchBuffers()
        self.index = worker
        if state is not None:
            self.load_state_dict(state)

    def next_batch(self) -> dict:
        spec, g = self.spec, self.index
        kind = batch_kind(g, spec.strong_every, spec.strong_prob, spec.seed)
        members = [i for i, s in enumerate(spec.sources) if s.kind == kind]
        picks = choose_sources(self.rng, [spec.sources[i].weight for i in members], spec.batch_size)
        clips = [self._next_clip(members[p], kind) for p in picks]
        if kind == WEAK and spec.mixup_prob > 0:
            clips = mix_clips(clips, draw_mixup(self.rng, len(clips), spec.mixup_prob, spec.mixup_alpha))
        batch = collate(clips, kind, spec.window, buffers=self.buffers)
        self.index += spec.num_workers
        batch.update(_index=g, _worker=self.worker, _state=self.state_dict())
        return batch

    def _next_clip(self, source: int, kind: str) -> Clip:
        spec, name = self.spec, self.spec.sources[source].name
        for _ in range(MAX_UNUSABLE):
            record, caption = self.sources[source].next_record()
            try:
                clip = load_clip(
                    record,
                    name,
                    spec.sample_rate,
                    spec.window,
                    spec.min_overlap,
                    rng=self.rng,
                    need=kind,
                    caption_index=caption,
                )
            except CorruptSample as e:
                self.stats.reject(e)
                continue
            if clip is not None:
                return clip
        what = "captions" if kind == WEAK else "regions left after cropping"
        raise ShardError(f"source {name}: {MAX_UNUSABLE} samples in a row had no {what} for a {kind} batch")

    def state_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "rng": self.rng.bit_generator.state,
            "stats": self.stats.as_dict(),
            "sources": [s.state_dict() for s in self.sources],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])
        self.rng.bit_generator.state = state["rng"]
        self.stats.add(state["stats"])  # the sources share this object
        for stream, sd in zip(self.sources, state["sources"], strict=True):
            stream.load_state_dict(sd)


class MixDataset(IterableDataset):
    """DataLoader side: physical worker p runs logical worker (p + first) % W from its saved state."""

    def __init__(self, spec: MixSpec, states: Sequence[dict[str, Any] | None], first: int) -> None:
        self.spec, self.states, self.first = spec, list(states), first

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None and info.num_workers != self.spec.num_workers:
            raise RuntimeError(f"expected {self.spec.num_workers} DataLoader workers, got {info.num_workers}")
        physical = info.id if info is not None else 0
        worker = (physical + self.first) % self.spec.num_workers
        stream = WorkerStream(self.spec, worker, self.states[worker])
        while True:
            yield stream.next_batch()


# ---------------------------------------------------------------------------------------------------------------------
# The rank's stream
# ---------------------------------------------------------------------------------------------------------------------


class MixedStream:
    """Endless weak/strong batches of one rank from `data.weak` / `data.strong`, with exact state_dict()."""

    def __init__(self, cfg: DataSettings, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        sources = []
        for kind in (WEAK, STRONG):
            for i, src in enumerate(cfg.weak if kind == WEAK else cfg.strong):
                where = f"data.{kind}.{i} ({src.name})"
                if not (
                    isinstance(src.weight, (int, float)) and math.isfinite(src.weight) and src.weight > 0
                ):
                    raise ValueError(f"{where}.weight: must be a finite number > 0, got {src.weight!r}")
                try:
                    shards = tuple(expand_urls(src.urls, cfg.allow_pipe, ReadPolicy.of(cfg)))
                except ShardError as e:
                    raise ShardError(f"{where}: {e}") from None
                sources.append(SourceSpec(src.name, kind, shards, float(src.weight)))
        names = [s.name for s in sources]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"data: source names must be non-empty and unique, got {names}")
        prob, every = cfg.strong_prob, cfg.strong_every
        can_strong = prob > 0 if prob is not None else every > 0
        can_weak = prob < 1 if prob is not None else every != 1
        for kind, possible in ((WEAK, can_weak), (STRONG, can_strong)):
            if possible and not any(s.kind == kind for s in sources):
                raise ValueError(
                    f"data.{kind}: {kind} batches are scheduled but no {kind} source is configured"
                )
            if not possible and any(s.kind == kind for s in sources):
                raise ValueError(
                    f"data.{kind}: sources are configured but no {kind} batch is scheduled (strong_every/strong_prob)"
                )
        self.spec = MixSpec(
            sources=tuple(sources),
            sample_rate=cfg.sample_rate,
            window=round(cfg.clip_seconds * cfg.sample_rate),
            batch_size=cfg.batch_size,
            strong_every=every,
            strong_prob=prob,
            shuffle_buffer=cfg.shuffle_buffer,
            min_overlap=cfg.min_region_overlap,
            max_text_chars=cfg.max_text_chars,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=max(1, cfg.num_workers),
            read=ReadPolicy.of(cfg),
            caption_sampling=cfg.caption_sampling,
            mixup_prob=cfg.mixup.prob,
            mixup_alpha=cfg.mixup.alpha,
        )
        self.processes = cfg.num_workers
        self.iterations = 0
        self.consumed = 0
        self.states: list[dict[str, Any] | None] = [None] * self.spec.num_workers
        self.seen = dict.fromkeys(names, 0)
        self.base_stats: dict[str, int] = {}

    @property
    def data_seen(self) -> dict[str, int]:
        """Samples consumed per source name so far."""
        return dict(self.seen)

    @property
    def read_stats(self) -> ReadStats:
        """What the workers read up to the batches consumed so far (expected, read, skipped, truncated), plus the
        counts carried over from a stream this one replaced (`carry_counts`)."""
        total = ReadStats.from_dict(self.base_stats)
        for state in self.states:
            if state is not None:
                total.add(state["stats"])
        return total

    def carry_counts(self, data_seen: dict[str, int], stats: dict[str, int]) -> None:
        """Continue the counts of an earlier stream that this one replaces (e.g. after a resume with another data
        setup): samples seen per source name (names no longer configured are kept) and read counts."""
        for name, n in data_seen.items():
            self.seen[name] = self.seen.get(name, 0) + int(n)
        self.base_stats = ReadStats.from_dict(self.base_stats).add(stats).as_dict()

    @property
    def unreadable_shards(self) -> int:
        """Shards skipped because the network or store failed after every retry, up to the batches consumed so far."""
        return self.read_stats.unreadable_shards

    def __iter__(self) -> Iterator[dict]:
        """Batches from where the consumer stands; a new iterator supersedes (and stops) the previous one."""
        self.iterations += 1
        current = self.iterations
        dataset = MixDataset(self.spec, self.states, self.consumed)
        batches = (
            DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.processes,
                collate_fn=passthrough,
                generator=torch.Generator(),  # keeps the global torch RNG untouched
            )
            if self.processes > 0
            else dataset
        )
        receive = BatchReceiver(self.spec.sample_rate)
        with worker_shutdown(iter(batches)) as produced:
            for batch in produced:
                if current != self.iterations:
                    raise RuntimeError(
                        "this data iterator was superseded by a newer iter() of the same stream"
                    )
                if batch["_index"] != self.consumed:
                    raise RuntimeError(
                        f"data stream out of order: batch {batch['_index']}, expected {self.consumed}"
                    )
                self.states[batch.pop("_worker")] = batch.pop("_state")
                del batch["_index"]
                self.consumed += 1
                for name in batch["sources"]:
                    self.seen[name] += 1
                yield receive(batch)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python state (JSON/torch.save-able) after the last batch consumed."""
        spec = self.spec
        return {
            "version": STATE_VERSION,
            "rank": spec.rank,
            "world_size": spec.world_size,
            "num_workers": spec.num_workers,
            "seed": spec.seed,
            "sources": {s.name: len(s.shards) for s in spec.sources},
            "caption_sampling": spec.caption_sampling,
            "consumed": self.consumed,
            "data_seen": dict(self.seen),
            "base_stats": dict(self.base_stats),
            "workers": [_plain(s) for s in self.states],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from a stream with the same sources, rank, world size, workers and seed)."""
        spec = self.spec
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"data state: expected a dict with version {STATE_VERSION}")
        expected = {
            "rank": spec.rank,
            "world_size": spec.world_size,
            "num_workers": spec.num_workers,
            "seed": spec.seed,
            "sources": {s.name: len(s.shards) for s in spec.sources},
            "caption_sampling": spec.caption_sampling,
        }
        for key, value in expected.items():
            if state.get(key, "random" if key == "caption_sampling" else None) != value:
                hint = " (data.num_workers; 0 counts as 1)" if key == "num_workers" else ""
                raise ValueError(
                    f"data state: saved with {key}={state.get(key)!r}, this stream has {value!r}{hint}; "
                    "resume with the same data setup or start the data stream fresh"
                )
        if len(state["workers"]) != spec.num_workers:
            raise ValueError(
                f"data state: {len(state['workers'])} worker states for {spec.num_workers} workers"
            )
        self.consumed = int(state["consumed"])
        self.states = list(state["workers"])
        self.seen = {name: 0 for name in self.seen}
        self.seen.update({name: int(n) for name, n in state["data_seen"].items()})
        self.base_stats = dict(state.get("base_stats", {}))


def _plain(x: Any) -> Any:
    """numpy arrays/scalars -> lists/ints, recursively (the state must be plain Python)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
