"""python -m tools.configs (sonotext-configs): list, path, copy of the shipped configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.configs import main

ROOT = Path(__file__).resolve().parents[2]


def test_list_names_every_shipped_config(capsys):
    assert main(["list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == sorted(
        p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.*")
    )


def test_path_by_name_with_or_without_folder_and_suffix(capsys):
    for name in ("accelerate/cpu_debug.yaml", "accelerate/cpu_debug", "cpu_debug"):
        assert main(["path", name]) == 0
        assert capsys.readouterr().out.strip() == str(ROOT / "configs" / "accelerate" / "cpu_debug.yaml")
    assert main(["path", "zero3"]) == 0
    assert capsys.readouterr().out.strip() == str(ROOT / "configs" / "deepspeed" / "zero3.json")


def test_path_of_an_unknown_name_is_one_line(capsys):
    assert main(["path", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found: no shipped config 'nope'") and err.count("\n") == 1


def test_copy_then_the_documented_relative_paths_work(tmp_path, capsys):
    assert main(["copy", str(tmp_path)]) == 0
    assert "copied" in capsys.readouterr().out
    for name in ("debug.yaml", "accelerate/multi_node_zero2.yaml", "deepspeed/zero2.json"):
        assert (tmp_path / "configs" / name).read_bytes() == (ROOT / "configs" / name).read_bytes()
    # never overwrites an edited copy
    (tmp_path / "configs" / "debug.yaml").write_text("run: {name: edited}\n")
    assert main(["copy", str(tmp_path)]) == 2
    assert "exists; nothing copied" in capsys.readouterr().err
    assert (tmp_path / "configs" / "debug.yaml").read_text() == "run: {name: edited}\n"


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "tools.configs", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "list" in out.stdout and "copy" in out.stdout
