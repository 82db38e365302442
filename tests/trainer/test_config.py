"""Config loading: every shipped config parses, overrides apply, bad keys/types name the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from trainer.config import Config, ConfigError, load_config
from trainer.configparse import field_docs

ROOT = Path(__file__).resolve().parents[2]
TRAINING_CONFIGS = sorted(
    [ROOT / "configs" / "debug.yaml", *(ROOT / "configs" / "experiments").rglob("*.yaml")]
)


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_training_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    if cfg.train.deepspeed:
        assert (ROOT / cfg.train.deepspeed).is_file(), f"{path}: train.deepspeed points at a missing file"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name
)
def test_deepspeed_configs_parse(path):
    from deepspeed.runtime.config import DeepSpeedConfig  # noqa: F401  (import proves the package is there)

    cfg = json.loads(path.read_text())
    assert cfg["zero_optimization"]["stage"] in (0, 1, 2, 3)


@pytest.mark.parametrize(
    "path",
    sorted(
        [*(ROOT / "configs" / "accelerate").glob("*.yaml"), *(ROOT / "configs" / "clusters").glob("*.yaml")]
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_launch_configs_parse(path):
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "debug.yaml", ["optim.lr=1e-4", "data.weak.0.weight=2", "run.name=x"]
    )
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.data.weak[0].weight == 2.0
    assert cfg.output_dir == Path("runs/x")
    assert load_config(None).train.max_steps == Config().train.max_steps


def test_override_adds_list_and_nested_sections():
    cfg = load_config(None, ["data.weak=[{name: a, urls: x.tar, weight: 3}]", "data.strong_every=0"])
    assert cfg.data.weak[0].name == "a" and cfg.data.weak[0].weight == 3.0
    cfg = load_config(None, ["model.audio.overrides={patch_size: 8}"])
    assert cfg.model.audio.overrides == {"patch_size": 8}


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("optim.lr=fast", "optim.lr"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("train.grad_checkpointing=maybe", "train.grad_checkpointing"),
        ("data.weak.3.weight=1", "data.weak"),
        ("data.weak.0.weight=0", "data.weak.0.weight"),
        ("data.weak.0.weight=-1", "data.weak.0.weight"),
        ("model.audio.name=resnet", "model.audio.name"),
        ("bogus.key=1", "bogus"),
        ("noequals", "key=value"),
        ("data.sample_rate=1", "data.sample_rate: 1 Hz is too low"),
        ("data.clip_seconds=0.0001", "data.clip_seconds: 0.0001 s is shorter"),
        ("data.max_text_chars=0", "data.max_text_chars"),
        ("train.nan_patience=-1", "train.nan_patience"),
        ("eval.retrieval.0.max_samples=0", "eval.retrieval.0.max_samples"),
        ("optim.lr=nan", "optim.lr"),
        # every batch strong: the weak source would silently never be read
        ("data.strong_every=1", "data.strong_every=1 makes every batch strong, so the weak sources"),
        ("data.strong_prob=1.0", "data.strong_prob=1 makes every batch strong"),
    ],
)
def test_bad_overrides_name_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(ROOT / "configs" / "debug.yaml", [override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 1e-3, betas: oops}\n")
    with pytest.raises(ConfigError, match=r"optim\.betas"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_yaml_float_without_dot_is_accepted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 1e-4}\n")  # YAML 1.1 reads this as a string
    assert load_config(p).optim.lr == pytest.approx(1e-4)


def test_every_field_is_documented():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                walk(f.type)

    import trainer.config as c

    for name in dir(c):
        obj = getattr(c, name)
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == c.__name__:
            walk(obj)


def test_yaml_boolean_words_map_to_literal_choices():
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
