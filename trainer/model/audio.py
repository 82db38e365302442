"""Audio towers: waveform batch (+ mask) -> frame-level hidden states, their mask and frame rate.

Backends ("model.audio.name"): conv (our own, tiny), ast (ASTModel), clap_htsat (ClapAudioModel),
whisper (WhisperEncoder), wav2vec2 / hubert (raw waveform). With ``pretrained: null`` a transformers backend is
built from a small config (hidden_size, num_layers, num_heads, n_mels, overrides) with its front end designed
for the data sample rate; with a local path or hub id the weights and the feature-extractor settings are loaded
and the waveform is resampled to the extractor's rate inside the model.

Encoders with a fixed input size (AST, HTSAT, Whisper) see long audio as consecutive windows whose frames are
concatenated on one uniform time grid, so the frame rate holds for any input length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    ASTConfig,
    ASTModel,
    AutoFeatureExtractor,
    ClapAudioConfig,
    ClapAudioModel,
    ClapConfig,
    ClapModel,
    HubertConfig,
    HubertModel,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperForAudioClassification,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from trainer.config import AudioModelConfig
from trainer.model.conv import ConvBackend
from trainer.model.frontend import (
    FeatureSpec,
    LogMel,
    frames_mask,
    merge_windows,
    resample,
    resample_mask,
    split_windows,
)
from trainer.model.hf import apply_overrides, resolve_pretrained, set_hf_checkpointing

KALDI_FLOOR = 1.1920928955078125e-07  # float32 eps, Kaldi's log floor


class AudioEncoder(nn.Module):
    """Waveform [B, N] at `input_rate` + mask -> (hidden [B, F, H], frame_mask [B, F]) at `frame_rate` Hz."""

    def __init__(self, backend: nn.Module, input_rate: int):
        super().__init__()
        self.backend = backend
        self.input_rate = input_rate

    @property
    def hidden_size(self) -> int:
        return self.backend.hidden_size

    @property
    def frame_rate(self) -> float:
        return self.backend.frame_rate

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.backend.set_gradient_checkpointing(enabled)

    def forward(self, audio: Tensor, audio_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if audio.ndim != 2:
            raise ValueError(f"audio must be a [B, N] waveform batch, got shape {tuple(audio.shape)}")
        if audio_mask is None:
            audio_mask = torch.ones(audio.shape, dtype=torch.bool, device=audio.device)
        if audio_mask.shape != audio.shape:
            raise ValueError(
                f"audio_mask {tuple(audio_mask.shape)} does not match audio {tuple(audio.shape)}"
            )
        audio_mask = audio_mask.bool()
        rate = self.backend.sample_rate
        # Feature extraction stays in float32 whatever the autocast context.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            wave = audio.float() * audio_mask
            wave = resample(wave, self.input_rate, rate)
            mask = resample_mask(audio_mask, wave.shape[-1])
        hidden = self.backend(wave, mask)
        frame_mask = frames_mask(audio_mask, hidden.shape[1], self.frame_rate, self.input_rate)
        return hidden, frame_mask


# ---------------------------------------------------------------------------------------------------------------------
# transformers backends
# ---------------------------------------------------------------------------------------------------------------------


class ASTBackend(nn.Module):
    """AST: Kaldi fbank -> patch grid -> per time column the mean over frequency patches."""

    def __init__(self, model: ASTModel, extractor: dict[str, Any]):
        super().__init__()
        c = model.config
        self.model = model
        self.extractor = extractor
        self.sample_rate = int(extractor["sampling_rate"])
        win, hop = round(0.025 * self.sample_rate), round(0.010 * self.sample_rate)
        self.mel = LogMel(
            FeatureSpec(
                sample_rate=self.sample_rate,
                n_fft=2 ** math.ceil(math.log2(win)),
                win_length=win,
                hop_length=hop,
                n_mels=c.num_mel_bins,
                f_min=20.0,
                mel_scale="kaldi",
                window="hann_symmetric",
                kaldi=True,
                floor=KALDI_FLOOR,
            )
        )
        self.hidden_size = c.hidden_size
        self.freq_patches = (c.num_mel_bins - c.patch_size) // c.frequency_stride + 1
        self.time_patches = (c.max_length - c.patch_size) // c.time_stride + 1
        self.window = c.max_length
        self.window_hop = self.time_patches * c.time_stride  # windows tile the patch grid without a seam
        self.frame_rate = self.sample_rate / (hop * c.time_stride)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, enabled)

    def features(self, wave: Tensor, mask: Tensor) -> Tensor:
        """[B*K, max_length, n_mels] normalised filterbank windows, as ASTFeatureExtractor makes them."""
        fbank = self.mel(wave)  # [B, T, M]
        real = frames_mask(mask, fbank.shape[1], 1 / self.mel.hop_seconds, self.sample_rate)
        fbank = fbank * real[..., None]  # AST pads the filterbank with zeros
        windows, _ = split_windows(fbank, self.window, self.window_hop)
        if self.extractor.get("do_normalize", True):
            windows = (windows - self.extractor.get("mean", -4.2677393)) / (
                2 * self.extractor.get("std", 4.5689974)
            )
        return windows

    def forward(self, wave: Tensor, mask: Tensor) -> Tensor:
        # Features are float32; a model cast as a whole (DeepSpeed bf16/fp16) takes them in its own dtype.
        hidden = self.model(input_values=self.features(wave, mask).to(self.model.dtype)).last_hidden_state
        hidden = hidden[:, 2:]  # drop the CLS and distillation tokens
        hidden = hidden.reshape(hidden.shape[0], self.freq_patches, self.time_patches, -1).mean(dim=1)
        return merge_windows(hidden, wave.shape[0])


class ClapBackend(nn.Module):
    """CLAP HTSAT: log-mel (dB) windows -> Swin -> the model's time-unfolded output averaged over frequency.

    A window is `window_frames` mel frames of (window_frames - 1) * hop samples, its mel computed on its own as
    ClapFeatureExtractor computes one clip of max_length_s (a centred STFT that reflects at the window's edges): a
    clip of exactly that length gives the extractor's input_features, and the mean of its frames is ClapModel's
    pooled audio output.
    """

    def __init__(self, model: ClapAudioModel, extractor: dict[str, Any], window_frames: int):
        super().__init__()
        c = model.config
        self.model = model
        self.extractor = extractor
        self.sample_rate = int(extractor["sampling_rate"])
        fusion = extractor.get("truncation", "fusion") == "fusion"
        self.mel = LogMel(
            FeatureSpec(
                sample_rate=self.sample_rate,
                n_fft=int(extractor["fft_window_size"]),
                hop_length=int(extractor["hop_length"]),
                n_mels=int(extractor["feature_size"]),
                f_min=float(extractor["frequency_min"]),
                f_max=float(extractor["frequency_max"]),
                mel_scale="htk" if fusion else "slaney",
                mel_norm=None if fusion else "slaney",
                log="db",
            )
        )
        self.window = window_frames
        self.window_samples = (window_frames - 1) * int(extractor["hop_length"])
        self.fusion = bool(c.enable_fusion)
        if self.fusion:
            # Windows are never longer than the model's input, so the long-audio fusion branch stays unused;
            # parameters without gradient would stall DDP.
            patch_embed = model.audio_encoder.patch_embed
            for part in (patch_embed.fusion_model, patch_embed.mel_conv2d):
                part.requires_grad_(False)
        freq_ratio = c.spec_size // c.num_mel_bins
        stages = len(c.depths)
        self.hidden_size = int(c.patch_embeds_hidden_size * 2 ** (stages - 1))
        self.frames_per_window = freq_ratio * (c.spec_size // 2 ** (stages - 1) // c.patch_stride[1])
        self.frame_rate = self.frames_per_window * self.sample_rate / self.window_samples

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, enabled)

    def features(self, wave: Tensor, mask: Tensor) -> Tensor:
        """[B*K, 1, window, n_mels] log-mel (dB) of the zero-padded waveform's consecutive windows."""
        n = self.window_samples
        k = max(1, math.ceil(wave.shape[-1] / n))
        wave = nn.functional.pad(wave, (0, k * n - wave.shape[-1]))
        mel = self.mel(wave.reshape(-1, n))  # [B*K, W, M]: 1 + n // hop frames each
        return mel[:, None]

    def forward(self, wave: Tensor, mask: Tensor) -> Tensor:
        x = self.features(wave, mask).to(self.model.dtype)
        is_longer = None
        if self.fusion:  # short inputs of a fusion model: the same mel in all four channels
            x = x.expand(-1, 4, -1, -1)
            is_longer = torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)
        hidden = self.model(input_features=x, is_longer=is_longer).last_hidden_state  # [B*K, C, f, T]
        hidden = hidden.mean(dim=2).transpose(1, 2)
        if hidden.shape[1] != self.frames_per_window:
            raise RuntimeError(
                f"HTSAT gave {hidden.shape[1]} frames per window, expected {self.frames_per_window}"
            )
        return merge_windows(hidden, wave.shape[0])


class WhisperBackend(nn.Module):
    """Whisper encoder: 30 s (max_source_positions · 2 mel frames) windows of Whisper's log-mel."""

    def __init__(self, encoder: WhisperEncoder, extractor: dict[str, Any]):
        super().__init__()
        c = encoder.config
        self.model = encoder
        self.extractor = extractor
        self.sample_rate = int(extractor["sampling_rate"])
        self.mel = LogMel(
            FeatureSpec(
                sample_rate=self.sample_rate,
                n_fft=int(extractor["n_fft"]),
                hop_length=int(extractor["hop_length"]),
                n_mels=int(extractor["feature_size"]),
                f_max=min(8000.0, self.sample_rate / 2),
                mel_scale="slaney",
                mel_norm="slaney",
                log="log10",
                drop_last_frame=True,
            )
        )
        self.window = c.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.hidden_size = c.d_model
        self.frame_rate = c.max_source_positions / (self.window * self.mel.hop_seconds)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, enabled)

    def features(self, wave: Tensor, mask: Tensor) -> Tensor:
        """[B*K, n_mels, window] Whisper log-mel windows (silence-padded, range-clamped per window)."""
        hop = self.mel.spec.hop_length
        k = max(1, math.ceil(wave.shape[-1] / (self.window * hop)))
        # Whisper pads with silence to whole windows.
        wave = nn.functional.pad(wave, (0, k * self.window * hop - wave.shape[-1]))
        mel = self.mel(wave).reshape(-1, self.window, self.mel.spec.n_mels)  # [B*K, W, M]
        top = mel.amax(dim=(1, 2), keepdim=True)
        return ((torch.maximum(mel, top - 8.0) + 4.0) / 4.0).transpose(1, 2)

    def forward(self, wave: Tensor, mask: Tensor) -> Tensor:
        hidden = self.model(input_features=self.features(wave, mask).to(self.model.dtype)).last_hidden_state
        return merge_windows(hidden, wave.shape[0])


class Wav2Vec2Backend(nn.Module):
    """wav2vec 2.0 / HuBERT on the raw waveform (optionally normalised per clip, as their extractors do)."""

    def __init__(self, model: Wav2Vec2Model | HubertModel, extractor: dict[str, Any]):
        super().__init__()
        c = model.config
        self.model = model
        self.extractor = extractor
        self.sample_rate = int(extractor["sampling_rate"])
        self.hidden_size = c.hidden_size
        self.frame_rate = self.sample_rate / math.prod(c.conv_stride)
        # Group-norm feature encoders were trained on unmasked zero padding (the extractor says so).
        self.use_mask = bool(extractor.get("return_attention_mask", c.feat_extract_norm == "layer"))
        spec_embed = getattr(model, "masked_spec_embed", None)
        if spec_embed is not None and not (c.apply_spec_augment and c.mask_time_prob > 0):
            # Only time masking (SpecAugment) uses it; a parameter without gradient would stall DDP.
            spec_embed.requires_grad_(False)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, enabled)

    def forward(self, wave: Tensor, mask: Tensor) -> Tensor:
        if self.extractor.get("do_normalize", True):
            m = mask.to(wave.dtype)
            n = m.sum(dim=-1, keepdim=True).clamp(min=1)
            mean = (wave * m).sum(dim=-1, keepdim=True) / n
            var = ((wave - mean) ** 2 * m).sum(dim=-1, keepdim=True) / n
            wave = (wave - mean) / torch.sqrt(var + 1e-7) * m
        attention_mask = mask.long() if self.use_mask else None
        wave = wave.to(
            self.model.dtype
        )  # float32, or bf16/fp16 when the model was cast as a whole (DeepSpeed)
        return self.model(input_values=wave, attention_mask=attention_mask).last_hidden_state


# ---------------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------------


def load_extractor(source: str, key: str) -> dict[str, Any]:
    """The feature-extractor settings (preprocessor_config.json) of a local folder or hub id."""
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    try:
        return AutoFeatureExtractor.from_pretrained(source).to_dict()
    except (OSError, ValueError) as e:
        raise ValueError(f"{key}: cannot load the feature extractor settings of {source!r}: {e}") from None


def _random_extractor(name: str, sample_rate: int, n_mels: int) -> dict[str, Any]:
    """Front-end settings of a random-init backend: the backend's design (window/hop in ms) at the data rate."""
    hop = round(0.010 * sample_rate)
    if name == "ast":
        return {"sampling_rate": sample_rate, "num_mel_bins": n_mels, "do_normalize": True}
    if name == "clap_htsat":
        return {
            "sampling_rate": sample_rate,
            "feature_size": n_mels,
            "hop_length": hop,
            "fft_window_size": 2 ** math.ceil(math.log2(0.0213 * sample_rate)),
            "frequency_min": 50.0,
            "frequency_max": min(14000.0, sample_rate / 2),
            "truncation": "rand_trunc",
        }
    if name == "whisper":
        return {
            "sampling_rate": sample_rate,
            "feature_size": n_mels,
            "hop_length": hop,
            "n_fft": round(2.5 * hop),
        }
    return {"sampling_rate": sample_rate, "do_normalize": True, "return_attention_mask": True}


def _random_config(cfg: AudioModelConfig) -> PretrainedConfig:
    h, layers, heads = cfg.hidden_size, cfg.num_layers, cfg.num_heads
    if cfg.name == "ast":
        return ASTConfig(
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * h,
            num_mel_bins=cfg.n_mels,
        )
    if cfg.name == "clap_htsat":
        return ClapAudioConfig(
            num_mel_bins=cfg.n_mels,
            spec_size=4 * cfg.n_mels,  # HTSAT's frequency ratio of 4
            patch_embeds_hidden_size=h,
            hidden_size=h * 2 ** (layers - 1),
            depths=[2] * layers,
            num_attention_heads=[heads * 2**i for i in range(layers)],
        )
    if cfg.name == "whisper":
        return WhisperConfig(
            num_mel_bins=cfg.n_mels,
            d_model=h,
            encoder_layers=layers,
            encoder_attention_heads=heads,
            encoder_ffn_dim=4 * h,
            decoder_layers=1,
            decoder_attention_heads=heads,
            decoder_ffn_dim=4 * h,
        )
    config_class = Wav2Vec2Config if cfg.name == "wav2vec2" else HubertConfig
    return config_class(
        hidden_size=h,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * h,
        conv_dim=(h,) * 7,
        num_conv_pos_embedding_groups=math.gcd(16, h),
        feat_extract_norm="layer",  # masks padding correctly
        do_stable_layer_norm=True,
        apply_spec_augment=False,
    )


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "ast": ASTModel,
    "clap_htsat": ClapAudioModel,
    "wav2vec2": Wav2Vec2Model,
    "hubert": HubertModel,
}


def _load_pretrained(
    name: str, source: str, overrides: dict[str, Any], load_weights: bool
) -> PreTrainedModel:
    key = "model.audio.overrides"
    if name == "whisper":
        # WhisperForAudioClassification maps a full Whisper checkpoint's encoder onto a bare WhisperEncoder.
        config = WhisperConfig.from_pretrained(source)
        apply_overrides(config, overrides, key)
        if load_weights:
            return WhisperForAudioClassification.from_pretrained(source, config=config).encoder
        return WhisperEncoder(config)
    if name == "clap_htsat" and PretrainedConfig.get_config_dict(source)[0].get("model_type") == "clap":
        # A full CLAP checkpoint: its audio tower lives under audio_model.
        full = ClapConfig.from_pretrained(source)
        apply_overrides(full.audio_config, overrides, key)
        if load_weights:
            return ClapModel.from_pretrained(source, config=full).audio_model
        return ClapAudioModel(full.audio_config)
    model_class = _MODEL_CLASSES[name]
    config = model_class.config_class.from_pretrained(source)
    apply_overrides(config, overrides, key)
    if load_weights:
        return model_class.from_pretrained(source, config=config)
    return model_class(config)


def build_audio_encoder(
    cfg: AudioModelConfig,
    sample_rate: int,
    source: str | None = None,
    load_weights: bool = True,
    backbone: PreTrainedModel | None = None,
) -> AudioEncoder:
    """The audio tower of `cfg` for input at `sample_rate` Hz.

    `source` (default: cfg.pretrained) is where a pretrained backbone's config, feature-extractor settings and
    (when `load_weights`) weights come from; checkpoints pass their own copy with load_weights=False. `backbone`
    is that model already loaded (a full CLAP checkpoint loaded once for both towers).
    """
    source = source if source is not None else cfg.pretrained
    if cfg.name == "conv":
        if source is not None:
            raise ValueError(
                "model.audio.pretrained: the conv encoder has no pretrained weights; set it to null"
            )
        if cfg.overrides:
            raise ValueError("model.audio.overrides: the conv encoder has no transformers config to override")
        backend: nn.Module = ConvBackend(
            sample_rate, cfg.hidden_size, cfg.num_layers, cfg.n_mels, cfg.frame_rate
        )
        return AudioEncoder(backend, sample_rate)
    if cfg.name not in ("ast", "clap_htsat", "whisper", "wav2vec2", "hubert"):
        raise ValueError(f"model.audio.name: unknown audio encoder {cfg.name!r}")

    if source is None:
        config = _random_config(cfg)
        apply_overrides(config, cfg.overrides, "model.audio.overrides")
        extractor = _random_extractor(cfg.name, sample_rate, cfg.n_mels)
        if cfg.name == "whisper":
            model: PreTrainedModel = WhisperEncoder(config)
        else:
            model = _MODEL_CLASSES[cfg.name](config)
    else:
        source = resolve_pretrained(source, "model.audio.pretrained")
        model = backbone or _load_pretrained(cfg.name, source, cfg.overrides, load_weights)
        extractor = load_extractor(source, "model.audio.pretrained")

    if cfg.name == "ast":
        backend = ASTBackend(model, extractor)
    elif cfg.name == "clap_htsat":
        c = model.config
        if c.spec_size % c.num_mel_bins:
            raise ValueError(
                f"model.audio: clap_htsat needs spec_size ({c.spec_size}) divisible by n_mels ({c.num_mel_bins})"
            )
        if source is None:  # a whole Swin input, no interpolation
            window = c.spec_size * (c.spec_size // c.num_mel_bins)
        else:  # the extractor's max_length_s, as the model was trained (1001 frames for 10 s at 48 kHz)
            window = (
                int(extractor.get("max_length_s", 10))
                * int(extractor["sampling_rate"])
                // int(extractor["hop_length"])
                + 1
            )
        backend = ClapBackend(model, extractor, window)
    elif cfg.name == "whisper":
        backend = WhisperBackend(model, extractor)
    else:
        backend = Wav2Vec2Backend(model, extractor)
    return AudioEncoder(backend, sample_rate)


def save_audio_backbone(encoder: AudioEncoder, directory: Path) -> None:
    """Write the backbone's transformers config and front-end settings (no weights) for `build_audio_encoder`."""
    backend = encoder.backend
    model = getattr(backend, "model", None)
    if model is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, WhisperEncoder):
        model.config.architectures = ["WhisperForAudioClassification"]
    model.config.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(
        json.dumps(backend.extractor, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
