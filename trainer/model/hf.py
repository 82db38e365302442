"""Helpers shared by the transformers-based towers (trainer.model.audio, trainer.model.text)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel


def set_hf_checkpointing(model: PreTrainedModel, enabled: bool) -> None:
    """Switch activation checkpointing of a transformers model (non-reentrant)."""
    if model.supports_gradient_checkpointing:
        if enabled:
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            disable = (
                getattr(model, "activation_checkpointing_disable", None)
                or model.gradient_checkpointing_disable
            )
            disable()
    else:
        # CLAP's towers are made of checkpointable layers but do not advertise it.
        func = functools.partial(checkpoint, use_reentrant=False)
        model._set_gradient_checkpointing(enable=enabled, gradient_checkpointing_func=func)


def resolve_pretrained(name: str, key: str) -> str:
    """A local path, a hub id, or `pkg:PACKAGE` (the `model` folder shipped inside an installed package)."""
    if not name.startswith("pkg:"):
        return name
    package = name[4:]
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise ValueError(f"{key}: package {package!r} (from {name!r}) is not installed")
    path = Path(found.origin).parent / "model"
    if not path.is_dir():
        raise ValueError(f"{key}: package {package!r} has no model folder at {path}")
    return str(path)


def apply_overrides(config: PretrainedConfig, overrides: dict[str, Any], key: str) -> None:
    """Set `overrides` on a transformers config; each key must already be one of its attributes."""
    for name, value in overrides.items():
        if not hasattr(config, name):
            raise ValueError(
                f"{key}.{name}: {type(config).__name__} has no attribute {name!r} "
                f"(see its documentation for valid keys)"
            )
        setattr(config, name, value)
