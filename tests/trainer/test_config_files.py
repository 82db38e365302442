"""Config files by path or by shipped name, from any working directory (trainer/config_files.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launch.cluster import load_cluster
from trainer.config import ConfigError, load_config
from trainer.config_files import resolve_config_file, shipped_config, shipped_dir, shipped_names

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the repository, as a user of the installed package has."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_checkout_ships_its_configs_folder():
    assert shipped_dir() == CONFIGS
    on_disk = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*") if p.is_file())
    assert shipped_names() == on_disk
    assert {"debug.yaml", "deepspeed/zero2.json", "clusters/local.yaml"} <= set(shipped_names())


@pytest.mark.parametrize(
    "ref",
    [
        "debug",
        "debug.yaml",
        "configs/debug.yaml",
        "configs:debug.yaml",
        "configs:debug",
        CONFIGS / "debug.yaml",
    ],
)
def test_names_and_paths_resolve_from_anywhere(elsewhere, ref):
    assert resolve_config_file(ref).resolve() == CONFIGS / "debug.yaml"


def test_a_file_here_wins_over_the_shipped_one_unless_configs_colon(elsewhere):
    (elsewhere / "configs").mkdir()
    mine = elsewhere / "configs" / "debug.yaml"
    mine.write_text("run: {name: mine}\n")
    assert resolve_config_file("configs/debug.yaml") == Path("configs/debug.yaml")
    assert load_config("configs/debug.yaml").run.name == "mine"
    assert resolve_config_file("configs:debug.yaml") == CONFIGS / "debug.yaml"
    assert load_config("debug").run.name == "debug"


def test_folders_are_searched_in_order(elsewhere):
    assert resolve_config_file("tacos_pretrain", folders=("", "experiments")) == (
        CONFIGS / "experiments" / "tacos_pretrain.yaml"
    )
    assert resolve_config_file("zero2", folders=("deepspeed",)) == CONFIGS / "deepspeed" / "zero2.json"
    assert shipped_config("zero2") is None
    assert shipped_config("../setup.cfg") is None and shipped_config(str(CONFIGS / "debug.yaml")) is None


def test_unknown_names_are_one_line_errors_listing_what_is_shipped(elsewhere):
    with pytest.raises(ConfigError) as e:
        load_config("debgu.yaml")
    message = str(e.value)
    assert message.startswith("config file not found: debgu.yaml (no such file, and no shipped config")
    assert "debug.yaml" in message and "experiments/tacos_pretrain.yaml" in message
    assert "clusters/" not in message and "\n" not in message
    with pytest.raises(ConfigError, match=re.escape("no shipped config 'nope.yaml'")):
        resolve_config_file("configs:nope.yaml")
    with pytest.raises(ConfigError, match=re.escape("config file not found: /no/such/file.yaml")):
        resolve_config_file("/no/such/file.yaml")


def test_configs_that_name_other_configs_resolve_from_anywhere(elsewhere):
    cfg = load_config("experiments/large_mixture")
    assert Path(cfg.train.deepspeed) == CONFIGS / "deepspeed" / "zero2.json"
    cfg = load_config("debug", ["train.deepspeed=zero3"])
    assert Path(cfg.train.deepspeed) == CONFIGS / "deepspeed" / "zero3.json"
    with pytest.raises(ConfigError, match=re.escape("train.deepspeed: file not found: zero9.json")):
        load_config("debug", ["train.deepspeed=zero9.json"])


def test_a_deepspeed_path_that_exists_is_kept_as_given(tmp_path):
    ds = tmp_path / "mine.json"
    ds.write_text("{}")
    assert load_config("debug", [f"train.deepspeed={ds}"]).train.deepspeed == str(ds)


def test_cluster_files_by_name(elsewhere):
    assert load_cluster("local").partition == "debug"
    assert load_cluster("configs/clusters/example.yaml").gpus_per_node == 8
    with pytest.raises(ConfigError, match="cluster file not found: mine"):
        load_cluster("mine")
