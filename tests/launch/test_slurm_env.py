"""Node lists (submitit), task layout and the torch.distributed env of a task, on recorded SLURM environments."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from submitit.helpers import TorchDistributedEnvironment

from launch.slurm_env import (
    current_task_env,
    distributed_env,
    job_hostnames,
    master_port,
    parse_time_minutes,
    tasks_per_node,
)

HOSTLISTS = {
    "node[01-04,07]": ["node01", "node02", "node03", "node04", "node07"],
    "gpu-a[1-2]-b[3,5]": ["gpu-a1-b3", "gpu-a1-b5", "gpu-a2-b3", "gpu-a2-b5"],
    "a1,b[2-3],c": ["a1", "b2", "b3", "c"],
    "node[9-11]": ["node9", "node10", "node11"],
    "n[098-101]": ["n098", "n099", "n100", "n101"],
    "rack[0-1]-n[00-01],login": ["rack0-n00", "rack0-n01", "rack1-n00", "rack1-n01", "login"],
    "localhost": ["localhost"],
}


@pytest.fixture
def task_env(monkeypatch):
    """Replace this process's SLURM/submitit variables with `env` (as a submitit SLURM task sees them)."""

    def apply(env: dict[str, str]) -> None:
        for key in list(os.environ):
            if key.startswith(("SLURM_", "SUBMITIT_")) or key in ("MASTER_PORT", "MASTER_ADDR"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return apply


def hostnames(task_env, nodelist: str) -> list[str]:
    task_env({"SLURM_JOB_NODELIST": nodelist})
    return job_hostnames()


@pytest.mark.parametrize("nodelist", sorted(HOSTLISTS))
def test_job_hostnames(task_env, nodelist):
    assert hostnames(task_env, nodelist) == HOSTLISTS[nodelist]


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed")
@pytest.mark.parametrize("nodelist", sorted(HOSTLISTS))
def test_job_hostnames_agree_with_scontrol(task_env, nodelist, tmp_path):
    # `scontrol show hostnames` parses locally but insists on a config source; a two-line one is enough.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=hostlist\nSlurmctldHost=localhost\n")
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": str(conf)}
    cmd = ["scontrol", "show", "hostnames", nodelist]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    assert hostnames(task_env, nodelist) == out.stdout.split()


@pytest.mark.parametrize(
    "nodelist",
    # submitit raises on the first two and returns odd host names (or none) for the rest
    ["n[1-2", "n[a-b]", "node[7-5]", "n1-2]", "a,,b", "n[[1]]"],
)
def test_job_hostnames_refuse_what_slurm_never_writes(task_env, nodelist):
    with pytest.raises(ValueError, match=re.escape(f"SLURM nodelist {nodelist!r}: not a SLURM host list")):
        hostnames(task_env, nodelist)


def test_job_hostnames_need_a_slurm_task(task_env, monkeypatch):
    task_env({})
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST is not set"):
        job_hostnames()
    task_env({"SLURM_JOB_NODELIST": "n1"})
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(ValueError, match="not a submitit SLURM task"):
        job_hostnames()


def test_tasks_per_node():
    assert tasks_per_node("4(x2),3") == [4, 4, 3]
    assert tasks_per_node("8") == [8]
    assert tasks_per_node("2(x3),1", num_nodes=4) == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="describes 2 nodes, the job has 3"):
        tasks_per_node("4(x2)", num_nodes=3)
    with pytest.raises(ValueError, match="bad entry 'x'"):
        tasks_per_node("4,x")


def slurm_task(nodelist: str, layout: str, ntasks: int, procid: int, nodeid: int, localid: int, **extra: str):
    """The variables srun sets in a task (as recorded from sbatch jobs), plus `extra`."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_JOB_NUM_NODES": str(len(tasks_per_node(layout))),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_TASKS_PER_NODE": layout,
        "SLURM_STEP_TASKS_PER_NODE": layout,
        "SLURM_PROCID": str(procid),
        "SLURM_NODEID": str(nodeid),
        "SLURM_LOCALID": str(localid),
        **extra,
    }


def test_distributed_env_multi_node(task_env):
    # 5 nodes x 4 GPUs; task 13 is the second task on node04 (index 3).
    task_env(slurm_task("node[01-04,07]", "4(x5)", 20, procid=13, nodeid=3, localid=1))
    assert current_task_env() == {
        "MASTER_ADDR": "node01",
        "MASTER_PORT": str(master_port("4242")),
        "RANK": "13",
        "WORLD_SIZE": "20",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
    }


def test_distributed_env_uneven_tasks_per_node(task_env):
    # 7 tasks on gpu-a[1-2]-b[3,5]: 2,2,2,1 -> the last node runs one task (submitit's helper would say 7 // 4 = 1
    # for every node).
    task_env(slurm_task("gpu-a[1-2]-b[3,5]", "2(x3),1", 7, procid=6, nodeid=3, localid=0))
    env = current_task_env()
    assert env["MASTER_ADDR"] == "gpu-a1-b3"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
        "6",
        "7",
        "0",
        "1",
    )
    task_env(slurm_task("gpu-a[1-2]-b[3,5]", "2(x3),1", 7, procid=1, nodeid=0, localid=1))
    assert current_task_env()["LOCAL_WORLD_SIZE"] == "2"


def test_distributed_env_port_override_and_same_port_for_all_tasks():
    hosts = HOSTLISTS["node[01-04,07]"][:2]
    tasks = [slurm_task("node[01-02]", "2(x2)", 4, procid=r, nodeid=r // 2, localid=r % 2) for r in range(4)]
    ports = {distributed_env(t, hosts)["MASTER_PORT"] for t in tasks}
    assert len(ports) == 1
    assert 20000 <= int(ports.pop()) <= 60000
    assert distributed_env({**tasks[0], "MASTER_PORT": "29123"}, hosts)["MASTER_PORT"] == "29123"


def test_distributed_env_array_job_port_follows_array_task():
    a = slurm_task("n1", "1", 1, 0, 0, 0, SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="1")
    b = slurm_task("n1", "1", 1, 0, 0, 0, SLURM_ARRAY_JOB_ID="100", SLURM_ARRAY_TASK_ID="2")
    assert distributed_env(a, ["n1"])["MASTER_PORT"] == str(master_port("100_1"))
    assert distributed_env(a, ["n1"])["MASTER_PORT"] != distributed_env(b, ["n1"])["MASTER_PORT"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLURM_PROCID": "8"}, "SLURM_PROCID=8 is outside 0..7"),
        ({"SLURM_NODEID": "2"}, "SLURM_NODEID=2 is outside the node list"),
        ({"SLURM_NTASKS": "x", "SLURM_STEP_NUM_TASKS": "x"}, "SLURM_STEP_NUM_TASKS='x': expected an integer"),
        ({"SLURM_TASKS_PER_NODE": "3(x2)", "SLURM_STEP_TASKS_PER_NODE": "3(x2)"}, "adds up to 6 tasks"),
        ({"SLURM_JOB_NODELIST": "n[2-1]", "SLURM_STEP_NODELIST": "n[2-1]"}, "not a SLURM host list"),
        # submitit expands `n[]` to one host `n`; the job has two nodes
        ({"SLURM_JOB_NODELIST": "n[]"}, "'n[]' expands to 1 hosts, SLURM_JOB_NUM_NODES=2"),
        ({"SLURM_JOB_NODELIST": ""}, "SLURM_JOB_NODELIST is not set"),
    ],
)
def test_distributed_env_errors(task_env, change, message):
    task_env({**slurm_task("n[1-2]", "4(x2)", 8, 0, 0, 0), **change})
    with pytest.raises(ValueError, match=re.escape(message)):
        current_task_env()


def test_distributed_env_needs_the_node_list_of_a_slurm_task():
    with pytest.raises(ValueError, match="needs the job's node list"):
        distributed_env(slurm_task("n1", "1", 1, 0, 0, 0))


def test_distributed_env_agrees_with_submitit_helper(task_env):
    """Same answer as submitit.helpers.TorchDistributedEnvironment where that helper applies (even layouts)."""
    task_env(slurm_task("node[01-04,07]", "4(x5)", 20, procid=13, nodeid=3, localid=1))
    theirs = TorchDistributedEnvironment()
    ours = current_task_env()
    assert ours["MASTER_ADDR"] == theirs.master_addr
    assert int(ours["MASTER_PORT"]) == theirs.master_port
    assert int(ours["RANK"]) == theirs.rank
    assert int(ours["WORLD_SIZE"]) == theirs.world_size
    assert int(ours["LOCAL_RANK"]) == theirs.local_rank
    assert int(ours["LOCAL_WORLD_SIZE"]) == theirs.local_world_size


def test_distributed_env_local_executor_and_plain_process():
    local = {"SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}
    env = distributed_env({**local, "SUBMITIT_LOCAL_JOB_ID": "777"})
    assert env == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port("777")),
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }
    plain = distributed_env({})
    assert (plain["RANK"], plain["WORLD_SIZE"]) == ("0", "1")


@pytest.mark.parametrize(
    ("value", "minutes"),
    [(90, 90), ("90", 90), ("30:00", 30), ("30:01", 31), ("2:00:00", 120), ("1-12", 2160), ("1-00:30", 1470)],
)
def test_parse_time_minutes(value, minutes):
    assert parse_time_minutes(value) == minutes


@pytest.mark.parametrize("value", [0, "0", "abc", "1:2:3:4", "x-10", "-5", "1-2:3:4:5"])
def test_parse_time_minutes_rejects(value):
    with pytest.raises(ValueError, match="time limit"):
        parse_time_minutes(value)
