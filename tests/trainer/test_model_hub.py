"""Saved models as Hugging Face citizens: the folder save_pretrained writes, AutoConfig/AutoModel, training
checkpoints, hub ids fetched by huggingface_hub (from a hub on loopback) and then loaded with HF_HUB_OFFLINE=1, the
model card, and folders saved before format 2 (model_type, heads, card)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoTokenizer

from tests.helpers import ROOT, save_tiny_clap, serve_hub, tiny_joint_model, tone
from trainer.checkpoint import load_model, training_summary
from trainer.config import AudioModelConfig, LossConfig, ModelConfig, TextModelConfig
from trainer.model import AudioTextModel, build_model
from trainer.model.hub import SonotextConfig
from trainer.model.inference import pad_batch

RATE = 8000
TEXTS = ["a dog barks", "rain on a roof", "a tone at 440 hertz", "a steady beep"]
FIXTURE = Path(__file__).parent / "fixtures" / "sonotext_v1"


def tiny_model() -> AudioTextModel:
    return tiny_joint_model(RATE, TEXTS, vocab_size=150, loss=LossConfig(init_logit_scale=12.5))


def clips() -> list[np.ndarray]:
    return [tone(1.0, RATE, 440.0), tone(0.6, RATE, 1000.0, noise=0.01)]


def outputs(model: AudioTextModel) -> dict[str, np.ndarray]:
    return {"audio": model.embed_audio(clips(), RATE).numpy(), "text": model.embed_text(TEXTS).numpy()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "tiny"
    model = tiny_model()
    model.save_pretrained(folder)
    return {"folder": folder, "model": model, "outputs": outputs(model)}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def test_saved_folder_is_hub_ready(saved):
    folder = saved["folder"]
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "README.md",
    ):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model_type"] == "sonotext" and meta["architectures"] == ["AudioTextModel"]
    assert meta["format"] == "sonotext-audio-text" and meta["version"] == 2 and meta["sample_rate"] == RATE
    assert meta["heads"] == {
        "audio": {"kind": "linear", "activation": None},
        "text": {"kind": "linear", "activation": None},
    }

    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, SonotextConfig) and config.sample_rate == RATE
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, AudioTextModel)
    assert_same(outputs(model), saved["outputs"], atol=0)

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok(TEXTS, padding=True)["input_ids"] == saved["model"].tokenize(TEXTS)["input_ids"].tolist()
    # The input settings: the raw waveform at the model's rate, zero-padded, with the mask the model takes.
    fe = AutoFeatureExtractor.from_pretrained(folder)
    assert fe.sampling_rate == RATE
    x = fe(clips(), sampling_rate=RATE, padding=True, return_tensors="pt")
    ref = pad_batch(clips())
    torch.testing.assert_close(x["input_values"], ref["audio"])
    assert torch.equal(x["attention_mask"].bool(), ref["audio_mask"])

    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sonotext\n")
    for part in (
        "## Towers",
        "| audio | `conv` | random init",
        "8-d",
        "## How to load",
        'from_pretrained("tiny")',
    ):
        assert part in card, part


def test_auto_classes_know_sonotext_once_trainer_model_is_imported(saved):
    script = (
        "import sys\n"
        "from transformers import AutoConfig, AutoModel\n"
        "try:\n"
        "    AutoConfig.from_pretrained(sys.argv[1])\n"
        "    sys.exit('registered before import')\n"
        "except ValueError:\n"
        "    pass\n"
        "import trainer.model\n"
        "print(type(AutoModel.from_pretrained(sys.argv[1])).__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(saved["folder"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "AudioTextModel"


def make_run(root: Path, folder: Path, step: int = 3) -> Path:
    """RUN/checkpoints/step_N (model/, trainer_state.json, config.yaml), latest, and RUN/eval reports."""
    ckpt = root / "checkpoints" / f"step_{step}"
    shutil.copytree(folder, ckpt / "model")
    state = {"step": step, "samples_seen": 96, "data_seen": {"clotho": 60, "tacos": 36}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    data = {
        "weak": [{"name": "clotho", "urls": "shards/clotho/development", "weight": 2.0}],
        "strong": [{"name": "tacos", "urls": "shards/tacos/train", "weight": 1.0}],
        "strong_every": 2,
        "strong_prob": None,
    }
    (ckpt / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    (root / "checkpoints" / "latest").symlink_to(ckpt.name)
    (root / "eval").mkdir()
    for s, r1 in ((2, 0.25), (step + 1, 0.75)):  # the report after the checkpoint's step must not be taken
        (root / "eval" / f"step_{s}.json").write_text(json.dumps({"step": s, "clotho-eval/t2a/R@1": r1}))
    return ckpt


def test_checkpoint_dirs_and_training_summary_in_the_card(saved, tmp_path):
    ckpt = make_run(tmp_path / "run", saved["folder"])
    for path in (ckpt, tmp_path / "run" / "checkpoints" / "latest", ckpt / "model"):
        assert_same(outputs(AudioTextModel.from_pretrained(path)), saved["outputs"], atol=0)
        assert_same(outputs(load_model(path)), saved["outputs"], atol=0)

    summary = training_summary(tmp_path / "run" / "checkpoints" / "latest")
    assert summary["step"] == 3 and summary["samples_seen"] == 96
    assert summary["data_seen"] == {"clotho": 60, "tacos": 36}
    assert summary["mixture"]["weak"][0]["weight"] == 2.0 and summary["mixture"]["strong_every"] == 2
    assert summary["eval"] == {"step": 2, "clotho-eval/t2a/R@1": 0.25}
    assert training_summary(saved["folder"]) == {}  # a bare folder has no run

    saved["model"].save_pretrained(tmp_path / "out", training=summary, name="org/tiny")
    card = (tmp_path / "out" / "README.md").read_text()
    for part in (
        "# org/tiny",
        "3 optimizer steps, 96 samples seen",
        "| weak | clotho | 2.0 | 60 | `shards/clotho/development` |",
        "| strong | tacos | 1.0 | 36 |",
        "Every 2nd batch is strong",
        "at step 2",
        "| clotho-eval/t2a | R@1 | 0.2500 |",
        'AudioTextModel.from_pretrained("org/tiny")',
    ):
        assert part in card, part


LOAD_BY_ID = """
import sys
import numpy as np
from transformers import AutoModel
from tests.trainer.test_model_hub import outputs
from trainer.model import AudioTextModel

name, out = sys.argv[1], sys.argv[2]
np.savez(out, **outputs(AudioTextModel.from_pretrained(name)))
assert type(AutoModel.from_pretrained(name)).__name__ == "AudioTextModel"
"""


def run_python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_hub_id_fetched_into_the_cache_then_loaded_offline(saved, tmp_path):
    """huggingface_hub downloads the repository from a hub on loopback into HF_HOME; with HF_HUB_OFFLINE=1 the same
    id then loads from that cache with no request at all (the hub keeps counting)."""
    code = LOAD_BY_ID
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    with serve_hub({"sonotext-test/tiny": saved["folder"]}) as (endpoint, requests):
        env["HF_ENDPOINT"] = endpoint
        online = run_python(code, "sonotext-test/tiny", str(tmp_path / "online.npz"), env=env)
        assert online.returncode == 0, online.stderr[-3000:]
        # GET /ORG/NAME/resolve/COMMIT/FILE
        fetched = {
            r.split("/resolve/")[1].split("/", 1)[1] for r in requests if r.startswith("GET /sonotext-test")
        }
        assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= fetched
        snapshots = list((tmp_path / "hf" / "hub" / "models--sonotext-test--tiny" / "snapshots").iterdir())
        assert len(snapshots) == 1 and (snapshots[0] / "model.safetensors").is_file()

        seen = len(requests)
        offline_env = {**env, "HF_HUB_OFFLINE": "1"}
        offline = run_python(code, "sonotext-test/tiny", str(tmp_path / "offline.npz"), env=offline_env)
        assert offline.returncode == 0, offline.stderr[-3000:]
        assert len(requests) == seen, requests[seen:]  # no network access at all

        missing = run_python(
            "from trainer.model import AudioTextModel; AudioTextModel.from_pretrained('sonotext-test/other')",
            env=offline_env,
        )
        assert missing.returncode != 0
        assert "sonotext-test/other: no such local folder, and not available as a hub id" in missing.stderr
    for name in ("online", "offline"):
        loaded = np.load(tmp_path / f"{name}.npz")
        assert_same({k: loaded[k] for k in loaded.files}, saved["outputs"], atol=0)


def _fixture_input():
    spec = importlib.util.spec_from_file_location("make_v1", FIXTURE / "make_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fixed_input()


def test_format_1_folder_loads_with_its_outputs(tmp_path):
    """A model saved by the code before format 2 (tests/trainer/fixtures/sonotext_v1: config.json without
    model_type, tokenizer in tokenizer/) loads and gives the outputs that code gave; re-saved, it is format 2."""
    expected = np.load(FIXTURE / "expected_v1.npz")
    audio, mask = _fixture_input()
    texts = expected["texts"].tolist()
    for model in (AudioTextModel.from_pretrained(FIXTURE / "model_v1"), load_model(FIXTURE / "model_v1")):
        model.eval()
        with torch.no_grad():
            out = model(audio, mask, **model.tokenize(texts))
        for key in ("audio_clip", "audio_frames", "frame_mask", "text", "logit_scale"):
            np.testing.assert_allclose(out[key].numpy(), expected[key], atol=1e-6, rtol=0, err_msg=key)

    model.save_pretrained(tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["version"] == 2
    again = AutoModel.from_pretrained(tmp_path / "v2").eval()
    with torch.no_grad():
        out2 = again(audio, mask, **again.tokenize(texts))
    np.testing.assert_allclose(out2.audio_clip.numpy(), expected["audio_clip"], atol=1e-6, rtol=0)


def test_format_1_folder_with_pretrained_towers_loads(tmp_path):
    """Format 1 with transformers towers (audio_backbone/, text_backbone/): the layout of a pre-format-2 CLAP run."""
    save_tiny_clap(tmp_path / "clap")
    cfg = ModelConfig(
        audio=AudioModelConfig(name="clap_htsat", pretrained=str(tmp_path / "clap")),
        text=TextModelConfig(name="clap", pretrained=str(tmp_path / "clap"), max_length=16),
        embed_dim=24,
        keep_heads=False,  # format 1 had linear heads only
    )
    model = build_model(cfg, LossConfig(), 16000).eval()
    folder = tmp_path / "v1"
    model.save_pretrained(folder)
    # Rewrite the folder as format 1 wrote it.
    meta = json.loads((folder / "config.json").read_text())
    old = {
        k: meta[k]
        for k in ("format", "model", "sample_rate", "init_logit_scale", "max_logit_scale", "text_pooling")
    }
    old["version"] = 1
    del old["model"]["keep_heads"]
    (folder / "config.json").write_text(json.dumps(old))
    (folder / "tokenizer").mkdir()
    for f in folder.iterdir():
        if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges"))):
            f.rename(folder / "tokenizer" / f.name)
    (folder / "README.md").unlink()
    (folder / "preprocessor_config.json").unlink()

    again = AudioTextModel.from_pretrained(folder).eval()
    assert isinstance(again.audio_proj, torch.nn.Linear) and again.model_config.embed_dim == 24
    audio = torch.from_numpy(np.stack([tone(1.0, 16000, 440.0), tone(1.0, 16000, 880.0)]))
    with torch.no_grad():
        a = model(audio, None, **model.tokenize(TEXTS))
        b = again(audio, None, **again.tokenize(TEXTS))
    for key in ("audio_clip", "audio_frames", "text"):
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)


def test_bad_names_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--checkpoint runs/x/checkpoints/step_1: not a directory"):
        AudioTextModel.from_pretrained("runs/x/checkpoints/step_1", what="--checkpoint")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="holds no saved model"):
        AudioTextModel.from_pretrained(tmp_path / "empty")
    with pytest.raises(TypeError, match=r"unexpected arguments \['subfolder'\]"):
        AudioTextModel.from_pretrained(FIXTURE / "model_v1", subfolder="x")
