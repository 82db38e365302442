"""Usage and error lines name the command as the user typed it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trainer.cli import program_name

ROOT = Path(__file__).resolve().parents[2]


def test_console_command_goes_by_its_own_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/sonotext-convert", "--help"])
    assert program_name("tools.convert") == "sonotext-convert"


def test_module_run_goes_by_python_m(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tools" / "convert.py"), "--help"])
    assert program_name("tools.convert") == "python -m tools.convert"
    monkeypatch.setattr(sys, "argv", [""])
    assert program_name("trainer") == "python -m trainer"


def test_python_m_usage_line():
    out = subprocess.run(
        [sys.executable, "-m", "tools.verify", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("usage: python -m tools.verify ")
