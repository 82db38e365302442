"""Moving batches between processes: reused shared-memory int16 buffers, float32 on the consuming side.

A tensor sent from a DataLoader worker travels as shared memory; a fresh
segment per batch costs a page fault per 4 KiB on both sides (about as much CPU as decoding a tenth of the
audio). So each worker keeps a small ring of shared int16 buffers, and the consumer converts a batch to
float32 right away, then acknowledges its slot through a shared counter; a slot is rewritten only after
that acknowledgement (otherwise a one-off buffer is used), and the consumer keeps the ring mapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import get_worker_info


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
