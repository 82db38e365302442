"""Cluster description (configs/clusters/NAME.yaml) and the sbatch parameters it turns into.

    cluster = load_cluster("configs/clusters/local.yaml")
    params = sbatch_parameters(cluster, job_name="debug", nodes=2)   # keyword arguments of submitit's SlurmExecutor

Every field carries a one-line docstring; that docstring is the documentation of the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from launch.slurm_env import parse_time_minutes
from trainer.config_files import resolve_config_file
from trainer.configparse import ConfigError, from_dict


@dataclass
class ClusterConfig:
    partition: str | None = None
    """SLURM partition (`--partition`); null: the cluster's default partition."""
    account: str | None = None
    """Account charged for the job (`--account`)."""
    qos: str | None = None
    """Quality of service (`--qos`)."""
    time: str | int = "24:00:00"
    """Time limit per job run: minutes, or [D-]HH:MM:SS. The job requeues itself when it runs out."""
    constraint: str | None = None
    """Node features required (`--constraint`, e.g. a100|h100)."""
    gpus_per_node: int = 0
    """GPUs per node (`--gpus-per-node`); 0 on CPU-only clusters. `--gpus-per-node` on the command line wins."""
    tasks_per_node: int | None = None
    """Training processes per node; null: one per GPU (or 1 without GPUs)."""
    cpus_per_task: int = 1
    """CPU cores per training process (data workers + 1 is a good start); also sets OMP_NUM_THREADS."""
    mem_per_task_gb: float | None = None
    """Memory per training process in GB (`--mem` is this times tasks per node); null: the cluster default."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which SLURM signals the job to checkpoint and requeue."""
    max_requeues: int = 20
    """How many times a job may requeue itself at its time limit before giving up."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in the batch script before the tasks start (module load ..., source venv/bin/activate)."""
    python: str | None = None
    """Python command on the compute nodes; null: the interpreter running launch.slurm."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """Extra sbatch options written as `#SBATCH --KEY=VALUE` (`true` writes a bare `--KEY`)."""
    srun_args: list[str] = field(default_factory=list)
    """Extra arguments of the srun line that starts the tasks (e.g. --cpu-bind=none)."""


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster YAML (a path, or a shipped name: local, configs/clusters/local.yaml); errors
    name the file and the key."""
    path = resolve_config_file(path, folders=("clusters", ""), what="cluster file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    try:
        cluster = from_dict(ClusterConfig, raw or {})
        validate_cluster(cluster)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cluster


def validate_cluster(cluster: ClusterConfig) -> None:
    """Cross-field checks."""
    try:
        parse_time_minutes(cluster.time)
    except ValueError as e:
        raise ConfigError(f"time: {e}") from None
    if cluster.gpus_per_node < 0:
        raise ConfigError(f"gpus_per_node: must be >= 0, got {cluster.gpus_per_node}")
    if cluster.tasks_per_node is not None and cluster.tasks_per_node < 1:
        raise ConfigError(f"tasks_per_node: must be >= 1, got {cluster.tasks_per_node}")
    if cluster.cpus_per_task < 1:
        raise ConfigError(f"cpus_per_task: must be >= 1, got {cluster.cpus_per_task}")
    if cluster.mem_per_task_gb is not None and cluster.mem_per_task_gb <= 0:
        raise ConfigError(f"mem_per_task_gb: must be > 0, got {cluster.mem_per_task_gb}")
    if cluster.signal_delay_s < 0:
        raise ConfigError(f"signal_delay_s: must be >= 0, got {cluster.signal_delay_s}")
    if cluster.max_requeues < 0:
        raise ConfigError(f"max_requeues: must be >= 0, got {cluster.max_requeues}")
    for key in cluster.sbatch:
        if not key or key.startswith("-") or " " in key:
            raise ConfigError(
                f"sbatch: option {key!r} must be a bare sbatch long-option name, e.g. mail-type"
            )


def num_tasks_per_node(cluster: ClusterConfig, gpus_per_node: int) -> int:
    """Tasks per node: the cluster's explicit count, else one per GPU, else 1."""
    if cluster.tasks_per_node is not None:
        return cluster.tasks_per_node
    return max(gpus_per_node, 1)


def sbatch_parameters(
    cluster: ClusterConfig, job_name: str, nodes: int, gpus_per_node: int | None = None
) -> dict[str, Any]:
    """Keyword arguments for submitit's SlurmExecutor.update_parameters (submitit's native sbatch names)."""
    if nodes < 1:
        raise ConfigError(f"--nodes: must be >= 1, got {nodes}")
    gpus = cluster.gpus_per_node if gpus_per_node is None else gpus_per_node
    if gpus < 0:
        raise ConfigError(f"--gpus-per-node: must be >= 0, got {gpus}")
    tasks = num_tasks_per_node(cluster, gpus)
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": parse_time_minutes(cluster.time),
        "nodes": nodes,
        "ntasks_per_node": tasks,
        "cpus_per_task": cluster.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_s,
        "stderr_to_stdout": False,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(cluster, key)
        if value is not None:
            params[key] = value
    if cluster.setup:
        params["setup"] = list(cluster.setup)
    # Slurm 22.05-23.02's srun does not inherit sbatch's --cpus-per-task: repeat it, or every task gets one core.
    params["srun_args"] = [f"--cpus-per-task={cluster.cpus_per_task}", *cluster.srun_args]
    # Raw sbatch lines (no unit conversion by submitit): --mem per node, requeue eligibility, user extras.
    extra: dict[str, Any] = {"requeue": True}
    if cluster.mem_per_task_gb is not None:
        extra["mem"] = _mem_string(cluster.mem_per_task_gb * tasks)
    extra.update(cluster.sbatch)
    params["additional_parameters"] = extra
    return params


def _mem_string(gb: float) -> str:
    """sbatch --mem value: whole gigabytes as `64G`, anything else in megabytes."""
    if gb == int(gb):
        return f"{int(gb)}G"
    return f"{max(1, round(gb * 1024))}M"
