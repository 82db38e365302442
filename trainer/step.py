"""One training step as a unit: the loss of a (weak or strong) batch, and the optimizer step around it.

`train_step` is what `trainer.loop` runs for every micro-batch and what the step benchmarks time
(`tools.bench step`, `losses`, `gpu`), so a benchmark measures exactly the trainer's step: Accelerate's
accumulate/autocast contexts, `compute_loss`, backward, gradient clipping (or DeepSpeed's own), optimizer step.

Non-finite values never reach the weights. A micro-batch whose loss is not finite is backpropagated multiplied by
NaN, so every gradient of its accumulation cycle becomes NaN on every rank (DDP and ZeRO average gradients over
ranks); an optimizer step whose global gradient norm is not finite is then skipped as a whole: here for DDP, by the
loss scaler for fp16, and by DeepSpeed's own overflow check inside its engine step (the skip fp16 training has
always used; it is on for fp32 and, by default, bf16 ZeRO). Whether the run goes on is the loop's decision
(train.nan_patience).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.captions import normalize_captions
from trainer.config import Config
from trainer.losses import (
    clip_contrastive_loss,
    region_contrastive_loss,
    string_ids,
    temporal_order_loss,
    temporal_order_texts,
)


@dataclass
class StepLoss:
    """Loss of one micro-batch and its parts (parts are detached floats for logging)."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one `train_step` did."""

    loss: StepLoss
    grad_norm: float | None
    """Global gradient norm before clipping when this micro-batch ended an optimizer step, else None."""
    skipped: bool = False
    """This micro-batch ended an optimizer step that made no update (its gradients were not finite)."""


class NonFiniteError(RuntimeError):
    """Training met non-finite values it cannot skip; the message names the step and the batch."""


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def compute_loss(model, tokenize, batch: dict[str, Any], cfg: Config) -> StepLoss:
    """One forward through the (wrapped) model and the loss of the batch's kind.

    Outputs a batch kind does not use still enter the loss with weight 0, so every parameter receives a gradient
    each step: DDP then needs no unused-parameter search, and ZeRO's reduction buckets are the same every step.
    """
    strong = batch["kind"] == "strong"
    texts = list(batch["region_text"] if strong else batch["captions"])
    n_main = len(texts)
    order_pairs: list[tuple[int, int, int]] = []
    if not strong and cfg.loss.temporal_weight > 0:
        for i, caption in enumerate(batch["captions"]):
            pair = temporal_order_texts(caption)
            if pair is not None:
                order_pairs.append((i, len(texts), len(texts) + 1))
                texts.extend(pair)
    tokens = {k: v.to(batch["audio"].device) for k, v in tokenize(texts).items()}
    out = model(batch["audio"], batch["audio_mask"], tokens["input_ids"], tokens["attention_mask"])
    parts: dict[str, float] = {}
    text = out.text[:n_main]
    if strong:
        text_ids = batch.get("region_text_ids")
        if cfg.data.caption_transform != "none":  # captions equal once normalised are one caption
            normalized = normalize_captions(batch["region_text"], cfg.data.caption_transform)
            text_ids = string_ids(normalized).to(out.text.device)
        loss = cfg.loss.strong_weight * region_contrastive_loss(
            out.audio_frames,
            out.frame_mask,
            out.frame_rate,
            text,
            batch["region_clip"],
            batch["onsets"],
            batch["offsets"],
            cfg.loss.strong_tau,
            text_ids=text_ids,
            clip_ids=batch.get("clip_ids"),
        )
        parts["loss_strong"] = loss.item() / max(cfg.loss.strong_weight, 1e-12)
        unused = out.audio_clip.sum() + out.logit_scale
    else:
        loss = cfg.loss.weak_weight * clip_contrastive_loss(
            out.audio_clip,
            text,
            out.logit_scale,
            clip_ids=batch.get("clip_ids"),
            duplicate_audio=cfg.loss.duplicate_audio,
        )
        parts["loss_weak"] = loss.item() / max(cfg.loss.weak_weight, 1e-12)
        unused = out.audio_frames.sum()
        if order_pairs:
            idx = torch.tensor(order_pairs, device=out.text.device)
            temporal = temporal_order_loss(out.text[idx[:, 0]], out.text[idx[:, 1]], out.text[idx[:, 2]])
            loss = loss + cfg.loss.temporal_weight * temporal
            parts["loss_temporal"] = temporal.item()
    return StepLoss(loss + 0.0 * unused, parts)


def grad_norm(model, accelerator, grad_clip: float) -> float:
    """The global gradient norm, clipping to `grad_clip` (> 0) on the way; DeepSpeed reports the one it clipped by."""
    engine = getattr(model, "get_global_grad_norm", None)
    if engine is not None:  # DeepSpeed computes (and clips by) the norm inside its step
        norm = engine()
        return float(norm) if norm is not None else math.nan
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        return float(accelerator.clip_grad_norm_(params, grad_clip))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))


def train_step(
    accelerator,
    model,
    optimizer,
    tokenize,
    batch: dict[str, Any],
    cfg: Config,
    mark: Callable[[str], None] | None = None,
) -> StepResult:
    """Forward, loss and backward of one micro-batch (already on the device); at the end of a gradient accumulation
    cycle also the clip and the optimizer step (the scheduler is the caller's: it steps once per optimizer step).

    `model` and `optimizer` are the ones `accelerator.prepare` returned. `mark(name)`, when given, is called after
    the "forward" (with the loss), the "backward" and the "optimizer" part, e.g. to time them on a device timeline.
    """
    norm = None
    skipped = False
    engine = getattr(model, "get_global_grad_norm", None) is not None  # DeepSpeed: backward also steps
    with accelerator.accumulate(model), accelerator.autocast():
        loss = compute_loss(model, tokenize, batch, cfg)
        if mark is not None:
            mark("forward")
        finite = bool(torch.isfinite(loss.total.detach()))
        # A non-finite loss can still have finite gradients: poison them, so the whole cycle is skipped on every rank.
        accelerator.backward(loss.total if finite else loss.total * math.nan)
        if mark is not None:
            mark("backward")
        if accelerator.sync_gradients:
            norm = grad_norm(model, accelerator, cfg.train.grad_clip)
            skipped = not math.isfinite(norm)
        if skipped and not engine and accelerator.scaler is None:
            optimizer.zero_grad(set_to_none=True)  # the update is skipped: the gradients go, the weights stay
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # DeepSpeed without ZeRO (or with its overflow check turned off) applies whatever it gets
            if skipped and not optimizer.step_was_skipped:
                raise NonFiniteError(
                    f"the gradient norm is {norm} and the optimizer applied the update anyway (DeepSpeed without "
                    "ZeRO, or bf16.check_grad_overflow=false): the weights are no longer finite"
                )
            skipped = skipped or (accelerator.sync_gradients and optimizer.step_was_skipped)
        if mark is not None:
            mark("optimizer")
    return StepResult(loss, norm, skipped)
