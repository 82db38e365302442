"""tools.export: a saved model or checkpoint -> a hub-ready folder (a real training run's checkpoint is exported in
test_clap_round_trip.py); pushing needs the network, so only its failure without one is tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from transformers import AutoModel

from tests.helpers import ROOT
from tools import export as export_cli

FIXTURE_V1 = ROOT / "tests" / "trainer" / "fixtures" / "sonotext_v1" / "model_v1"


def test_export_writes_a_complete_folder(tiny_model_dir, tmp_path, capsys):
    folder, model = tiny_model_dir
    out = tmp_path / "exported" / "tiny"
    assert export_cli.main(["--checkpoint", str(folder), "--out", str(out), "--name", "org/tiny"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert not (out.parent / ".tiny.tmp").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "sonotext"
    assert 'from_pretrained("org/tiny")' in (out / "README.md").read_text()
    again = AutoModel.from_pretrained(out)
    texts = ["a dog barks", "rain"]
    np.testing.assert_allclose(
        again.embed_text(texts).numpy(), model.embed_text(texts).numpy(), atol=0, rtol=0
    )

    # An existing folder is never touched.
    assert export_cli.main(["--checkpoint", str(folder), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: --out {out}: already exists; choose a new folder\n"


def test_export_converts_a_format_1_folder(tmp_path):
    out = tmp_path / "v2"
    assert export_cli.main(["--checkpoint", str(FIXTURE_V1), "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["version"] == 2 and meta["heads"]["audio"]["kind"] == "linear"
    assert (out / "tokenizer_config.json").is_file() and not (out / "tokenizer").exists()


def test_bad_arguments_and_push_without_network(tiny_model_dir, tmp_path, capsys):
    folder, _ = tiny_model_dir
    assert export_cli.main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "none: not a directory" in capsys.readouterr().err
    assert (
        export_cli.main(["--checkpoint", str(folder), "--out", str(tmp_path / "o"), "--push-to-hub", "x"])
        == 1
    )
    assert "expected a repository id ORG/NAME" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    # Offline, the folder is written and the push fails with one line (the upload itself needs the hub).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    argv = ["--checkpoint", str(folder), "--out", str(tmp_path / "p"), "--push-to-hub", "org/tiny"]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.export", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and (tmp_path / "p" / "model.safetensors").is_file()
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--push-to-hub org/tiny" in lines[0], proc.stderr
    assert Path(tmp_path / "p" / "README.md").is_file()
