"""Projection heads into the joint space, and the heads (and logit scale) a pretrained checkpoint ships.

A head is linear (what new heads are) or an MLP linear -> activation -> linear (what CLAP trained: the
``audio_projection`` / ``text_projection`` of transformers' ClapModel, LAION-CLAP's ``*_projection``). When both
towers come from one full CLAP checkpoint, its two heads and ``logit_scale_a`` are kept, so the joint model scores
exactly as ClapModel does before any training. CLAP's symmetric clip loss uses ``logit_scale_a`` for both
directions (LAION-CLAP's ClipLoss without ``mlp_loss``); ``logit_scale_t`` only scales the extra MLP branch
(``audio_transform``/``text_transform``) that transformers' ClapModel does not carry, so it is not kept.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn
from transformers import ClapConfig, ClapModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from trainer.config import ModelConfig
from trainer.model.hf import apply_overrides, resolve_pretrained

DEFAULT_EMBED_DIM = 64


@dataclass
class HeadSpec:
    """The shape of one projection head (JSON in a saved model's config)."""

    kind: Literal["linear", "mlp"] = "linear"
    activation: str | None = None
    """mlp only: a transformers activation name (CLAP: relu)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HeadSpec:
        spec = cls(**(d or {}))
        if spec.kind not in ("linear", "mlp"):
            raise ValueError(f"head kind must be linear or mlp, got {spec.kind!r}")
        if spec.kind == "mlp" and spec.activation not in ACT2FN:
            raise ValueError(f"mlp head: unknown activation {spec.activation!r}")
        return spec


class MLPHead(nn.Module):
    """linear -> activation -> linear, with CLAP's parameter names (linear1, linear2)."""

    def __init__(self, in_dim: int, out_dim: int, activation: str):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.activation = ACT2FN[activation]
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear2(self.activation(self.linear1(x)))


def build_head(spec: HeadSpec, in_dim: int, out_dim: int) -> nn.Module:
    """A randomly initialised head of `spec`; a linear head is a plain nn.Linear (state dict keys weight, bias)."""
    if spec.kind == "linear":
        return nn.Linear(in_dim, out_dim)
    return MLPHead(in_dim, out_dim, spec.activation)


@dataclass
class ShippedHeads:
    """What a full CLAP checkpoint brings: both backbones (weights loaded once), both heads, the logit scale."""

    source: str
    audio_backbone: PreTrainedModel
    text_backbone: PreTrainedModel
    audio_head: nn.Module
    text_head: nn.Module
    spec: HeadSpec
    embed_dim: int
    log_logit_scale: float
    """logit_scale_a: the log of the clip-loss multiplier."""


def shared_clap_source(cfg: ModelConfig) -> str | None:
    """The full CLAP checkpoint both towers come from (clap_htsat audio + a text tower of the same source), or None."""
    if not cfg.keep_heads or cfg.audio.name != "clap_htsat":
        return None
    if cfg.audio.pretrained is None or cfg.text.pretrained is None:
        return None
    audio = resolve_pretrained(cfg.audio.pretrained, "model.audio.pretrained")
    text = resolve_pretrained(cfg.text.pretrained, "model.text.pretrained")
    if not _same_source(audio, text):
        return None
    return audio if PretrainedConfig.get_config_dict(audio)[0].get("model_type") == "clap" else None


def _same_source(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def load_clap(cfg: ModelConfig, source: str, max_logit_scale: float) -> ShippedHeads:
    """Load the CLAP checkpoint `source` once: backbones, heads, logit scale (overrides applied per tower)."""
    full = ClapConfig.from_pretrained(source)
    apply_overrides(full.audio_config, cfg.audio.overrides, "model.audio.overrides")
    apply_overrides(full.text_config, cfg.text.overrides, "model.text.overrides")
    clap = ClapModel.from_pretrained(source, config=full)
    dim = int(full.projection_dim)
    if cfg.embed_dim is not None and cfg.embed_dim != dim:
        raise ValueError(
            f"model.embed_dim: {cfg.embed_dim}, but the CLAP checkpoint {source} projects to {dim}; "
            "set it to null (or to that value), or model.keep_heads=false for new heads"
        )
    if cfg.text.pooling not in (None, "pooler"):
        raise ValueError(
            f"model.text.pooling: CLAP's text_projection was trained on the pooler output, got {cfg.text.pooling!r}; "
            "set it to null or pooler, or model.keep_heads=false for new heads"
        )
    spec = HeadSpec("mlp", full.projection_hidden_act)
    heads = []
    for theirs in (clap.audio_projection, clap.text_projection):
        head = MLPHead(theirs.linear1.in_features, dim, spec.activation)
        head.load_state_dict(theirs.state_dict())
        heads.append(head)
    log_scale = float(clap.logit_scale_a.detach())
    if math.exp(log_scale) > max_logit_scale * (1 + 1e-4):
        warnings.warn(
            f"{source}: logit scale {math.exp(log_scale):.4g} exceeds loss.max_logit_scale {max_logit_scale}; "
            "logits are clamped",
            stacklevel=2,
        )
    return ShippedHeads(source, clap.audio_model, clap.text_model, heads[0], heads[1], spec, dim, log_scale)
