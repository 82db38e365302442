"""python -m tools.convert: arguments, one-line errors, summary lines, resume and 'already complete', --check,
--audio-dir, --encoding, --max-caption-chars, and a full or read-only output disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shards.fixtures import write_audiosetcaps, write_clotho
from tests.shards.release_fixtures import LAYERS, lay_audiocaps
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
    for flag in ("--check", "--audio-dir DIR", "--encoding ENC", "--max-caption-chars N"):
        assert flag in out.stdout


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
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if not line.startswith("  ")]
    assert len(lines) == 3  # no progress bar: stdout is not a terminal
    assert out[1] == "  audio found as: {file_name}: 6"  # 3 written, 3 found but broken
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


# ---------------------------------------------------------------------------------------------------------
# --check
# ---------------------------------------------------------------------------------------------------------


def test_check_reports_what_the_conversion_then_writes_and_skips(clotho_src, tmp_path, capsys):
    assert main(["clotho", "--src", str(clotho_src), "--check", "--split", "development"]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[0] == (
        "clotho/development: 10 listed: 6 with audio, 1 missing audio, 3 skipped "
        "(bad row: 2, duplicate id: 1); nothing written"
    )
    assert report[1] == (
        "  reads: captions SRC/clotho_csv_files/clotho_captions_development.csv, "
        "metadata SRC/clotho_csv_files/clotho_metadata_development.csv"
    )
    assert report[2] == "  audio in: SRC/clotho_audio_files/development (found as {file_name}: 6)"
    assert report[3:] == [
        "  missing audio (first 1 of 1):",
        "    missing file.wav: clotho_audio_files/development/missing file.wav",
    ]
    assert not (tmp_path / "clotho").exists()

    out = tmp_path / "out"
    assert main(["clotho", "--src", str(clotho_src), "--out", str(out), "--split", "development"]) == 0
    manifest = json.loads((out / "clotho" / "development" / "manifest.json").read_text())
    reasons = [s["reason"].split(":")[0] for s in manifest["skipped"]]
    broken = sum(r in ("empty audio", "undecodable audio", "truncated audio") for r in reasons)
    assert manifest["num_samples"] + broken == 6 and reasons.count("missing audio") == 1
    assert reasons.count("bad row") + reasons.count("duplicate id") == 3
    assert manifest["num_samples"] + len(manifest["skipped"]) == 10
    assert manifest["audio_namings"] == {"{file_name}": 6}


def test_check_of_a_release_with_audio_elsewhere(tmp_path, capsys):
    """AudioCaps from its repository's CSVs (dataset/), audio from a downloader's flat folder of Y{ytid}.wav."""
    release = lay_audiocaps(tmp_path / "audiocaps")
    args = ["audiocaps", "--src", str(release.root), "--split", "val", "--check"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "audiocaps/val: 6 listed: 0 with audio, 6 missing audio, 0 skipped; nothing written"
    assert main([*args, "--audio-dir", str(release.audio_dirs["val"])]) == 0
    report = capsys.readouterr().out.splitlines()
    assert report[0] == "audiocaps/val: 6 listed: 6 with audio, 0 missing audio, 0 skipped; nothing written"
    assert report[1] == "  reads: captions SRC/dataset/val.csv"
    assert report[2] == f"  audio in: {release.audio_dirs['val']} (found as Y{{youtube_id}}.wav: 6)"
    assert report[3] == "  layout: AudioCaps v1"

    out = tmp_path / "out"
    assert main([*args[:-1], "--audio-dir", str(release.audio_dirs["val"]), "--out", str(out)]) == 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[0].startswith("audiocaps/val: 6 samples written in 1 shards, 0 skipped")
    assert summary[1] == "  audio found as: Y{youtube_id}.wav: 6"


def test_check_lists_tacos_region_fixes_and_the_official_split(tmp_path, capsys):
    release = LAYERS["tacos"](tmp_path / "tacos")
    assert main(["tacos", "--src", str(release.root), "--check", "--test-size", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "tacos/train: 6 listed: 5 with audio, 1 missing audio, 0 skipped; nothing written"
    assert "  split: official: development_split.csv" in lines
    assert "  regions fixed: 6 (clipped: 3, dropped: 3)" in lines
    assert (
        captured.err
        == "python -m tools.convert: note: --test-size is ignored: the release's split files define the split\n"
    )


# ---------------------------------------------------------------------------------------------------------
# Inputs and outputs that are not what they should be
# ---------------------------------------------------------------------------------------------------------


def test_undecodable_metadata_is_one_line_and_encoding_fixes_it(tmp_path, capsys):
    write_audiosetcaps(tmp_path / "raw")
    csv_path = tmp_path / "raw" / "Dataset" / "YouTube-8M_AudioSetCaps_caption.csv"
    csv_path.write_bytes(csv_path.read_bytes() + "y8m_x-1_30_10,Br\xfcll\r\n".encode("latin-1"))
    args = [
        "audiosetcaps",
        "--src",
        str(tmp_path / "raw"),
        "--split",
        "youtube8m",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert (
        "YouTube-8M_AudioSetCaps_caption.csv: line 3 is not valid utf-8 (bytes b'\\xfcll\\r' at column 17)"
        in err
    )
    assert "pass --encoding" in err
    assert main([*args, "--encoding", "latin-1", "--check"]) == 0
    assert main([*args, "--encoding", "nope"]) == 2
    assert "--encoding 'nope' is not an encoding Python knows" in capsys.readouterr().err


def test_captions_over_the_cap_are_cut_and_counted(clotho_src, tmp_path, capsys):
    args = ["clotho", "--src", str(clotho_src), "--out", str(tmp_path), "--split", "evaluation"]
    assert main([*args, "--max-caption-chars", "12"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  10 captions/region texts cut to --max-caption-chars" in out
    manifest = json.loads((tmp_path / "clotho" / "evaluation" / "manifest.json").read_text())
    assert manifest["texts_truncated"] == 10 and manifest["settings"]["max_text_chars"] == 12


CONVERT_WITH_FILE_SIZE_LIMIT = """
import resource, sys
from tools.convert import main
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes past it fail (EFBIG)
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_output_disk_is_one_line_and_the_rerun_resumes(clotho_src, tmp_path):
    """Every write past the file-size limit fails as on a full disk: one line, no traceback, finished shards
    kept; the same command afterwards finishes the split exactly as an uninterrupted run."""
    args = ["clotho", "--src", str(clotho_src), "--split", "development", "--samples-per-shard", "1"]
    reference = subprocess.run(
        [sys.executable, "-m", "tools.convert", *args, "--out", str(tmp_path / "ref")],
        cwd=ROOT,
        capture_output=True,
    )
    assert reference.returncode == 0
    shard = tmp_path / "ref" / "clotho" / "development" / "clotho-development-000000.tar"
    limit = shard.stat().st_size + 10  # the first shard fits, the second does not
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CONVERT_WITH_FILE_SIZE_LIMIT,
            str(limit),
            *args,
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(
        f"python -m tools.convert: error: File too large writing under {tmp_path / 'out'}; "
    )
    assert "finished shards are kept" in run.stderr and "rerun the same command to resume" in run.stderr
    split_dir = tmp_path / "out" / "clotho" / "development"
    assert (split_dir / "clotho-development-000000.tar").is_file() and not (
        split_dir / "manifest.json"
    ).exists()
    again = subprocess.run(
        [sys.executable, "-m", "tools.convert", *args, "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "resumed after 1 finished shards" in again.stdout
    ref_dir = tmp_path / "ref" / "clotho" / "development"
    assert {p.name: p.read_bytes() for p in split_dir.iterdir()} == {
        p.name: p.read_bytes() for p in ref_dir.iterdir()
    }


def can_mount() -> bool:
    """True where this process may make a private mount namespace (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [("size=64k", "No space left on device"), ("ro", "Read-only file system")],
    ids=["disk-full", "read-only"],
)
def test_a_real_full_or_read_only_disk_is_one_line(clotho_src, tmp_path, options, message):
    """A tmpfs mounted in a private mount namespace: 64 KiB (ENOSPC) or read-only (EROFS)."""
    if not can_mount():
        pytest.skip("needs root and a private mount namespace (unshare --mount) to mount a small tmpfs")
    out = tmp_path / "out"
    out.mkdir()
    convert = (
        f"{sys.executable} -m tools.convert clotho --src '{clotho_src}' --out '{out}' --split development"
    )
    script = f"mount -t tmpfs -o {options} tmpfs '{out}' && exec {convert}"
    run = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"python -m tools.convert: error: {message}") and str(out) in run.stderr


def test_a_read_only_output_folder_is_one_line(clotho_src, tmp_path):
    if os.geteuid() == 0:
        pytest.skip(
            "root writes into a read-only folder; test_a_real_full_or_read_only_disk_is_one_line covers it"
        )
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "tools.convert", "clotho", "--src", str(clotho_src), "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        out.chmod(0o755)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"python -m tools.convert: error: Permission denied: {out}")
