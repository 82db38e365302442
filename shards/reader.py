"""Finite evaluation reading: every sample of a split exactly once over ranks x workers, whole clips, in batches.

    for batch in iter_eval_batches("shards/clotho/evaluation", sample_rate=32000, batch_size=32):
        batch["audio"], batch["audio_mask"], batch["captions"]   # [B, N] float32, [B, N] bool, list[list[str]]

Records come from shards.records, clips and batches from shards.clips, the move between processes from
shards.transfer. Training streams with weighted mixing live in shards.mixing. A shard that cannot be read after
every retry (a network or store failure) stops the evaluation with ShardReadError: metrics of a split read in part
would be wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.clips import Clip, collate, load_clip
from shards.records import DEFAULT_MAX_TEXT_CHARS, CorruptSample, ReadStats, iter_part
from shards.remote import ReadPolicy
from shards.shardlist import Shard, ShardError, eval_parts, expand_urls
from shards.transfer import BatchBuffers, BatchReceiver, passthrough, worker_shutdown

# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: finite, every sample exactly once over ranks x workers
# ---------------------------------------------------------------------------------------------------------------------


class EvalShards(IterableDataset):
    """The batches of one rank: each DataLoader worker reads its own part of the shards (see eval_parts)."""

    def __init__(
        self,
        shards: Sequence[Shard],
        sample_rate: int,
        batch_size: int,
        rank: int,
        world_size: int,
        num_workers: int,
        window: int | None,
        min_overlap: float,
        max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
        policy: ReadPolicy | None = None,
    ) -> None:
        self.shards = list(shards)
        self.max_text_chars = max_text_chars
        self.policy = policy
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.window = window
        self.min_overlap = min_overlap
        self.rank = rank
        self.world_size = world_size
        self.num_workers = max(1, num_workers)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        total = self.world_size * self.num_workers
        parts = eval_parts([s.num_samples for s in self.shards], total, self.rank * self.num_workers + worker)
        stats = ReadStats()
        buffers = BatchBuffers()
        clips: list[Clip] = []
        for part in parts:
            for record in iter_part(self.shards, part, stats, self.max_text_chars, self.policy):
                try:
                    clip = load_clip(
                        record, record.sample.dataset, self.sample_rate, self.window, self.min_overlap
                    )
                except CorruptSample as e:
                    stats.reject(e)
                    continue
                clips.append(clip)  # type: ignore[arg-type]
                if len(clips) == self.batch_size:
                    yield self._collate(clips, buffers)
                    clips = []
        if clips:
            yield self._collate(clips, buffers)
        yield {"read_stats": stats.as_dict()}

    def _collate(self, clips: list[Clip], buffers: BatchBuffers) -> dict:
        kind = "strong" if any(c.regions for c in clips) else "weak"
        return collate(clips, kind, self.window, eval_mode=True, buffers=buffers)


def first_samples(shards: Sequence[Shard], n: int) -> list[Shard]:
    """The shards holding the first `n` samples in order, the last one cut to its share (needs manifest counts).

    The cut is on the global sample order, so the evaluated subset does not depend on ranks or workers.
    """
    if n <= 0:
        raise ValueError(f"max_samples must be > 0, got {n}")
    unknown = [s.url for s in shards if s.num_samples is None]
    if unknown:
        raise ShardError(f"max_samples needs sample counts from manifest.json; none for {unknown[0]}")
    out: list[Shard] = []
    left = n
    for s in shards:
        if left <= 0:
            break
        take = min(left, s.num_samples)  # type: ignore[type-var]
        out.append(Shard(s.url, take))
        left -= take
    return out


def iter_eval_batches(
    urls: str | Sequence[str],
    *,
    sample_rate: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    clip_seconds: float | None = None,
    allow_pipe: bool = False,
    min_region_overlap: float = 0.5,
    stats: ReadStats | None = None,
    max_samples: int | None = None,
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
    policy: ReadPolicy | None = None,
) -> Iterator[dict]:
    """Finite evaluation batches of this rank; over all ranks and workers every sample comes exactly once.

    clip_seconds None: whole clips, padded to the longest in the batch; a number: the window [0, clip_seconds).
    max_samples: only the first N samples of the split in shard order (the same subset for any world size).
    Captions are all of a sample's captions (list[list[str]]), cut to `max_text_chars` like region texts; region
    fields are always present. `stats`, if given, receives this rank's counts (shards.records.ReadStats: expected,
    read, skipped, truncated), added when the iteration ends. `policy`: retries and timeout of network
    reads; a shard still unreadable after them raises ShardReadError.
    """
    if batch_size <= 0 or sample_rate <= 0:
        raise ValueError(f"batch_size and sample_rate must be > 0, got {batch_size} and {sample_rate}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    if clip_seconds is not None and clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be > 0 or None, got {clip_seconds}")
    shards = expand_urls(urls, allow_pipe, policy)
    if max_samples is not None:
        shards = first_samples(shards, max_samples)
    window = None if clip_seconds is None else round(clip_seconds * sample_rate)
    dataset = EvalShards(
        shards,
        sample_rate,
        batch_size,
        rank,
        world_size,
        num_workers,
        window,
        min_region_overlap,
        max_text_chars,
        policy,
    )
    batches = (
        DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=passthrough,
            generator=torch.Generator(),  # keeps the global torch RNG untouched
        )
        if num_workers > 0
        else dataset
    )
    counts = ReadStats()
    receive = BatchReceiver(sample_rate)
    with worker_shutdown(iter(batches)) as produced:
        for batch in produced:
            if "audio" not in batch:
                counts.add(batch["read_stats"])
                continue
            yield receive(batch)
    if stats is not None:
        stats.add(counts)
