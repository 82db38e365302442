"""A full CLAP checkpoint kept whole: its projection heads and logit scale, so that at step 0 the joint model scores
exactly as transformers' ClapModel does (tiny ClapModels saved offline, the unfused and the fused variant)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import CLAP_CAPTIONS, save_tiny_clap, tone
from trainer.config import AudioModelConfig, LossConfig, ModelConfig, TextModelConfig
from trainer.model import AudioTextModel, build_model
from trainer.model.heads import MLPHead

RATE = 48000  # the tiny CLAP's extractor rate: our input needs no resampling, so features can match exactly
CAPTIONS = list(CLAP_CAPTIONS[:4])
LOGIT_SCALE_A, LOGIT_SCALE_T = 20.0, 5.0


@pytest.fixture(scope="module", params=[False, True], ids=["unfused", "fused"])
def clap(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("clap")
    model, extractor, tokenizer = save_tiny_clap(path, fused=request.param, logit_scale=LOGIT_SCALE_A)
    # The two scales differ, so a test can tell which one the joint model kept.
    with torch.no_grad():
        model.logit_scale_t.fill_(math.log(LOGIT_SCALE_T))
    model.save_pretrained(path)
    return {
        "path": path,
        "model": model,
        "extractor": extractor,
        "tokenizer": tokenizer,
        "fused": request.param,
    }


def clap_config(path, **kw) -> ModelConfig:
    return ModelConfig(
        audio=AudioModelConfig(name="clap_htsat", pretrained=str(path)),
        text=TextModelConfig(name="clap", pretrained=str(path), max_length=16),
        **kw,
    )


def two_second_clips() -> np.ndarray:
    """Three clips of exactly the checkpoint's window (max_length_s = 2 s) at its rate: what CLAP embeds unpadded."""
    return np.stack(
        [tone(2.0, RATE, f, amplitude=0.3, noise=0.05, seed=k) for k, f in enumerate((440.0, 1000.0, 3000.0))]
    )


def clap_reference(clap, audio: np.ndarray):
    """ClapModel on ClapFeatureExtractor's features: (normalised audio, normalised text, logits_per_audio)."""
    model, tok = clap["model"], clap["tokenizer"]
    feats = clap["extractor"](list(audio), sampling_rate=RATE, return_tensors="pt")
    # The extractor marks one random short clip of a fused model "longer" (a training-time trick to keep the fusion
    # branch in the graph); every clip here is exactly one window, which CLAP's own inference treats as not longer.
    is_longer = torch.zeros(len(audio), 1, dtype=torch.bool)
    tokens = tok(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = model.get_audio_features(input_features=feats.input_features, is_longer=is_longer)
        t = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        # transformers < 5 returns the projected features, >= 5 a ModelOutput with them (normalised) as pooler_output
        a, t = (F.normalize(getattr(x, "pooler_output", x), dim=-1) for x in (a, t))
        logits = model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            input_features=feats.input_features,
            is_longer=is_longer,
        ).logits_per_audio
    return a, t, logits, feats.input_features


def test_step_zero_equals_clap_model(clap):
    model = build_model(clap_config(clap["path"]), LossConfig(), RATE).eval()
    audio = two_second_clips()
    ref_audio, ref_text, ref_logits, _ = clap_reference(clap, audio)
    with torch.no_grad():
        out = model(torch.from_numpy(audio), None, **model.tokenize(CAPTIONS))
    sim = out.audio_clip @ out.text.T
    # Cosine similarities as ClapModel.get_audio_features / get_text_features give them ...
    torch.testing.assert_close(sim, ref_audio @ ref_text.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.text, ref_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.audio_clip, ref_audio, atol=1e-5, rtol=0)
    # ... and logits x scale as ClapModel.forward's logits_per_audio: the scale is exp(logit_scale_a), not _t.
    assert out.logit_scale.item() == pytest.approx(LOGIT_SCALE_A, rel=1e-6)
    torch.testing.assert_close(sim * out.logit_scale, ref_logits, atol=1e-5, rtol=0)

    # CLAP's heads (linear-ReLU-linear) are ours, and one audio head serves clips and frames.
    assert isinstance(model.audio_proj, MLPHead) and isinstance(model.text_proj, MLPHead)
    assert model.model_config.embed_dim == 16 and model.text_encoder.pooling == "pooler"
    for ours, theirs in (
        (model.audio_proj, clap["model"].audio_projection),
        (model.text_proj, clap["model"].text_projection),
    ):
        for name, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[name], value), name
    with torch.no_grad():
        hidden, mask = model.audio_encoder(torch.from_numpy(audio))
        frames = F.normalize(model.audio_proj(hidden), dim=-1)
        clip = F.normalize(model.audio_proj(hidden.mean(dim=1)), dim=-1)
    assert (
        mask.all() and hidden.shape[1] == 32 and model.frame_rate == pytest.approx(16.0)
    )  # 32 frames in 2 s
    torch.testing.assert_close(out.audio_frames, frames, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.audio_clip, clip, atol=1e-6, rtol=0)


def test_front_end_equals_clap_feature_extractor(clap):
    """The input HTSAT sees: our log-mel of each window equals ClapFeatureExtractor's input_features."""
    model = build_model(clap_config(clap["path"]), LossConfig(), RATE).eval()
    backend = model.audio_encoder.backend
    assert backend.mel.spec.mel_scale == (
        "htk" if clap["fused"] else "slaney"
    )  # the extractor's two filter banks
    audio = two_second_clips()
    _, _, _, ref = clap_reference(clap, audio)
    ours = backend.features(torch.from_numpy(audio), torch.ones(audio.shape, dtype=torch.bool))
    assert ours.shape == (3, 1, 201, 16) and ref.shape == (3, 4 if clap["fused"] else 1, 201, 16)
    for channel in range(ref.shape[1]):  # fused: four copies of the same mel for clips that are not longer
        torch.testing.assert_close(ours[:, 0], ref[:, channel], atol=1e-4, rtol=0)  # dB


def test_saved_and_reloaded_model_keeps_the_heads(clap, tmp_path):
    model = build_model(clap_config(clap["path"]), LossConfig(), 32000).eval()
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["heads"] == {side: {"kind": "mlp", "activation": "relu"} for side in ("audio", "text")}
    assert meta["model"]["embed_dim"] == 16
    again = AudioTextModel.from_pretrained(tmp_path).eval()
    audio = torch.from_numpy(two_second_clips()[:, ::3].copy())  # 32 kHz input: resampled to 48 kHz inside
    with torch.no_grad():
        a = model(audio, None, **model.tokenize(CAPTIONS))
        b = again(audio, None, **again.tokenize(CAPTIONS))
    for key in ("audio_clip", "audio_frames", "text", "logit_scale"):
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)


def test_new_heads_on_request_and_clear_errors(clap):
    path = clap["path"]
    fresh = build_model(clap_config(path, keep_heads=False), LossConfig(init_logit_scale=10.0), RATE)
    assert isinstance(fresh.audio_proj, torch.nn.Linear) and fresh.model_config.embed_dim == 64
    assert fresh.logit_scale().item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match=r"model.embed_dim: 32, but the CLAP checkpoint .* projects to 16"):
        build_model(clap_config(path, embed_dim=32), LossConfig(), RATE)
    cfg = clap_config(path)
    cfg.text.pooling = "mean"
    with pytest.raises(
        ValueError, match=r"model\.text\.pooling: CLAP.s text_projection was trained on the pooler"
    ):
        build_model(cfg, LossConfig(), RATE)
    # Towers from two different checkpoints: nothing is shared, new heads.
    cfg = clap_config(path)
    cfg.text = TextModelConfig(name="tiny", hidden_size=16, num_layers=1, num_heads=2)
    mixed = build_model(cfg, LossConfig(), RATE, CAPTIONS)
    assert isinstance(mixed.audio_proj, torch.nn.Linear)
