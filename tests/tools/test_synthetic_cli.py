"""`python -m tools.synthetic`: arguments, summary line, clear exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.synthetic import main

REPO = Path(__file__).resolve().parents[2]


def test_writes_three_layouts_and_one_summary_line(tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["--out", str(out), "--clips", "3", "--seed", "2", "--seconds", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = lines[0]
    assert str(out) in summary and "3 clips per layout" in summary
    assert "clotho 2/1/0 (development/validation/evaluation)" in summary
    assert "tacos 3 (release)" in summary and "audioset_strong 2/1 (train/eval)" in summary
    assert len(list((out / "clotho" / "clotho_audio_files" / "development").iterdir())) == 2
    assert len(list((out / "tacos" / "audio").glob("*.mp3"))) == 3
    assert len(list((out / "audioset_strong" / "audio").glob("Y*.flac"))) == 3


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--clips" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-4", "ten", "2.5"])
def test_bad_clips_value_exits_with_a_clear_message(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--clips", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --clips: expected a positive integer, got '{value}'" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clips", "2"], "--out"),
        (["--out", "x", "--clips", "2", "--seconds", "0.5"], "argument --seconds"),
        (["--out", "x", "--clips", "2", "--sample-rate", "8000"], "argument --sample-rate"),
        (["--out", "x", "--clips", "2", "--seed", "-1"], "argument --seed"),
    ],
)
def test_other_bad_arguments_are_named(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_existing_layout_is_refused_with_one_line(tmp_path, capsys):
    (tmp_path / "clotho").mkdir()
    (tmp_path / "clotho" / "keep.txt").write_text("user data")
    assert main(["--out", str(tmp_path), "--clips", "1", "--seconds", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "clotho") in err and "--overwrite" in err
    assert (tmp_path / "clotho" / "keep.txt").exists()
    assert main(["--out", str(tmp_path), "--clips", "1", "--seconds", "3", "--overwrite"]) == 0
    assert not (tmp_path / "clotho" / "keep.txt").exists()


def test_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "tools.synthetic", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--clips" in result.stdout
