"""The joint audio-text model: two towers, projection heads into one L2-normalised space, a learnable logit scale.

One shared linear head projects every audio frame; the clip embedding is the normalised mean of the projected
real-audio frames. Because the head is linear this equals projecting the mean hidden state, so clip and frame
embeddings live in the same space (frame-text scores read like clip-text scores, as in TACOS), and the strong
loss trains the same head the weak loss uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoTokenizer
from transformers.utils import ModelOutput as _HFModelOutput

from trainer.captions import normalize_captions
from trainer.config import LossConfig, ModelConfig
from trainer.configparse import from_dict
from trainer.model.audio import AudioEncoder, build_audio_encoder, save_audio_backbone
from trainer.model.text import TextEncoder, build_text_encoder, save_text_backbone

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "sonotext-audio-text"


@dataclass
class ModelOutput(_HFModelOutput):
    """Outputs of one forward pass; a side that was not given is None. (A transformers ModelOutput, so
    DDP/Accelerate/DeepSpeed traverse it like a dict.)"""

    audio_clip: Tensor | None = None
    """[B, D] L2-normalised clip embeddings."""
    audio_frames: Tensor | None = None
    """[B, F, D] L2-normalised frame embeddings."""
    frame_mask: Tensor | None = None
    """[B, F] bool: frames that are mostly real audio (not padding)."""
    frame_rate: float | None = None
    """Frames per second of audio_frames."""
    text: Tensor | None = None
    """[T, D] L2-normalised caption embeddings."""
    logit_scale: Tensor | None = None
    """Scalar multiplier 1/τ of the clip loss: exp(log scale) clamped at max_logit_scale."""


class AudioTextModel(nn.Module):
    """Audio tower + text tower + projection heads + logit scale; save_pretrained/from_pretrained round-trip."""

    def __init__(
        self,
        audio_encoder: AudioEncoder,
        text_encoder: TextEncoder,
        config: ModelConfig,
        sample_rate: int,
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
    ):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.audio_proj = nn.Linear(audio_encoder.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(text_encoder.hidden_size, config.embed_dim)
        # Shape [1], not a 0-dim scalar: DeepSpeed's parameter broadcast views params as bytes, which 0-dim cannot do.
        self.log_logit_scale = nn.Parameter(torch.full((1,), math.log(init_logit_scale)))
        self.model_config = config
        self.sample_rate = sample_rate
        self.init_logit_scale = init_logit_scale
        self.max_logit_scale = max_logit_scale
        self.caption_transform = "none"
        """Normalisation of every text before tokenising (trainer.captions; data.caption_transform of the run)."""
        # DeepSpeed bf16/fp16 casts parameters but keeps buffers in float32; a BatchNorm (HTSAT's) with half-precision
        # weights and float32 running statistics fails. DeepSpeed reads this attribute to keep such modules in
        # float32, where BatchNorm accepts half-precision input.
        self._keep_in_fp32_modules_strict = [
            re.escape(name) + r"\."
            for name, module in self.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        ]

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    @property
    def frame_rate(self) -> float:
        return self.audio_encoder.frame_rate

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Padded, truncated (to model.text.max_length) input_ids and attention_mask for `texts`, normalised first by
        `caption_transform`."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of captions, got a single string")
        return self.text_encoder.tokenize(normalize_captions(texts, self.caption_transform))

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.audio_encoder.set_gradient_checkpointing(enabled)
        self.text_encoder.set_gradient_checkpointing(enabled)

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale).squeeze(0)

    def logit_scale_value(self) -> float:
        """The current logit scale multiplier as a number (for logs).

        Under DeepSpeed ZeRO-3 the parameter may be partitioned (empty on each rank): it is gathered first, which is
        a collective call, so then every rank must call this.
        """
        if hasattr(self.log_logit_scale, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([self.log_logit_scale]):
                return float(self.logit_scale().detach())
        return float(self.logit_scale().detach())

    def forward(
        self,
        audio: Tensor | None = None,
        audio_mask: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> ModelOutput:
        """audio [B, N] at `sample_rate` (+ mask, True = real), token ids [T, L] (+ mask); either may be None."""
        out = ModelOutput(logit_scale=self.logit_scale())
        if audio is not None:
            hidden, frame_mask = self.audio_encoder(audio, audio_mask)
            proj = self.audio_proj(hidden)
            weight = frame_mask.to(proj.dtype)[..., None]
            clip = (proj * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
            out.audio_frames = F.normalize(proj, dim=-1)
            out.audio_clip = F.normalize(clip, dim=-1)
            out.frame_mask = frame_mask
            out.frame_rate = self.audio_encoder.frame_rate
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            out.text = F.normalize(self.text_proj(self.text_encoder(input_ids, attention_mask)), dim=-1)
        return out

    # -----------------------------------------------------------------------------------------------------------------
    # Checkpoints
    # -----------------------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, Tensor] | None = None) -> None:
        """Weights (safetensors), configs and tokenizer: enough for `from_pretrained` without the original sources.

        `state_dict` replaces this module's own weights, e.g. the consolidated one of a ZeRO-3 run.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": 1,
            "model": dataclasses.asdict(self.model_config),
            "sample_rate": self.sample_rate,
            "init_logit_scale": self.init_logit_scale,
            "max_logit_scale": self.max_logit_scale,
            "text_pooling": self.text_encoder.pooling,
            "caption_transform": self.caption_transform,
        }
        if self.model_config.audio.pretrained is not None:
            save_audio_backbone(self.audio_encoder, directory / "audio_backbone")
        if self.model_config.text.pretrained is not None:
            save_text_backbone(self.text_encoder, directory / "text_backbone")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        save_file(
            _plain_tensors(state_dict or self.state_dict()),
            directory / WEIGHTS_NAME,
            metadata={"format": "pt"},
        )
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> AudioTextModel:
        """Rebuild a model written by `save_pretrained` (no network, no original weights needed)."""
        directory = Path(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: not a saved model (no {CONFIG_NAME})")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
        cfg: ModelConfig = from_dict(ModelConfig, meta["model"], "model")
        sample_rate = int(meta["sample_rate"])
        audio_source = str(directory / "audio_backbone") if cfg.audio.pretrained is not None else None
        text_source = str(directory / "text_backbone") if cfg.text.pretrained is not None else None
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        audio = build_audio_encoder(cfg.audio, sample_rate, source=audio_source, load_weights=False)
        text = build_text_encoder(
            cfg.text,
            source=text_source,
            load_weights=False,
            tokenizer=tokenizer,
            pooling=meta["text_pooling"],
        )
        model = cls(audio, text, cfg, sample_rate, meta["init_logit_scale"], meta["max_logit_scale"])
        model.load_state_dict(load_file(directory / WEIGHTS_NAME), strict=True)
        model.caption_transform = meta.get("caption_transform", "none")
        return model.to(device)


def _plain_tensors(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU tensors that own their memory (safetensors refuses tensors sharing storage, e.g. tied weights)."""
    out, seen = {}, set()
    for name, t in state_dict.items():
        t = t.detach().cpu()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t.contiguous()
    return out


def build_model(
    model: ModelConfig, loss: LossConfig, sample_rate: int, tokenizer_texts: Iterable[str] | None = None
) -> AudioTextModel:
    """The model of `model` for audio at `sample_rate` Hz, logit scale from `loss` (init/max multipliers).

    With text.pretrained null a tokenizer is trained on `tokenizer_texts`; pass the same texts on every rank.
    """
    audio = build_audio_encoder(model.audio, sample_rate)
    text = build_text_encoder(model.text, tokenizer_texts)
    return AudioTextModel(audio, text, model, sample_rate, loss.init_logit_scale, loss.max_logit_scale)
