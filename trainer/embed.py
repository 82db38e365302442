"""Embedding an evaluation split: eval batches -> a RetrievalSet or TemporalSet, over every rank, cached.

`embed_retrieval` / `embed_temporal` run the model in eval mode over this rank's finite evaluation stream. Pass
the unwrapped model (not the DDP wrapper): ranks may see different numbers of batches. Under DeepSpeed ZeRO-3
every forward gathers parameters collectively, so pass `lockstep=True`: ranks then run the same number of forwards
through both towers (a rank that is out of batches runs a silent filler clip whose output is dropped).

`gather_embeddings` collects every rank's share on rank 0, where `merged_set` orders it by sample key (so results
do not depend on the world size, and a sample seen twice is an error) or loads it from an .npz cache instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from trainer.distributed import broadcast_from_main, gather_to_main, rank_world


def _empty(dim: int = 0) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def _stack(arrays: Sequence[np.ndarray], dtype=np.float32) -> np.ndarray:
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return _empty()
    return np.concatenate(arrays).astype(dtype, copy=False)


def _sorted_by_key(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(order that sorts keys, new index of each old position); a repeated key is an error."""
    keys_arr = np.asarray(keys, dtype=str)
    order = np.argsort(keys_arr, kind="stable")
    sorted_keys = keys_arr[order]
    dup = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if dup.size:
        raise ValueError(
            f"sample {dup[0]!r} was evaluated more than once (overlapping shards or rank sharding)"
        )
    new_index = np.empty(len(keys), dtype=np.int64)
    new_index[order] = np.arange(len(keys))
    return order, new_index


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.asarray(list(values), dtype=str) if len(values) else np.zeros(0, dtype="<U1")


@dataclass
class RetrievalSet:
    """Clip and caption embeddings of an evaluation split (one rank's share, or all of it merged)."""

    keys: list[str]
    audio: np.ndarray
    """[N, D] clip embeddings."""
    captions: list[str]
    """All weak captions, clip after clip."""
    caption_clip: np.ndarray
    """[T] index of each caption's clip in `keys`."""
    text: np.ndarray
    """[T, D] caption embeddings."""

    @classmethod
    def merge(cls, parts: Sequence[RetrievalSet]) -> RetrievalSet:
        keys = [k for p in parts for k in p.keys]
        if not keys:
            raise ValueError("the evaluation stream yielded no samples")
        offsets = np.cumsum([0] + [len(p.keys) for p in parts])
        clip_of = np.concatenate(
            [p.caption_clip.astype(np.int64) + off for p, off in zip(parts, offsets)]
            + [np.zeros(0, np.int64)]
        )
        order, new_index = _sorted_by_key(keys)
        caption_clip = new_index[clip_of]
        caption_order = np.argsort(caption_clip, kind="stable")
        captions = [c for p in parts for c in p.captions]
        text = _stack([p.text for p in parts])
        return cls(
            keys=[keys[i] for i in order],
            audio=_stack([p.audio for p in parts])[order],
            captions=[captions[i] for i in caption_order],
            caption_clip=caption_clip[caption_order],
            text=text[caption_order] if len(text) else text,
        )

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            keys=_str_array(self.keys),
            audio=self.audio,
            captions=_str_array(self.captions),
            caption_clip=self.caption_clip,
            text=self.text,
        )

    @classmethod
    def load(cls, path: str | Path) -> RetrievalSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                keys=z["keys"].tolist(),
                audio=z["audio"],
                captions=z["captions"].tolist(),
                caption_clip=z["caption_clip"],
                text=z["text"],
            )


@dataclass
class TemporalSet:
    """Frame and region-text embeddings of a strong evaluation split (one rank's share, or all of it merged)."""

    keys: list[str]
    durations: np.ndarray
    """[N] clip durations in seconds."""
    frame_rate: float
    """Frames per second of the audio encoder."""
    audio: np.ndarray
    """[N, D] clip embeddings."""
    frames: np.ndarray
    """[sum of F_i, D] valid frame embeddings, clip after clip (float16)."""
    frame_offsets: np.ndarray
    """[N + 1] clip i owns frames[frame_offsets[i]:frame_offsets[i + 1]]."""
    region_text: list[str]
    region_clip: np.ndarray
    """[R] index of each region's clip in `keys`."""
    onsets: np.ndarray
    offsets: np.ndarray
    texts: list[str]
    """Unique region texts."""
    text: np.ndarray
    """[U, D] embeddings of `texts`."""

    def clip_frames(self, i: int) -> np.ndarray:
        return self.frames[self.frame_offsets[i] : self.frame_offsets[i + 1]].astype(np.float32)

    @classmethod
    def merge(cls, parts: Sequence[TemporalSet]) -> TemporalSet:
        keys = [k for p in parts for k in p.keys]
        if not keys:
            raise ValueError("the evaluation stream yielded no samples")
        rates = {p.frame_rate for p in parts if p.keys}
        if len(rates) != 1:
            raise ValueError(f"frame rates differ between ranks: {sorted(rates)}")
        order, new_index = _sorted_by_key(keys)
        frames_per_clip = [
            p.frames[p.frame_offsets[i] : p.frame_offsets[i + 1]] for p in parts for i in range(len(p.keys))
        ]
        offsets = np.cumsum([0] + [len(p.keys) for p in parts])
        region_clip = np.concatenate(
            [p.region_clip.astype(np.int64) + off for p, off in zip(parts, offsets)] + [np.zeros(0, np.int64)]
        )
        region_clip = new_index[region_clip]
        region_order = np.argsort(region_clip, kind="stable")
        region_text = [t for p in parts for t in p.region_text]
        text_of: dict[str, np.ndarray] = {}
        for p in parts:
            for t, e in zip(p.texts, p.text):
                text_of.setdefault(t, e)
        texts = sorted(text_of)
        ordered_frames = [frames_per_clip[i] for i in order]
        return cls(
            keys=[keys[i] for i in order],
            durations=np.concatenate([p.durations for p in parts]).astype(np.float64)[order],
            frame_rate=rates.pop(),
            audio=_stack([p.audio for p in parts])[order],
            frames=_stack(ordered_frames, np.float16),
            frame_offsets=np.cumsum([0] + [len(f) for f in ordered_frames]),
            region_text=[region_text[i] for i in region_order],
            region_clip=region_clip[region_order],
            onsets=np.concatenate([p.onsets for p in parts]).astype(np.float64)[region_order],
            offsets=np.concatenate([p.offsets for p in parts]).astype(np.float64)[region_order],
            texts=texts,
            text=np.stack([text_of[t] for t in texts]).astype(np.float32) if texts else _empty(),
        )

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            keys=_str_array(self.keys),
            durations=self.durations,
            frame_rate=np.float64(self.frame_rate),
            audio=self.audio,
            frames=self.frames,
            frame_offsets=self.frame_offsets,
            region_text=_str_array(self.region_text),
            region_clip=self.region_clip,
            onsets=self.onsets,
            offsets=self.offsets,
            texts=_str_array(self.texts),
            text=self.text,
        )

    @classmethod
    def load(cls, path: str | Path) -> TemporalSet:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                keys=z["keys"].tolist(),
                durations=z["durations"],
                frame_rate=float(z["frame_rate"]),
                audio=z["audio"],
                frames=z["frames"],
                frame_offsets=z["frame_offsets"],
                region_text=z["region_text"].tolist(),
                region_clip=z["region_clip"],
                onsets=z["onsets"],
                offsets=z["offsets"],
                texts=z["texts"].tolist(),
                text=z["text"],
            )


def model_device(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.device:
    """`device` if given, else where the model's parameters are (CPU for a model without any)."""
    if device is not None:
        return torch.device(device)
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode without autograd inside the block; the previous train/eval mode is restored after it.

    no_grad, not inference_mode: embeddings handed to users may later meet autograd (inference tensors cannot)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def lockstep_batches(batches: Iterable[Any], device: torch.device) -> Iterable[Any]:
    """This rank's batches, then None until every rank has run out: all ranks take the same number of steps.

    A rank whose batches fail (e.g. a corrupt shard) goes on with None so that the others do not wait for it, and
    raises the error once every rank is done.
    """
    it = iter(batches)
    error: Exception | None = None
    while True:
        batch = None
        if error is None:
            try:
                batch = next(it, None)
            except Exception as e:
                error = e
        more = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        if rank_world()[1] > 1:
            torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MAX)
        if not more.item():
            break
        yield batch
    if error is not None:
        raise error


def _filler_batch(model) -> dict[str, torch.Tensor]:
    """One second of silence: what a rank without batches forwards in lockstep."""
    n = int(model.sample_rate)
    return {"audio": torch.zeros(1, n), "audio_mask": torch.ones(1, n, dtype=torch.bool)}


def forward_batch(
    model,
    batch: Mapping[str, Any] | None,
    texts: Sequence[str] | None,
    device: torch.device,
    lockstep: bool = False,
):
    """One forward of the joint model on a batch's audio and on `texts`; a side that is None or empty is left out.

    With `lockstep`, both towers always run (a missing side gets a filler input; callers ignore that output).
    """
    if lockstep:
        batch = batch if batch is not None else _filler_batch(model)
        texts = texts or ["."]
    audio = mask = input_ids = attention_mask = None
    if batch is not None:
        audio = torch.as_tensor(batch["audio"]).to(device=device, dtype=torch.float32)
        mask = torch.as_tensor(batch["audio_mask"]).to(device=device, dtype=torch.bool)
    if texts:
        tokens = model.tokenize(list(texts))
        input_ids, attention_mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    return model(audio, mask, input_ids, attention_mask)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def embed_retrieval(
    model, batches: Iterable[Mapping[str, Any]], device=None, lockstep: bool = False
) -> RetrievalSet:
    """Clip and caption embeddings of this rank's batches (eval mode, no gradients)."""
    device = model_device(model, device)
    if lockstep:
        batches = lockstep_batches(batches, device)
    keys: list[str] = []
    audio: list[np.ndarray] = []
    captions: list[str] = []
    caption_clip: list[int] = []
    text: list[np.ndarray] = []
    with eval_mode(model):
        for batch in batches:
            if batch is None:
                forward_batch(model, None, None, device, lockstep=True)
                continue
            texts = [c for caps in batch["captions"] for c in caps]
            out = forward_batch(model, batch, texts, device, lockstep)
            base = len(keys)
            keys.extend(batch["keys"])
            audio.append(_np(out.audio_clip))
            for i, caps in enumerate(batch["captions"]):
                captions.extend(caps)
                caption_clip.extend([base + i] * len(caps))
            if texts:
                text.append(_np(out.text))
    return RetrievalSet(
        keys=keys,
        audio=_stack(audio),
        captions=captions,
        caption_clip=np.asarray(caption_clip, dtype=np.int64),
        text=_stack(text),
    )


def embed_temporal(
    model,
    batches: Iterable[Mapping[str, Any]],
    device=None,
    text_template: str = "{}",
    lockstep: bool = False,
) -> TemporalSet:
    """Frame, clip and region-text embeddings of this rank's strong batches (eval mode, no gradients).

    Region texts are embedded as `text_template.format(text)` (e.g. "the sound of {}" for label names).
    """
    device = model_device(model, device)
    if lockstep:
        batches = lockstep_batches(batches, device)
    keys: list[str] = []
    durations: list[float] = []
    audio: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    region_text: list[str] = []
    region_clip: list[int] = []
    onsets: list[float] = []
    offsets: list[float] = []
    text_of: dict[str, np.ndarray] = {}
    rate: float | None = None
    with eval_mode(model):
        for batch in batches:
            if batch is None:
                forward_batch(model, None, None, device, lockstep=True)
                continue
            batch_texts = list(batch.get("region_text", []))
            unique = list(dict.fromkeys(batch_texts))
            out = forward_batch(model, batch, [text_template.format(t) for t in unique], device, lockstep)
            batch_rate = float(out.frame_rate)
            if rate is not None and not math.isclose(batch_rate, rate):
                raise ValueError(f"model frame rate changed between batches: {rate} vs {batch_rate}")
            rate = batch_rate
            base = len(keys)
            keys.extend(batch["keys"])
            durations.extend(float(d) for d in _np(batch["durations"]))
            audio.append(_np(out.audio_clip))
            clip_frames, frame_mask = _np(out.audio_frames), _np(out.frame_mask).astype(bool)
            frames.extend(clip_frames[i][frame_mask[i]].astype(np.float16) for i in range(len(batch["keys"])))
            region_text.extend(batch_texts)
            region_clip.extend(base + int(i) for i in _np(batch.get("region_clip", [])))
            # batches carry float32 seconds (1.8 -> 1.79999995): back to the microseconds the shards store
            onsets.extend(round(float(x), 6) for x in _np(batch.get("onsets", [])))
            offsets.extend(round(float(x), 6) for x in _np(batch.get("offsets", [])))
            if unique:
                for t, e in zip(unique, _np(out.text)):
                    text_of.setdefault(t, e)
    texts = sorted(text_of)
    return TemporalSet(
        keys=keys,
        durations=np.asarray(durations, dtype=np.float64),
        frame_rate=rate or 0.0,
        audio=_stack(audio),
        frames=_stack(frames, np.float16),
        frame_offsets=np.cumsum([0] + [len(f) for f in frames]),
        region_text=region_text,
        region_clip=np.asarray(region_clip, dtype=np.int64),
        onsets=np.asarray(onsets, dtype=np.float64),
        offsets=np.asarray(offsets, dtype=np.float64),
        texts=texts,
        text=np.stack([text_of[t] for t in texts]).astype(np.float32) if texts else _empty(),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Over ranks, with a cache
# ---------------------------------------------------------------------------------------------------------------------

EmbeddingSet = TypeVar("EmbeddingSet", RetrievalSet, TemporalSet)


@dataclass
class Gathered:
    """What rank 0 holds after `gather_embeddings`: every rank's set, or the word that the cache has them all."""

    parts: list[Any] | None
    """Every rank's set in rank order (rank 0, not cached); None otherwise."""
    cached: bool
    """The cache file existed: no rank embedded anything."""


def failure(error: Exception | None) -> str | None:
    """One line naming an error, to send to other ranks (None: no error)."""
    return None if error is None else f"{type(error).__name__}: {error}"


def gather_embeddings(embed: Callable[[], Any], cache_path: str | Path | None) -> Gathered:
    """Collective: every rank runs `embed()` (unless rank 0 has `cache_path`) and rank 0 receives the results.

    An error on any rank is raised on every rank, so that no rank waits for one that failed.
    """
    rank, _ = rank_world()
    cached = broadcast_from_main(cache_path is not None and rank == 0 and Path(cache_path).is_file())
    if cached:
        return Gathered(None, True)
    error: Exception | None = None
    part = None
    try:
        part = embed()
    except Exception as e:  # reported to every rank, so that no rank waits for one that failed
        error = e
    statuses = gather_to_main(failure(error))
    message = broadcast_from_main(
        "; ".join(f"rank {r}: {m}" for r, m in enumerate(statuses) if m) if rank == 0 else None
    )
    if message:
        raise error if error is not None else RuntimeError(f"evaluation failed: {message}")
    return Gathered(gather_to_main(part), False)


def merged_set(kind: type[EmbeddingSet], gathered: Gathered, cache_path: str | Path | None) -> EmbeddingSet:
    """Rank 0: the whole split's set, loaded from `cache_path` or merged from the ranks' parts (then saved there)."""
    if gathered.cached:
        return kind.load(cache_path)
    data = kind.merge(gathered.parts)
    if cache_path is not None:
        path = Path(cache_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        data.save(tmp)
        tmp.replace(path)
    return data
