"""The joint audio-text model: two towers, projection heads into one L2-normalised space, a learnable logit scale.

One audio head serves frames and clips: a frame embedding is the head applied to that frame's hidden state, the
clip embedding is the head applied to the mean hidden state of the clip's real-audio frames (pool, then project).
For a linear head this is the normalised mean of the projected frames. For CLAP's MLP head (linear-ReLU-linear, kept
from a full CLAP checkpoint) it is exactly CLAP's own clip embedding -- ClapModel projects its pooled audio output,
the mean of the very frames we take -- and a frame embedding is what CLAP would give a clip whose pooled state were
that frame's. Either way frame-text and clip-text scores live in one space (as in TACOS), and the strong loss trains
the same head the weak loss uses.

Saved models are Hugging Face citizens (trainer/model/hub.py): `save_pretrained` writes a registered config,
safetensors weights, tokenizer, input settings and a model card; `from_pretrained` takes a folder, a training
checkpoint or a hub id. The inference calls (`embed_audio`, `embed_text`, `frame_scores`) are in inference.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, Wav2Vec2FeatureExtractor
from transformers.utils import ModelOutput as _HFModelOutput

from trainer.captions import normalize_captions
from trainer.config import LossConfig, ModelConfig
from trainer.configparse import from_dict
from trainer.model import inference
from trainer.model.audio import AudioEncoder, build_audio_encoder, save_audio_backbone
from trainer.model.card import model_card
from trainer.model.heads import DEFAULT_EMBED_DIM, HeadSpec, build_head, load_clap, shared_clap_source
from trainer.model.hub import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    LEGACY_TOKENIZER_DIR,
    MODEL_TYPE,
    WEIGHTS_NAME,
    SonotextConfig,
    hub_kwargs,
    locate,
    push_folder,
)
from trainer.model.text import TextEncoder, build_text_encoder, save_text_backbone


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

    config_class = SonotextConfig  # what AutoModel.register checks

    def __init__(
        self,
        audio_encoder: AudioEncoder,
        text_encoder: TextEncoder,
        config: ModelConfig,
        sample_rate: int,
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
        heads: Mapping[str, HeadSpec] | None = None,
    ):
        super().__init__()
        config = dataclasses.replace(config, embed_dim=config.embed_dim or DEFAULT_EMBED_DIM)
        self.head_specs = {side: (heads or {}).get(side, HeadSpec()) for side in ("audio", "text")}
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.audio_proj = build_head(self.head_specs["audio"], audio_encoder.hidden_size, config.embed_dim)
        self.text_proj = build_head(self.head_specs["text"], text_encoder.hidden_size, config.embed_dim)
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
            weight = frame_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
            out.audio_frames = F.normalize(self.audio_proj(hidden), dim=-1)
            out.audio_clip = F.normalize(self.audio_proj(pooled), dim=-1)
            out.frame_mask = frame_mask
            out.frame_rate = self.audio_encoder.frame_rate
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            out.text = F.normalize(self.text_proj(self.text_encoder(input_ids, attention_mask)), dim=-1)
        return out

    # -----------------------------------------------------------------------------------------------------------------
    # Inference (trainer/model/inference.py)
    # -----------------------------------------------------------------------------------------------------------------

    def embed_audio(
        self,
        audio: Any,
        sample_rate: int | None = None,
        batch_size: int = 16,
        max_seconds: float | None = None,
        progress: bool = False,
    ) -> Tensor:
        """[N, D] clip embeddings of audio files (any format and rate) or waveforms at `sample_rate` Hz: one path or
        waveform [N], a [B, N] batch, or a list of them. Float32 on the CPU, L2-normalised."""
        return inference.embed_audio(self, audio, sample_rate, batch_size, max_seconds, progress)

    def embed_text(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Tensor:
        """[T, D] embeddings of `texts`. Float32 on the CPU, L2-normalised."""
        return inference.embed_text(self, texts, batch_size, progress)

    def frame_scores(
        self,
        audio: Any,
        sample_rate: int | None = None,
        texts: Sequence[str] = (),
        batch_size: int = 16,
        max_seconds: float | None = None,
    ) -> list[inference.FrameScores]:
        """Per clip of `audio` (as embed_audio takes it): similarity of each text with each frame, times in seconds."""
        return inference.frame_scores(self, audio, sample_rate, texts, batch_size, max_seconds)

    # -----------------------------------------------------------------------------------------------------------------
    # Saving and loading
    # -----------------------------------------------------------------------------------------------------------------

    def describe(self, state_dict: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        """What the model says about itself: the content of its config.json (and the basis of its model card).

        The logit scale is read from `state_dict` when given (a ZeRO-3 run's consolidated weights: this runs on the
        main process alone, where gathering the partitioned parameter would wait for the other ranks forever).
        """
        source = state_dict if state_dict is not None else {"log_logit_scale": self.log_logit_scale.detach()}
        log_scale = source["log_logit_scale"]
        scale = float(log_scale.float().exp().clamp(max=self.max_logit_scale)) if log_scale.numel() else None
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": dataclasses.asdict(self.model_config),
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "embed_dim": self.model_config.embed_dim,
            "init_logit_scale": self.init_logit_scale,
            "max_logit_scale": self.max_logit_scale,
            "logit_scale": scale,
            "text_pooling": self.text_encoder.pooling,
            "heads": {side: spec.to_dict() for side, spec in self.head_specs.items()},
            "caption_transform": self.caption_transform,
        }

    def save_pretrained(
        self,
        directory: str | Path,
        state_dict: dict[str, Tensor] | None = None,
        training: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        """A hub-ready folder: config.json (model_type "sonotext"), model.safetensors, the tokenizer,
        preprocessor_config.json (raw waveform at the model's rate, with an attention mask), the towers' configs and
        front-end settings, and a model card README.md. `from_pretrained` needs nothing else (no original sources).

        `state_dict` replaces this module's own weights, e.g. the consolidated one of a ZeRO-3 run. `training`
        (trainer.checkpoint.training_summary) adds the data mixture, samples seen, steps and last evaluation to the
        card; `name` is how the card's examples refer to the model (default: the folder name).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = self.describe(state_dict)
        if self.model_config.audio.pretrained is not None:
            save_audio_backbone(self.audio_encoder, directory / "audio_backbone")
        if self.model_config.text.pretrained is not None:
            save_text_backbone(self.text_encoder, directory / "text_backbone")
        self.tokenizer.save_pretrained(directory)
        Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=self.sample_rate,
            padding_value=0.0,
            do_normalize=False,
            return_attention_mask=True,
        ).save_pretrained(directory)
        save_file(
            _plain_tensors(state_dict or self.state_dict()),
            directory / WEIGHTS_NAME,
            metadata={"format": "pt"},
        )
        card = model_card(meta, training, name or directory.resolve().name)
        (directory / CARD_NAME).write_text(card, encoding="utf-8")
        config = SonotextConfig(
            **{
                k: meta[k]
                for k in (
                    "model",
                    "sample_rate",
                    "init_logit_scale",
                    "max_logit_scale",
                    "text_pooling",
                    "heads",
                    "caption_transform",
                )
            }
        )
        config.architectures = [type(self).__name__]
        config.save_pretrained(directory)  # written last: a folder with config.json is complete

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        what: str = "model",
        **kwargs: Any,
    ) -> AudioTextModel:
        """A saved model from a folder, a training checkpoint (RUN/checkpoints/step_N or latest) or a hub id
        (ORG/NAME, through huggingface_hub's cache; HF_HUB_OFFLINE=1 uses a cached copy without network).

        Hub options: revision, cache_dir, token, local_files_only. `what` names the argument in errors. Also what
        AutoModel.from_pretrained calls (its bookkeeping arguments are accepted and ignored).
        """
        dtype = dtype or kwargs.pop("torch_dtype", None)
        directory = locate(name_or_path, what, **hub_kwargs(kwargs))
        path = directory / CONFIG_NAME
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
        if int(meta.get("version", 1)) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: saved by a newer sonotext (format version {meta['version']} > {FORMAT_VERSION}); upgrade"
            )
        cfg: ModelConfig = from_dict(ModelConfig, meta["model"], "model")
        sample_rate = int(meta["sample_rate"])
        audio_source = str(directory / "audio_backbone") if cfg.audio.pretrained is not None else None
        text_source = str(directory / "text_backbone") if cfg.text.pretrained is not None else None
        legacy = directory / LEGACY_TOKENIZER_DIR  # format 1
        tokenizer = AutoTokenizer.from_pretrained(legacy if legacy.is_dir() else directory)
        audio = build_audio_encoder(cfg.audio, sample_rate, source=audio_source, load_weights=False)
        text = build_text_encoder(
            cfg.text,
            source=text_source,
            load_weights=False,
            tokenizer=tokenizer,
            pooling=meta["text_pooling"],
        )
        heads = {side: HeadSpec.from_dict(spec) for side, spec in (meta.get("heads") or {}).items()}
        model = cls(audio, text, cfg, sample_rate, meta["init_logit_scale"], meta["max_logit_scale"], heads)
        model.load_state_dict(load_file(directory / WEIGHTS_NAME), strict=True)
        model.caption_transform = meta.get("caption_transform", "none")
        return model.to(device=device, dtype=dtype)

    def push_to_hub(
        self,
        repo_id: str,
        training: Mapping[str, Any] | None = None,
        private: bool = False,
        token: str | None = None,
    ) -> str:
        """save_pretrained into a temporary folder and upload it to `repo_id` (needs network and a write token)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, training=training, name=repo_id)
            return push_folder(tmp, repo_id, private, token)


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

    With text.pretrained null a tokenizer is trained on `tokenizer_texts`; pass the same texts on every rank. When
    both towers come from one full CLAP checkpoint (and model.keep_heads), its projection heads and logit scale are
    kept (trainer/model/heads.py), so the model scores as that checkpoint does before training.
    """
    source = shared_clap_source(model)
    if source is None:
        audio = build_audio_encoder(model.audio, sample_rate)
        text = build_text_encoder(model.text, tokenizer_texts)
        return AudioTextModel(audio, text, model, sample_rate, loss.init_logit_scale, loss.max_logit_scale)
    clap = load_clap(model, source, loss.max_logit_scale)
    audio = build_audio_encoder(model.audio, sample_rate, backbone=clap.audio_backbone)
    text = build_text_encoder(model.text, backbone=clap.text_backbone, pooling=model.text.pooling or "pooler")
    joint = AudioTextModel(
        audio,
        text,
        dataclasses.replace(model, embed_dim=clap.embed_dim),
        sample_rate,
        math.exp(clap.log_logit_scale),
        loss.max_logit_scale,
        heads={"audio": clap.spec, "text": clap.spec},
    )
    joint.audio_proj.load_state_dict(clap.audio_head.state_dict())
    joint.text_proj.load_state_dict(clap.text_head.state_dict())
    with torch.no_grad():
        joint.log_logit_scale.fill_(clap.log_logit_scale)
    return joint


AutoConfig.register(MODEL_TYPE, SonotextConfig, exist_ok=True)
AutoModel.register(SonotextConfig, AudioTextModel, exist_ok=True)
