"""python -m tools.convert: arguments, one-line errors, summary line, resume and 'already complete'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.shards.fixtures import write_clotho
from tools.convert import main

ROOT = Path(__file__).resolve().parents[2]
# tests/ is not a package (and an installed dependency ships a top-level `tests`), so load the shared
# raw-layout builders by path.


@pytest.fixture(scope="module")
def clotho_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("raw")
    write_clotho(src)
    return src


def test_help_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "tools.convert", "tacos", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "--test-size N" in out.stdout and "--exclude-ids FILE" in out.stdout and "--workers" in out.stdout


def test_converts_and_prints_one_summary_line_per_split(clotho_src, tmp_path, capsys):
    argv = [
        "clotho",
        "--src",
        str(clotho_src),
        "--out",
        str(tmp_path),
        "--workers",
        "1",
        "--samples-per-shard",
        "2",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # no progress bar: stdout is not a terminal
    dev = lines[0]
    assert dev.startswith("clotho/development: 3 samples written in 2 shards, 7 skipped (bad row: 2, ")
    for part in (
        "missing audio: 1",
        "empty audio: 1",
        "truncated audio: 1",
        "undecodable audio: 1",
        "duplicate id: 1",
    ):
        assert part in dev
    assert "0.00 h of audio" in dev and str(tmp_path / "clotho" / "development") in dev
    assert lines[2].startswith("clotho/evaluation: 2 samples written in 1 shards, 0 skipped")

    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "clotho/development: already complete (3 samples in 2 shards at "
        f"{tmp_path / 'clotho' / 'development'})"
    )
    assert main([*argv[:-1], "3", "--split", "validation"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "already holds a finished conversion with other options (settings: samples_per_shard: was 2, now 3)"
        in err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["clotho", "--src", "{raw}", "--out", "{out}"], "Clotho development captions CSV not found: {raw}"),
        (["clotho", "--src", "{raw}", "--out", "{out}", "--split", "validation"], "CSV not found: {raw}"),
        (["clotho", "--src", "{raw}/nope", "--out", "{out}"], "--src {raw}/nope is not a folder"),
        (["clotho", "--src", "{raw}", "--out", "{out}", "--split", "dev"], "invalid choice: 'dev'"),
        (["clothoo", "--src", "{raw}", "--out", "{out}"], "invalid choice: 'clothoo' (choose from 'clotho'"),
        (
            ["tacos", "--src", "{raw}", "--out", "{out}", "--test-size", "x"],
            "--test-size: invalid int value: 'x'",
        ),
        (["clotho", "--src", "{raw}", "--out", "{out}", "--workers", "0"], "expected an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, argv, message):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    assert exit_code([a.format(raw=raw, out=out) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(raw=raw) in err
    assert not out.exists()  # nothing written for a wrong command


def exit_code(argv):
    """main's return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
