"""AdamW with decoupled weight decay on weights only, and the warmup + cosine/constant schedule."""

from __future__ import annotations

import math

import torch

from trainer.config import OptimConfig

NO_DECAY_NAMES = ("logit_scale", "bias", "norm", "ln_", "layernorm", "LayerNorm", "bn", "embeddings.position")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed matrices/kernels, and no decay for biases, norms, gains and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


def lr_factor(
    step: int, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float = 0.0
) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based: the lr used by the step-th update).

    Linear warmup (step+1)/warmup over the first `warmup_steps` updates, then cosine from 1 to
    `min_lr_ratio` at `max_steps`, or constant 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, max_steps, cfg.schedule, cfg.min_lr_ratio)
    )


def rebase_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Point a (resumed) schedule at peak `lr` and set the lr of its current step from it, e.g. after resuming a
    run whose config changed optim.lr or train.max_steps (the schedule's lambdas come from the new config)."""
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    lrs = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, value in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = value
    scheduler._last_lr = lrs
