"""How a run trains a built or loaded model: tower locking, a fixed logit scale, SpecAugment, torch.compile.

`prepare_for_training(model, cfg, fresh)` applies the run config to the model before the optimizer is built, so
frozen parameters (requires_grad False) never enter the optimizer, DDP's reducer or DeepSpeed's partitions of the
optimizer state.

Tower locking follows open_clip (`lock_image_tower` / `lock_text_tower` with `unlocked_groups`): a tower's groups are
[everything before its layer stack (front end, embeddings), layer 1, ..., layer L]; `freeze: N` freezes all but the
last N groups, `freeze: true` the whole tower. Modules that run after the stack (final norm, pooler) stay trainable
with `freeze: N`, as open_clip leaves them; LayerNorms inside frozen groups are frozen (open_clip's default). The
projection heads are not part of a tower and always train. BatchNorm running statistics (HTSAT's) still update in
training mode: open_clip's freeze_bn_stats is not offered.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import Config, ConfigError, SpecAugmentConfig
from trainer.model.frontend import LogMel, SpecAugment

# Where the layer stack of a tower's backbone is, tried in order (BERT/RoBERTa/CLAP text: encoder.layer; AST, Whisper:
# layers; wav2vec2/HuBERT: encoder.layers; CLAP HTSAT: audio_encoder.layers; the conv encoder: blocks).
_STACKS = ("encoder.layer", "encoder.layers", "audio_encoder.layers", "layers", "blocks")
# Registered after the stack but run before it: HTSAT's input BatchNorm (its bn0).
_RUN_BEFORE = ("audio_encoder.batch_norm",)


def layer_stack(backbone: nn.Module, key: str) -> tuple[str, nn.ModuleList]:
    """(path, modules) of the backbone's stack of layers; ConfigError naming `key` when there is none."""
    for path in _STACKS:
        try:
            stack = backbone.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(stack, nn.ModuleList) and len(stack):
            return path, stack
    raise ConfigError(
        f"{key}: cannot find the layers of {type(backbone).__name__} to keep the last ones trainable; "
        "use true (freeze the whole tower) or false"
    )


def runs_after(backbone: nn.Module, path: str) -> list[str]:
    """Names of the modules that run after the stack at `path`: at each level of the path, the children registered
    after it (transformers registers modules in the order they run), with the known exceptions."""
    names: list[str] = []
    module, prefix = backbone, ""
    for part in path.split("."):
        children = [name for name, _ in module.named_children()]
        names += [prefix + name for name in children[children.index(part) + 1 :]]
        module, prefix = getattr(module, part), prefix + part + "."
    if getattr(getattr(backbone, "config", None), "do_stable_layer_norm", False):
        names.append("encoder.layer_norm")  # wav2vec2/HuBERT "stable" variant: the final norm
    return [n for n in names if n not in _RUN_BEFORE]


def lock_tower(tower: nn.Module, backbone: nn.Module, freeze: bool | int, key: str) -> int:
    """Freeze `tower` (all of it, or all but the last `freeze` groups of `backbone`, a part of it); returns how many
    parameters (elements) are frozen."""
    if freeze is False:
        return 0
    frozen = dict(tower.named_parameters())
    if freeze is not True:
        path, stack = layer_stack(backbone, key)
        if freeze > len(stack) + 1:
            raise ConfigError(
                f"{key}: {freeze} trainable layers asked, but {type(backbone).__name__} has {len(stack)} layers "
                f"(+ the embeddings: {len(stack) + 1} groups)"
            )
        keep = [*stack[len(stack) - freeze :]] if freeze <= len(stack) else [backbone]
        keep += [backbone.get_submodule(name) for name in runs_after(backbone, path)]
        trainable = {id(p) for module in keep for p in module.parameters()}
        frozen = {n: p for n, p in frozen.items() if id(p) not in trainable}
    for p in frozen.values():
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())


def towers(model) -> dict[str, tuple[nn.Module, nn.Module]]:
    """{"audio"|"text": (tower, backbone)}: the encoder module and the network whose layers it stacks."""
    backend = model.audio_encoder.backend
    return {
        "audio": (model.audio_encoder, getattr(backend, "model", backend)),
        "text": (model.text_encoder, model.text_encoder.model),
    }


def fix_logit_scale(model, value: float | None) -> None:
    """Keep the clip-loss logit scale out of training, at multiplier `value` (None: where it is)."""
    param = model.log_logit_scale
    if value is not None:
        with torch.no_grad():
            param.fill_(math.log(value))
    param.requires_grad_(False)


def set_spec_augment(model, cfg: SpecAugmentConfig) -> None:
    """Mask the audio tower's mel features in training mode (or stop masking when every count is 0)."""
    on = (cfg.time_masks and cfg.time_width > 0) or (cfg.freq_masks and cfg.freq_width > 0)
    fronts = [m for m in model.audio_encoder.modules() if isinstance(m, LogMel)]
    if on and not fronts:
        raise ConfigError(
            f"data.spec_augment: the {model.model_config.audio.name} audio tower has no mel front end to mask "
            "(wav2vec2/HuBERT: set model.audio.overrides {apply_spec_augment: true, mask_time_prob: ...})"
        )
    for front in fronts:
        front.augment = (
            SpecAugment(cfg.time_masks, cfg.time_width, cfg.freq_masks, cfg.freq_width) if on else None
        )


def compile_towers(model) -> None:
    """torch.compile both towers in place: parameter names, and so saved weights, stay as they are."""
    model.audio_encoder.compile()
    model.text_encoder.compile()


def prepare_for_training(model, cfg: Config, fresh: bool) -> dict[str, int]:
    """Apply the run config to `model` (built, resumed or loaded by train.init_from); `fresh`: not resumed, so a fixed
    logit scale is (re)set to loss.init_logit_scale. Returns {"trainable": n, "frozen": n} parameter elements."""
    model.caption_transform = cfg.data.caption_transform
    frozen = 0
    for name, (tower, backbone) in towers(model).items():
        frozen += lock_tower(tower, backbone, getattr(cfg.model, name).freeze, f"model.{name}.freeze")
    if not cfg.loss.learn_logit_scale:
        fix_logit_scale(model, cfg.loss.init_logit_scale if fresh else None)
    set_spec_augment(model, cfg.data.spec_augment)
    if cfg.train.compile:
        compile_towers(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable}
