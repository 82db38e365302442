"""Streaming reader: tar shards -> samples -> cropped int16 clips -> batches; finite evaluation iteration.

    for batch in iter_eval_batches("shards/clotho/evaluation", sample_rate=32000, batch_size=32):
        batch["audio"], batch["audio_mask"], batch["captions"]   # [B, N] float32, [B, N] bool, list[list[str]]

Audio is decoded with soundfile (only the window that is used), JSON with json; nothing is ever unpickled and
member names never touch the filesystem. Workers build whole batches with int16 audio in reused shared-memory
buffers (half the bytes of float32, no fresh pages per batch); `BatchReceiver` converts to float32 in the
consuming process. Training streams with weighted mixing live in shards.mixing.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen

from shards.audio import resample
from shards.schema import Sample, SchemaError, stable_id
from shards.shardlist import Part, Shard, ShardError, eval_parts, expand_urls
from shards.tarstream import iter_tar

log = logging.getLogger(__name__)

MEMBERS = ("flac", "json")
"""Tar members a sample is made of; every other member is ignored (never decoded)."""
RESAMPLE_CONTEXT = 0.05
"""Seconds of audio decoded on each side of a window that is resampled, so filter edges fall outside it."""
OVERLAP_EPS = 1e-6


class CorruptSample(ValueError):
    """A sample (or the rest of a shard) that cannot be read; skipped with a warning, never fatal."""


class Skips:
    """Counts corrupt samples skipped and logs each one as a warning."""

    def __init__(self, count: int = 0) -> None:
        self.count = count

    def note(self, error: Exception) -> None:
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


def iter_groups(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a tar shard, in tar order; only .flac/.json members are read.

    Raises ShardError for a shard with no samples and CorruptSample when the tar itself breaks (after
    yielding what came before the damage).
    """
    n = 0
    key, members, error, stopped = None, {}, None, False
    try:
        with closing(gopen(url, "rb")) as stream:
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
    if key is not None:
        n += 1
        yield key, members
    if error is not None:
        raise CorruptSample(f"{url}: unreadable tar after {n} samples: {error}")
    if n == 0:
        raise ShardError(f"empty shard: {url} contains no .flac/.json samples")


def iter_sample_json(
    urls: str | Sequence[str], limit: int | None = None, allow_pipe: bool = False
) -> Iterator[dict]:
    """The parsed JSON member of each sample, in shard order, without reading audio (e.g. captions for a vocabulary)."""
    n = 0
    for shard in expand_urls(urls, allow_pipe):
        with closing(gopen(shard.url, "rb")) as stream:
            for _, data in iter_tar(stream, lambda name: split_member(name)[1] == "json"):
                if limit is not None and n >= limit:
                    return
                try:
                    yield json.loads(data)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    log.warning("%s: skipping unreadable JSON member: %s", shard.url, e)
                    continue
                n += 1


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


def iter_part(shards: Sequence[Shard], part: Part, skips: Skips) -> Iterator[Record]:
    """The records of one part of a shard, in order; corrupt ones are skipped and counted."""
    s, _, stop, _, _ = part
    url = shards[s].url
    try:
        for index, (key, members) in enumerate(iter_groups(url)):
            if stop is not None and index >= stop:
                return
            if keeps(part, index):
                try:
                    yield parse_record(key, members, url, s, index)
                except CorruptSample as e:
                    skips.note(e)
    except CorruptSample as e:
        skips.note(e)


# ---------------------------------------------------------------------------------------------------------------------
# Per sample: decode the window, resample, crop regions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """A decoded window of one sample, ready to collate."""

    key: str
    source: str
    audio: np.ndarray
    start: float
    captions: list[str]
    caption: str
    regions: list[tuple[str, float, float]] = field(default_factory=list)


def crop_regions(
    regions: Sequence[tuple[str, float, float]], start: float, length: float, min_overlap: float
) -> list[tuple[str, float, float]]:
    """Regions seen through the window [start, start+length), in seconds from the window start.

    A region is clipped to the window and kept when the part inside covers at least `min_overlap` of what
    could fit (its own length, or the window's when the region is longer than the window).
    """
    end = start + length
    out = []
    for text, onset, offset in regions:
        a, b = max(onset, start), min(offset, end)
        if b - a <= 0 or b - a + OVERLAP_EPS < min_overlap * min(offset - onset, length):
            continue
        out.append((text, a - start, b - start))
    return out


def pick_crop(
    rng: np.random.Generator,
    total: int,
    window: int,
    sample_rate: int,
    regions: Sequence[tuple[str, float, float]],
    min_overlap: float,
    tries: int = 3,
) -> tuple[int, list[tuple[str, float, float]]]:
    """Random window start (in samples) for a clip of `total` samples, and the regions it keeps.

    Uniform over all starts; when regions exist but none survives `tries` draws, the window is centred on
    a random region (which then survives).
    """
    start = 0
    length = window / sample_rate
    for _ in range(tries):
        start = int(rng.integers(0, total - window + 1))
        kept = crop_regions(regions, start / sample_rate, length, min_overlap)
        if kept or not regions:
            return start, kept
    _, onset, offset = regions[int(rng.integers(len(regions)))]
    centre = (onset + offset) / 2 * sample_rate
    start = int(min(max(round(centre - window / 2), 0), total - window))
    return start, crop_regions(regions, start / sample_rate, length, min_overlap)


def output_frames(f: sf.SoundFile, sample_rate: int) -> int:
    """Length of the file in samples at `sample_rate`."""
    return f.frames if f.samplerate == sample_rate else f.frames * sample_rate // f.samplerate


def read_window(f: sf.SoundFile, sample_rate: int, start: int, length: int) -> np.ndarray:
    """Mono int16 samples [start, start+length) at `sample_rate`; decodes only that part (plus context)."""
    sr = f.samplerate
    if sr == sample_rate:
        f.seek(start)
        x = f.read(length, dtype="int16")
        return x if x.ndim == 1 else x.mean(axis=1).round().astype(np.int16)
    first = start * sr // sample_rate
    context = math.ceil(RESAMPLE_CONTEXT * sr)
    pre = min(context, first)
    count = math.ceil(length * sr / sample_rate) + pre + context
    f.seek(first - pre)
    x = f.read(count, dtype="float32", always_2d=True).mean(axis=1)
    y = resample(x, sr, sample_rate)
    skip = round(pre * sample_rate / sr)
    y = y[skip : skip + length]
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def load_clip(
    record: Record,
    source: str,
    sample_rate: int,
    window: int | None,
    min_overlap: float,
    rng: np.random.Generator | None = None,
    need: str | None = None,
) -> Clip | None:
    """Decode and crop one record.

    With `rng` (training) the window start is random and one caption is picked; without it (evaluation)
    the window starts at 0. `window` None keeps the whole clip. `need` "weak"/"strong": return None for a
    sample without captions/regions. Undecodable audio raises CorruptSample.
    """
    sample = record.sample
    if need == "weak" and not sample.captions:
        return None
    regions = [(r.text, float(r.onset), float(r.offset)) for r in sample.strong]
    if need == "strong" and not regions:
        return None
    try:
        with sf.SoundFile(io.BytesIO(record.flac)) as f:
            total = output_frames(f, sample_rate)
            if total <= 0:
                raise CorruptSample(f"{record.url}: {sample.key}.flac: empty audio")
            length = total if window is None else min(window, total)
            if rng is not None and need == "strong":
                start, kept = (
                    pick_crop(rng, total, length, sample_rate, regions, min_overlap)
                    if length < total
                    else (0, crop_regions(regions, 0.0, length / sample_rate, min_overlap))
                )
            else:
                start = int(rng.integers(0, total - length + 1)) if rng is not None else 0
                kept = crop_regions(regions, start / sample_rate, length / sample_rate, min_overlap)
            audio = read_window(f, sample_rate, start, length)
    except CorruptSample:
        raise
    except Exception as e:
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "audio bytes", str(e))
        raise CorruptSample(f"{record.url}: {sample.key}.flac: cannot decode: {reason}") from None
    if need == "strong" and not kept:
        return None
    caption = ""
    if rng is not None and sample.captions:
        caption = sample.captions[int(rng.integers(len(sample.captions)))]
    return Clip(sample.key, source, audio, start / sample_rate, list(sample.captions), caption, kept)


# ---------------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------------


def collate(
    clips: Sequence[Clip],
    kind: str,
    length: int | None,
    eval_mode: bool = False,
    buffers: BatchBuffers | None = None,
) -> dict:
    """Clips -> a batch with int16 audio and lengths (see BatchReceiver); strong/eval batches carry regions."""
    n = length if length is not None else max(len(c.audio) for c in clips)
    audio, ack = (
        buffers.take(len(clips), n)
        if buffers is not None
        else (torch.empty(len(clips), n, dtype=torch.int16), None)
    )
    rows = audio.numpy()
    lengths = np.zeros(len(clips), np.int64)
    for i, clip in enumerate(clips):
        rows[i, : len(clip.audio)] = clip.audio
        rows[i, len(clip.audio) :] = 0
        lengths[i] = len(clip.audio)
    # small fields travel as numpy (pickled inline); a tensor would cost a shared-memory segment each
    batch = {
        "kind": kind,
        "audio": audio,
        "lengths": lengths,
        "captions": [c.captions for c in clips] if eval_mode else [c.caption for c in clips],
        "keys": [c.key for c in clips],
        "sources": [c.source for c in clips],
        "clip_ids": np.array([stable_id(c.key) for c in clips], dtype=np.int64),
        "crop_starts": np.array([c.start for c in clips], dtype=np.float32),
    }
    if ack is not None:
        batch["_ack"] = ack
    if kind == "strong" or eval_mode:
        regions = [(i, r) for i, c in enumerate(clips) for r in c.regions]
        batch["region_text"] = [r[0] for _, r in regions]
        batch["region_text_ids"] = np.array([stable_id(r[0]) for _, r in regions], dtype=np.int64)
        batch["region_clip"] = np.array([i for i, _ in regions], dtype=np.int64)
        batch["onsets"] = np.array([r[1] for _, r in regions], dtype=np.float32)
        batch["offsets"] = np.array([r[2] for _, r in regions], dtype=np.float32)
    return batch


# Moving batches between processes. A tensor sent from a DataLoader worker travels as shared memory; a fresh
# segment per batch costs a page fault per 4 KiB on both sides (about as much CPU as decoding a tenth of the
# audio). So each worker keeps a small ring of shared int16 buffers, and the consumer converts a batch to
# float32 right away, then acknowledges its slot through a shared counter; a slot is rewritten only after
# that acknowledgement (otherwise a one-off buffer is used), and the consumer keeps the ring mapped.


def _shared_int16(rows: int, cols: int) -> torch.Tensor:
    storage = torch.UntypedStorage._new_shared(max(1, rows * cols) * 2)
    return torch.empty(0, dtype=torch.int16).set_(storage, 0, (rows, cols))


class BatchBuffers:
    """A DataLoader worker's ring of reusable shared-memory int16 batch buffers (producer side)."""

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self.ring: list[torch.Tensor | None] = [None] * slots
        self.written = [-1] * slots
        self.acks: torch.Tensor | None = None
        self.generation = 0

    def take(self, rows: int, cols: int) -> tuple[torch.Tensor, tuple[torch.Tensor, int, int] | None]:
        """A [rows, cols] int16 buffer and its acknowledgement handle (None outside DataLoader workers)."""
        if get_worker_info() is None:
            return torch.empty(rows, cols, dtype=torch.int16), None
        if self.acks is None:
            self.acks = torch.full((self.slots,), -1, dtype=torch.int64).share_memory_()
        g, slot = self.generation, self.generation % self.slots
        self.generation += 1
        if int(self.acks[slot]) != self.written[slot]:  # the consumer has not converted the slot's last batch
            return _shared_int16(rows, cols), None
        buf = self.ring[slot]
        if buf is None or buf.shape != (rows, cols):
            buf = self.ring[slot] = _shared_int16(rows, cols)
        self.written[slot] = g
        return buf, (self.acks, slot, g)


class BatchReceiver:
    """Consumer side: int16 worker batches -> the public format, acknowledging ring slots (see BatchBuffers)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.mapped: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: dict) -> dict:
        ack = batch.pop("_ack", None)
        pcm = batch["audio"]
        out = to_float_batch(batch, self.sample_rate)
        if ack is not None:
            acks, slot, generation = ack
            acks[slot] = generation  # after the conversion above has read the buffer
            self.mapped[acks.untyped_storage().data_ptr(), slot] = (acks, pcm)  # keeps the mapping alive
        return out


def passthrough(batch: dict) -> dict:
    """DataLoader collate_fn for batches built in the workers (the default would convert numpy to tensors)."""
    return batch


@contextmanager
def worker_shutdown(batches: Iterator[dict]) -> Iterator[Iterator[dict]]:
    """Stop a DataLoader iterator's worker processes on exit (error or early close), not whenever GC gets to it.

    A DataLoader iterator kept alive by an exception's traceback and collected later can take seconds per
    worker to shut down; closing it here is immediate.
    """
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def to_float_batch(batch: dict, sample_rate: int) -> dict:
    """Worker batch -> the public format: float32 audio in [-1, 1], audio_mask, durations, tensors."""
    lengths = batch.pop("lengths")
    pcm = batch["audio"].numpy()
    # numpy: one single-threaded pass; torch's int16 -> float promotion is several times slower here
    audio = np.multiply(pcm, np.float32(1.0 / 32768.0), dtype=np.float32)
    mask = np.zeros(pcm.shape, dtype=bool)
    for row, n in zip(mask, lengths.tolist()):
        row[:n] = True
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            batch[key] = torch.from_numpy(value)
    batch["audio"] = torch.from_numpy(audio)
    batch["audio_mask"] = torch.from_numpy(mask)
    batch["durations"] = torch.from_numpy((lengths / sample_rate).astype(np.float32))
    return batch


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
    ) -> None:
        self.shards = list(shards)
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
        skips = Skips()
        buffers = BatchBuffers()
        clips: list[Clip] = []
        for part in parts:
            for record in iter_part(self.shards, part, skips):
                try:
                    clip = load_clip(
                        record, record.sample.dataset, self.sample_rate, self.window, self.min_overlap
                    )
                except CorruptSample as e:
                    skips.note(e)
                    continue
                clips.append(clip)  # type: ignore[arg-type]
                if len(clips) == self.batch_size:
                    yield self._collate(clips, buffers)
                    clips = []
        if clips:
            yield self._collate(clips, buffers)
        yield {"corrupt_skipped": skips.count}

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
    stats: dict | None = None,
    max_samples: int | None = None,
) -> Iterator[dict]:
    """Finite evaluation batches of this rank; over all ranks and workers every sample comes exactly once.

    clip_seconds None: whole clips, padded to the longest in the batch; a number: the window [0, clip_seconds).
    max_samples: only the first N samples of the split in shard order (the same subset for any world size).
    Captions are all of a sample's captions (list[list[str]]); region fields are always present. `stats`, if
    given, receives "corrupt_skipped" (filled when the iteration ends).
    """
    if batch_size <= 0 or sample_rate <= 0:
        raise ValueError(f"batch_size and sample_rate must be > 0, got {batch_size} and {sample_rate}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    if clip_seconds is not None and clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be > 0 or None, got {clip_seconds}")
    shards = expand_urls(urls, allow_pipe)
    if max_samples is not None:
        shards = first_samples(shards, max_samples)
    window = None if clip_seconds is None else round(clip_seconds * sample_rate)
    dataset = EvalShards(
        shards, sample_rate, batch_size, rank, world_size, num_workers, window, min_region_overlap
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
    corrupt = 0
    receive = BatchReceiver(sample_rate)
    with worker_shutdown(iter(batches)) as produced:
        for batch in produced:
            if "audio" not in batch:
                corrupt += batch["corrupt_skipped"]
                continue
            yield receive(batch)
    if stats is not None:
        stats["corrupt_skipped"] = corrupt
