"""Fixtures shared across the suite: small real shards made by the real generator and converters."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_shards(root: Path, clips: int = 24, seconds: float = 3.0, sample_rate: int = 16000) -> Path:
    """tools.synthetic layouts -> shards.convert: clotho (3 splits), tacos (train/test), audioset-strong eval."""
    from shards.convert import convert
    from shards.sources.audioset_strong import AudioSetStrong
    from shards.sources.clotho import Clotho
    from shards.sources.tacos import Tacos
    from synthetic.layouts import generate

    raw, out = root / "raw", root / "shards"
    generate(raw, clips, seed=0, seconds=seconds, sample_rate=sample_rate)
    jobs = [
        (Clotho(raw / "clotho"), ("development", "evaluation")),
        (Tacos(raw / "tacos", test_size=max(2, clips // 6)), ("train", "test")),
        (AudioSetStrong(raw / "audioset_strong"), ("eval",)),
    ]
    for source, splits in jobs:
        for split in splits:
            convert(source, split, out, sample_rate=sample_rate, samples_per_shard=8)
    return out


def train_overrides(shards: Path, out_dir: Path, **extra) -> list[str]:
    """configs/debug.yaml pointed at `shards`, writing to `out_dir`, sized to run in seconds."""
    values = {
        "run.output_dir": str(out_dir),
        "data.sample_rate": 16000,
        "data.clip_seconds": 2.0,
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.shuffle_buffer": 8,
        "data.weak": f"[{{name: clotho, urls: {shards}/clotho/development, weight: 1.0}}]",
        "data.strong": f"[{{name: tacos, urls: {shards}/tacos/train, weight: 1.0}}]",
        "eval.retrieval": f"[{{name: clotho-evaluation, urls: {shards}/clotho/evaluation}}]",
        "eval.temporal": f"[{{name: tacos-test, urls: {shards}/tacos/test}}]",
        "train.max_steps": 6,
        "train.log_every": 1,
        "train.save_every": 3,
        "train.eval_every": 0,
        "optim.warmup_steps": 2,
        "wandb.mode": "disabled",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("tiny"))
