"""The inference calls on the model: embed_audio (files and waveforms at any rate), embed_text, frame_scores."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from shards.audio import AudioError, resample
from tests.helpers import tiny_joint_model, tone
from trainer.config import LossConfig
from trainer.model import build_model
from trainer.model.inference import FrameScores, pad_batch

RATE = 16000
TEXTS = ["a dog barks", "rain on a roof", "a tone at 440 hertz", "a steady beep", "silence"]


@pytest.fixture(scope="module")
def model():
    return tiny_joint_model(RATE, TEXTS, width=32, embed_dim=16)


def direct(model, waves: list[np.ndarray]) -> torch.Tensor:
    """Clip embeddings of waveforms at the model's rate by a plain forward, one clip at a time."""
    with torch.no_grad():
        return torch.cat([model.eval()(torch.from_numpy(w)[None]).audio_clip for w in waves])


def test_embed_audio_files_and_waveforms_at_any_rate(model, tmp_path):
    a = tone(1.0, RATE, 440.0, noise=0.02)
    b = tone(0.7, RATE, 1500.0, start=0.2, noise=0.02, seed=1)
    ref = direct(model, [a, b])

    model.train()  # the call switches to eval and back
    alone = model.embed_audio([a, b], sample_rate=RATE, batch_size=1)
    assert model.training and alone.dtype == torch.float32 and alone.device.type == "cpu"
    assert not alone.requires_grad
    torch.testing.assert_close(alone, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.embed_audio(np.stack([a, a]), RATE), ref[[0, 0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.embed_audio(torch.from_numpy(a), RATE), ref[:1], atol=1e-5, rtol=0)
    # Batched, the shorter clip is zero-padded and masked: only its last STFT frames see zeros instead of reflected
    # audio, so it moves a little.
    together = model.embed_audio([a, b], sample_rate=RATE)
    with torch.no_grad():
        padded = model(**pad_batch([a, b])).audio_clip
    torch.testing.assert_close(together, padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(together, ref, atol=2e-3, rtol=0)

    # Another rate: resampled (soxr, as the converters) to the model's 16 kHz first.
    a44 = resample(a, RATE, 44100)
    want = direct(model, [resample(a44, 44100, RATE)])
    torch.testing.assert_close(model.embed_audio([a44], sample_rate=44100), want, atol=1e-5, rtol=0)

    # Files in any format, rate and channel count: decoded, mixed down, resampled.
    sf.write(tmp_path / "a.wav", a44, 44100)
    sf.write(tmp_path / "b.flac", np.stack([b, b], axis=1), RATE, subtype="PCM_24")
    files = model.embed_audio([tmp_path / "a.wav", str(tmp_path / "b.flac")])
    torch.testing.assert_close(files[0], want[0], atol=1e-4, rtol=0)  # WAV stored as 16-bit
    torch.testing.assert_close(files[1], together[1], atol=1e-4, rtol=0)  # batched with a.wav
    torch.testing.assert_close(files.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)

    cut = model.embed_audio([a], RATE, max_seconds=0.5)
    torch.testing.assert_close(cut, direct(model, [a[: RATE // 2]]), atol=1e-5, rtol=0)


def test_embed_text(model):
    got = model.embed_text(TEXTS, batch_size=2)
    with torch.no_grad():
        ref = model.eval()(**model.tokenize(TEXTS)).text
    assert got.shape == (5, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_frame_scores_over_time(model):
    a = tone(2.0, RATE, 440.0, start=0.5, stop=1.2)
    b = tone(1.0, RATE, 1000.0)
    scores = model.frame_scores([a, b], RATE, TEXTS[:3])
    assert len(scores) == 2 and all(isinstance(s, FrameScores) for s in scores)
    rate = model.frame_rate
    assert scores[0].frame_rate == rate == 25.0 and scores[0].texts == TEXTS[:3]
    for s, seconds in zip(scores, (2.0, 1.0)):
        f = s.scores.shape[1]
        assert s.scores.shape == (3, f) and abs(f - seconds * rate) <= 1
        torch.testing.assert_close(s.times, torch.arange(f, dtype=torch.float64) / rate)
    # The same numbers as a forward pass: frame embeddings against text embeddings.
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(a)[None], None, **model.tokenize(TEXTS[:3]))
    expected = out.text @ out.audio_frames[0][out.frame_mask[0]].T
    torch.testing.assert_close(scores[0].scores, expected, atol=1e-5, rtol=0)


def test_half_precision_model(model):
    """A bfloat16 model runs in bfloat16 (features stay float32 inside) and returns float32."""
    a = tone(1.0, RATE, 440.0, noise=0.02)
    ref = model.embed_audio([a], RATE)
    half = build_model(model.model_config, LossConfig(), RATE, TEXTS)
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    got = half.embed_audio([a], RATE)
    assert got.dtype == torch.float32 and next(half.parameters()).dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(got, ref).item() > 0.99
    text = half.embed_text(TEXTS[:2])
    assert torch.nn.functional.cosine_similarity(text, model.embed_text(TEXTS[:2])).min().item() > 0.99


def test_bad_inputs_are_named(model, tmp_path):
    a = tone(0.5, RATE)
    with pytest.raises(ValueError, match=r"sample_rate: required for waveforms"):
        model.embed_audio([a])
    with pytest.raises(ValueError, match=r"each waveform must be mono \[N\], got shape \(8000, 2\)"):
        model.embed_audio([np.stack([a, a], axis=1)], RATE)
    with pytest.raises(ValueError, match=r"a batch \[B, N\], got shape \(1, 2, 8000\)"):
        model.embed_audio(np.zeros((1, 2, 8000), np.float32), RATE)
    with pytest.raises(AudioError, match=r"missing\.wav: file not found"):
        model.embed_audio([tmp_path / "missing.wav"])
    with pytest.raises(TypeError, match="texts: expected a list of strings"):
        model.embed_text("a dog")
    with pytest.raises(ValueError, match="batch_size: must be > 0"):
        model.embed_text(TEXTS, batch_size=0)
