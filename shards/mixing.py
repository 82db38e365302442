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
like any other; a worker whose shards of one source all fail one after the other stops with ShardError. One source
inside one worker (its shards, shuffle buffer and state) is shards.sourcestream.SourceStream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.clips import Clip, collate, draw_mixup, load_clip, mix_clips
from shards.records import (
    CorruptSample,
    ReadStats,
)
from shards.remote import ReadPolicy
from shards.shardlist import ShardError, expand_urls
from shards.sourcestream import STRONG, WEAK, MixSpec, SourceSpec, SourceStream, seeded_rng, u64
from shards.transfer import BatchBuffers, BatchReceiver, passthrough, worker_shutdown

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
        draw = np.random.default_rng([u64(seed), index, 0x5EED]).random()
        return STRONG if draw < strong_prob else WEAK
    return STRONG if strong_every > 0 and (index + 1) % strong_every == 0 else WEAK


def choose_sources(rng: np.random.Generator, weights: Sequence[float], n: int) -> np.ndarray:
    """`n` source indices drawn independently with probability proportional to `weights`."""
    w = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(w), size=n, p=w / w.sum())


# ---------------------------------------------------------------------------------------------------------------------
# One logical worker: batches g = worker, worker+W, ...
# ---------------------------------------------------------------------------------------------------------------------


class WorkerStream:
    """Builds the batches of one logical worker of one rank, and its resumable state."""

    def __init__(self, spec: MixSpec, worker: int, state: dict[str, Any] | None = None) -> None:
        self.spec, self.worker = spec, worker
        self.stats = ReadStats()
        self.sources = [SourceStream(spec, i, worker, self.stats) for i in range(len(spec.sources))]
        self.rng = seeded_rng(spec.seed, spec.rank, worker, 0)
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
