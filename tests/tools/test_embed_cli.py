"""tools.embed: audio folders, audio lists and text files -> .npy embeddings + an index of keys."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import tone
from tools import embed as embed_cli


@pytest.fixture
def clips(tmp_path):
    """Audio in a folder tree: WAV at 44.1 kHz, stereo FLAC at 16 kHz in a subfolder, an undecodable file."""
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "b tone.wav", tone(1.0, 44100, 440.0), 44100)
    sf.write(root / "sub" / "a.flac", tone(0.8, 16000, 1000.0, channels=2), 16000)
    (root / "sub" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    (root / "notes.txt").write_text("not audio")
    return root


def read_index(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_audio_dir(tiny_model_dir, clips, tmp_path, capsys):
    folder, model = tiny_model_dir
    out = tmp_path / "out" / "emb.npy"
    assert embed_cli.main(["--checkpoint", str(folder), "--audio-dir", str(clips), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.wav" in captured.err
    assert f"wrote {out} (2 x 8)" in captured.out
    keys = read_index(tmp_path / "out" / "emb.keys.txt")
    assert keys == ["b tone.wav", "sub/a.flac"]  # relative paths, sorted; the broken file left out
    emb = np.load(out)
    assert emb.dtype == np.float32 and emb.shape == (2, 8)
    want = model.embed_audio([clips / k for k in keys]).numpy()
    np.testing.assert_allclose(emb, want, atol=1e-5, rtol=0)


def test_audio_list_and_texts(tiny_model_dir, clips, tmp_path):
    folder, model = tiny_model_dir
    listing = clips / "list.txt"
    listing.write_text(
        "sub/a.flac\n\n" + str(clips / "b tone.wav") + "\n"
    )  # relative to the list, or absolute
    out, index = tmp_path / "list.npy", tmp_path / "keys" / "list-index.txt"
    argv = [
        "--checkpoint",
        str(folder),
        "--audio-list",
        str(listing),
        "--out",
        str(out),
        "--index",
        str(index),
    ]
    assert embed_cli.main([*argv, "--batch-size", "1"]) == 0
    assert read_index(index) == ["sub/a.flac", str(clips / "b tone.wav")]
    want = model.embed_audio([clips / "sub" / "a.flac", clips / "b tone.wav"], batch_size=1).numpy()
    np.testing.assert_allclose(np.load(out), want, atol=1e-5, rtol=0)

    texts = tmp_path / "texts.txt"
    texts.write_text("a dog barks\r\nrain on a roof\n", encoding="utf-8")
    assert (
        embed_cli.main(["--checkpoint", str(folder), "--texts", str(texts), "--out", str(tmp_path / "t.npy")])
        == 0
    )
    assert read_index(tmp_path / "t.keys.txt") == ["a dog barks", "rain on a roof"]
    want = model.embed_text(["a dog barks", "rain on a roof"]).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), want, atol=1e-5, rtol=0)


def test_bad_arguments_are_one_line(tiny_model_dir, clips, tmp_path, capsys):
    folder, _ = tiny_model_dir
    base = ["--checkpoint", str(folder), "--out", str(tmp_path / "e.npy")]
    with pytest.raises(SystemExit) as e:
        embed_cli.main(base)  # no source
    assert e.value.code == 2
    capsys.readouterr()
    cases = [
        (["--audio-dir", str(tmp_path / "none")], f"error: --audio-dir {tmp_path / 'none'}: not a directory"),
        (["--audio-dir", str(clips / "sub"), "--out", str(tmp_path / "e.txt")], "must end in .npy"),
        (["--texts", str(clips / "missing.txt")], "--texts"),
        (
            ["--audio-list", str(clips / "notes.txt")],
            "file not found",
        ),  # the listed file "not audio" is missing
    ]
    (tmp_path / "empty.txt").write_text("\n \n")
    cases.append((["--texts", str(tmp_path / "empty.txt")], "no lines"))
    for extra, message in cases:
        assert embed_cli.main([*base, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (
        embed_cli.main(
            ["--checkpoint", str(tmp_path / "nope"), "--texts", str(tmp_path / "empty.txt"), "--out", "x.npy"]
        )
        == 1
    )
