"""Audio helpers: decode/resample/encode and streaming segmentation of long files."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import soundfile as sf

from shards.audio import AudioError, decode_flac, encode_flac, iter_segments, read_audio
from tests import helpers

tone = partial(helpers.tone, amplitude=0.5)


def test_stereo_wav_to_mono_resampled(tmp_path):
    x = tone(2.0, 44100)
    sf.write(tmp_path / "a b.wav", np.stack([x, x], 1), 44100)
    y, sr = read_audio(tmp_path / "a b.wav", 32000)
    assert sr == 32000 and y.shape == (64000,) and y.dtype == np.float32
    assert abs(np.abs(y).max() - 0.5) < 0.01


def test_segments_match_whole_file_resample(tmp_path):
    x = tone(7.5, 44100)
    sf.write(tmp_path / "long.flac", x, 44100)
    segs = list(iter_segments(tmp_path / "long.flac", 3.0, 32000))
    assert [s for s, _, _ in segs] == pytest.approx([0.0, 3.0, 6.0])
    assert [len(y) for _, y, _ in segs] == [96000, 96000, 48000]
    whole, _ = read_audio(tmp_path / "long.flac", 32000)
    np.testing.assert_allclose(np.concatenate([y for _, y, _ in segs]), whole, atol=1e-6)


def test_flac_round_trip_is_16_bit():
    x = tone(1.0, 16000)
    y, sr = decode_flac(encode_flac(x, 16000))
    assert sr == 16000 and np.abs(y - x).max() < 1 / 32767 + 1e-6
    pcm, _ = decode_flac(encode_flac(x, 16000), dtype="int16")
    assert pcm.dtype == np.int16


def test_mp3_decodes(tmp_path):
    sf.write(tmp_path / "a.mp3", tone(1.0, 44100), 44100, format="MP3")
    y, sr = read_audio(tmp_path / "a.mp3", 32000)
    assert sr == 32000 and abs(len(y) - 32000) < 2000


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "not found"), (b"", "empty file"), (b"RIFF\x00\x00garbage", "cannot decode")],
)
def test_bad_audio_is_named(tmp_path, content, match):
    p = tmp_path / "bad.wav"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(AudioError, match=match):
        read_audio(p)


def test_truncated_flac_is_an_error(tmp_path):
    data = encode_flac(tone(2.0, 16000), 16000)
    p = tmp_path / "cut.flac"
    p.write_bytes(data[:20])
    with pytest.raises(AudioError):
        read_audio(p)
