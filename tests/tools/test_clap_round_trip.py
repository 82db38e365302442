"""A CLAP checkpoint's whole life: both towers from one tiny saved ClapModel -> a few steps of `python -m trainer`
(its heads and logit scale kept) -> tools.export -> published on a hub on loopback and fetched into an HF cache by
huggingface_hub -> with HF_HUB_OFFLINE=1, loaded by its id in tools.embed and tools.zeroshot. (That step 0 scores as
ClapModel does is tests/trainer/test_model_clap.py.)"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.helpers import ROOT, save_tiny_clap, serve_hub, tone, train_overrides
from tools import export as export_cli
from trainer.model import AudioTextModel
from trainer.model.heads import MLPHead

ESC50 = Path(__file__).parent / "fixtures" / "esc50"
REPO = "sonotext-test/tiny-clap"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_train_export_fetch_offline_embed_and_zeroshot(tiny_shards, tmp_path):
    clap = tmp_path / "clap"
    save_tiny_clap(clap)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)

    # 1. Train from the CLAP checkpoint: both towers, its heads and logit scale.
    run_dir = tmp_path / "run"
    overrides = {
        "train.max_steps": 4,
        "train.save_every": 2,
        "train.eval_every": 4,
        "model.audio.name": "clap_htsat",
        "model.audio.pretrained": str(clap),
        "model.text.name": "clap",
        "model.text.pretrained": str(clap),
        "model.text.max_length": 16,
        "model.embed_dim": "null",
    }
    run(
        [
            "-m",
            "trainer",
            str(ROOT / "configs" / "debug.yaml"),
            *train_overrides(tiny_shards, run_dir, **overrides),
        ],
        env,
    )
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert abs(metrics[0]["logit_scale"] - 20.0) < 0.1  # CLAP's logit_scale_a (20), one step later
    assert {m["batch_kind"] for m in metrics} == {"weak", "strong"}

    # 2. Export the last checkpoint.
    exported = tmp_path / "exported" / "tiny-clap"
    assert (
        export_cli.main(
            ["--checkpoint", str(run_dir / "checkpoints" / "latest"), "--out", str(exported), "--name", REPO]
        )
        == 0
    )
    model = AudioTextModel.from_pretrained(exported)
    assert isinstance(model.audio_proj, MLPHead) and model.model_config.embed_dim == 16
    card = (exported / "README.md").read_text()
    for part in (
        f"# {REPO}",
        "| audio | `clap_htsat` |",
        "MLP (linear-relu-linear)",
        "4 optimizer steps, 16 samples seen",
    ):
        assert part in card, part
    assert "| weak | clotho | 1.0 | 8 |" in card and "| strong | tacos | 1.0 | 8 |" in card
    assert "at step 4" in card and "| clotho-evaluation/t2a | R@1 |" in card

    # 3. The audio and labels zero-shot and embed will read: ESC-50's layout, real metadata rows.
    esc = tmp_path / "ESC-50"
    shutil.copytree(ESC50 / "meta", esc / "meta")
    (esc / "audio").mkdir()
    with (esc / "meta" / "esc50.csv").open() as f:
        names = [row["filename"] for row in csv.DictReader(f)]
    for k, name in enumerate(names):
        sf.write(esc / "audio" / name, tone(5.0, 44100, 300.0 + 100 * k, noise=0.02, seed=k), 44100)

    with serve_hub({REPO: exported}) as (endpoint, requests):
        # 4. Fetch by id into the cache (what a login node with network does) ...
        env["HF_ENDPOINT"] = endpoint
        run(
            [
                "-m",
                "tools.embed",
                "--checkpoint",
                REPO,
                "--audio-dir",
                str(esc / "audio"),
                "--out",
                str(tmp_path / "online.npy"),
            ],
            env,
        )
        assert any("/resolve/" in r and r.endswith("/model.safetensors") for r in requests)
        seen = len(requests)
        # 5. ... then everything offline, by id, from the cache alone.
        offline = {**env, "HF_HUB_OFFLINE": "1"}
        run(
            [
                "-m",
                "tools.embed",
                "--checkpoint",
                REPO,
                "--audio-dir",
                str(esc / "audio"),
                "--out",
                str(tmp_path / "emb.npy"),
            ],
            offline,
        )
        labels = str(esc / "meta" / "esc50.csv")
        zs = run(
            [
                "-m",
                "tools.zeroshot",
                "--checkpoint",
                REPO,
                "--audio-dir",
                str(esc / "audio"),
                "--labels",
                labels,
                "--out",
                str(tmp_path / "zs"),
            ],
            offline,
        )
        assert len(requests) == seen, requests[seen:]

    emb = np.load(tmp_path / "emb.npy")
    keys = (tmp_path / "emb.keys.txt").read_text().splitlines()
    assert keys == sorted(names) and emb.shape == (12, 16)
    np.testing.assert_allclose(emb, np.load(tmp_path / "online.npy"), atol=0, rtol=0)
    want = model.embed_audio([esc / "audio" / k for k in keys]).numpy()
    np.testing.assert_allclose(emb, want, atol=1e-5, rtol=0)
    report = json.loads((tmp_path / "zs" / "report.json").read_text())
    assert report["num_clips"] == 12 and report["num_classes"] == 5 and report["checkpoint"] == REPO
    assert 0.0 <= report["accuracy"] <= 1.0 and "12 clips, 5 classes" in zs.stdout
    assert (tmp_path / "zs" / "confusion.png").stat().st_size > 5000
