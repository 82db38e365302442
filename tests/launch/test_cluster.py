"""Cluster YAMLs: every file under configs/clusters loads; bad keys/values fail naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.cluster import ClusterConfig, load_cluster, sbatch_parameters
from trainer.configparse import ConfigError, field_docs

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted((REPO / "configs" / "clusters").glob("*.yaml"))


def test_cluster_files_exist():
    names = {p.name for p in CLUSTER_FILES}
    assert {"local.yaml", "example.yaml"} <= names


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_cluster_file_loads(path):
    cluster = load_cluster(path)
    params = sbatch_parameters(cluster, "name", nodes=2)
    assert params["nodes"] == 2 and params["ntasks_per_node"] >= 1 and params["time"] > 0


def test_every_cluster_key_is_documented():
    docs = field_docs(ClusterConfig)
    assert set(docs) == set(ClusterConfig.__dataclass_fields__)
    assert all(docs.values())


def test_example_cluster_parameters():
    params = sbatch_parameters(load_cluster(REPO / "configs/clusters/example.yaml"), "run", nodes=4)
    assert params["partition"] == "gpu" and params["account"] == "my-project" and params["qos"] == "normal"
    assert params["constraint"] == "a100-80gb"
    assert params["gpus_per_node"] == 8 and params["ntasks_per_node"] == 8  # one task per GPU
    assert params["time"] == 2 * 24 * 60
    assert params["cpus_per_task"] == 12
    assert params["signal_delay_s"] == 300
    assert params["additional_parameters"]["mem"] == "768G"  # 96 GB per task x 8 tasks
    assert params["additional_parameters"]["requeue"] is True
    assert params["additional_parameters"]["exclusive"] is True
    assert params["setup"][0] == "module load cuda/12.4"
    assert params["srun_args"] == ["--cpus-per-task=12", "--cpu-bind=none"]  # srun repeats it (Slurm 22.05)


def test_gpus_per_node_on_the_command_line_wins():
    cluster = ClusterConfig(gpus_per_node=8)
    params = sbatch_parameters(cluster, "run", nodes=1, gpus_per_node=2)
    assert params["gpus_per_node"] == 2 and params["ntasks_per_node"] == 2
    cpu = sbatch_parameters(ClusterConfig(), "run", nodes=1)
    assert "gpus_per_node" not in cpu and cpu["ntasks_per_node"] == 1
    explicit = sbatch_parameters(ClusterConfig(tasks_per_node=3, gpus_per_node=4), "run", nodes=1)
    assert explicit["ntasks_per_node"] == 3


def test_fractional_memory_is_written_in_megabytes():
    params = sbatch_parameters(ClusterConfig(mem_per_task_gb=1.5, tasks_per_node=3), "run", nodes=1)
    assert params["additional_parameters"]["mem"] == "4608M"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partiton: gpu\n", "unknown config key partiton"),
        ("time: soon\n", "time: time limit 'soon'"),
        ("gpus_per_node: -1\n", "gpus_per_node: must be >= 0"),
        ("tasks_per_node: 0\n", "tasks_per_node: must be >= 1"),
        ("cpus_per_task: two\n", "cpus_per_task: expected int"),
        ("mem_per_task_gb: 0\n", "mem_per_task_gb: must be > 0"),
        ("setup: module load x\n", "setup: expected a list"),
        ("sbatch: {--mem: 4G}\n", "sbatch: option '--mem'"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_cluster_files_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_cluster_file(tmp_path):
    with pytest.raises(ConfigError, match="cluster file not found"):
        load_cluster(tmp_path / "nope.yaml")


def test_bad_node_count():
    with pytest.raises(ConfigError, match="--nodes: must be >= 1, got 0"):
        sbatch_parameters(ClusterConfig(), "run", nodes=0)
