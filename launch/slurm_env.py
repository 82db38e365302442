"""Scheduler-environment logic: the torch.distributed env of a task, SLURM task layouts and time limits.

    current_task_env()                     # this process: {'MASTER_ADDR': ..., 'RANK': ..., 'WORLD_SIZE': ..., ...}
    distributed_env(environ, hosts)        # the same from a recorded environment and its expanded node list
    tasks_per_node("4(x2),3")              # [4, 4, 3]

SLURM's node list is expanded by submitit (`JobEnvironment().hostnames`, see job_hostnames). Our own code is
kept where submitit is wrong: submitit's TorchDistributedEnvironment sets LOCAL_WORLD_SIZE to tasks // nodes,
which is wrong for uneven layouts (7 tasks on 4 nodes: 2,2,2,1), so the layout comes from SLURM_TASKS_PER_NODE
here. distributed_env takes plain mappings and returns values, so it is tested on recorded SLURM environments
without a cluster.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence

import submitit
from submitit.slurm.slurm import SlurmParseException

# Variables the env:// rendezvous of torch.distributed (and Accelerate) reads; set exactly as torchrun sets them.
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

# Same range and seeding as submitit.helpers.TorchDistributedEnvironment, so both agree on a job's port.
MIN_PORT, MAX_PORT = 20000, 60000


def job_hostnames() -> list[str]:
    """The running SLURM job's nodes, in SLURM's order: submitit's `JobEnvironment().hostnames`.

    submitit expands SLURM_JOB_NODELIST (`node[01-04,07]`, `gpu-a[1-2]-b[3,5]`, `a1,b[2-3]`) but lets a malformed
    list through as odd host names; those are refused here with the list named.
    """
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "").strip()
    if not nodelist:
        raise ValueError("environment variable SLURM_JOB_NODELIST is not set")
    env = submitit.JobEnvironment()
    if env.cluster != "slurm":
        raise ValueError(
            f"not a submitit SLURM task (SUBMITIT_EXECUTOR={os.environ.get('SUBMITIT_EXECUTOR')!r})"
        )
    try:
        hosts = list(env.hostnames)
    except SlurmParseException:
        raise ValueError(f"SLURM nodelist {nodelist!r}: not a SLURM host list") from None
    bad = [h for h in hosts if not h or any(c in h for c in "[],")]
    if not hosts or bad:
        raise ValueError(f"SLURM nodelist {nodelist!r}: not a SLURM host list (expanded to {hosts})")
    return hosts


def tasks_per_node(spec: str, num_nodes: int | None = None) -> list[int]:
    """Expand SLURM_TASKS_PER_NODE (`4(x2),3`) into one count per node: [4, 4, 3]."""
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"SLURM_TASKS_PER_NODE {spec!r}: bad entry {part!r} (expected N or N(xK))")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    if num_nodes is not None and len(counts) != num_nodes:
        raise ValueError(
            f"SLURM_TASKS_PER_NODE {spec!r} describes {len(counts)} nodes, the job has {num_nodes}"
        )
    return counts


def master_port(job_id: str) -> int:
    """A port derived from the job id: every task of a job (and every requeue of it) picks the same one."""
    return random.Random(job_id).randint(MIN_PORT, MAX_PORT)


def current_task_env() -> dict[str, str]:
    """distributed_env of this process; a SLURM task's node list is expanded by submitit."""
    hosts = job_hostnames() if is_slurm_task(os.environ) else []
    return distributed_env(os.environ, hosts)


def is_slurm_task(environ: Mapping[str, str]) -> bool:
    """True inside a task srun started (SLURM_PROCID and SLURM_JOB_ID are set)."""
    return "SLURM_PROCID" in environ and "SLURM_JOB_ID" in environ


def distributed_env(environ: Mapping[str, str], hosts: Sequence[str] = ()) -> dict[str, str]:
    """torch.distributed env (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) of a task.

    Reads a SLURM task (srun: SLURM_PROCID, SLURM_NTASKS, ...; `hosts` = the job's nodes in order, from
    job_hostnames) or a task of submitit's local executor (SUBMITIT_LOCAL_*); anything else is a single process.
    MASTER_ADDR is the first node (task 0 runs there under SLURM's default block distribution); MASTER_PORT comes
    from the environment if set, else from the job id.
    """
    if is_slurm_task(environ):
        return _slurm_env(environ, list(hosts))
    if "SUBMITIT_LOCAL_GLOBALID" in environ:
        return _local_env(environ)
    # A plain process (e.g. submitit's in-process debug executor) is a world of one.
    port = _int(environ, "MASTER_PORT", master_port("0"))
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
    }


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None


def _slurm_env(environ: Mapping[str, str], hosts: list[str]) -> dict[str, str]:
    nodelist = environ.get("SLURM_JOB_NODELIST", "")
    if not hosts:
        raise ValueError("a SLURM task needs the job's node list (job_hostnames()); none was given")
    num_nodes = environ.get("SLURM_JOB_NUM_NODES")
    if num_nodes is not None and _int(environ, "SLURM_JOB_NUM_NODES") != len(hosts):
        raise ValueError(
            f"SLURM nodelist {nodelist!r} expands to {len(hosts)} hosts, SLURM_JOB_NUM_NODES={num_nodes}"
        )
    world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in environ else "SLURM_NTASKS"
    world = _int(environ, world_var, 1)
    rank = _int(environ, "SLURM_PROCID")
    node = _int(environ, "SLURM_NODEID", 0)
    layout = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if layout:
        per_node = tasks_per_node(layout, len(hosts))
    else:
        per_node = [world // len(hosts)] * len(hosts)
    if not 0 <= rank < world:
        raise ValueError(f"SLURM_PROCID={rank} is outside 0..{world - 1} (SLURM_NTASKS={world})")
    if not 0 <= node < len(hosts):
        raise ValueError(f"SLURM_NODEID={node} is outside the node list {nodelist!r} ({len(hosts)} nodes)")
    if sum(per_node) != world:
        raise ValueError(
            f"SLURM_TASKS_PER_NODE={layout!r} adds up to {sum(per_node)} tasks, SLURM_NTASKS={world}"
        )
    job_id = environ.get("SLURM_ARRAY_JOB_ID") or environ["SLURM_JOB_ID"]
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_JOB_ID" in environ:
        job_id = f"{job_id}_{environ['SLURM_ARRAY_TASK_ID']}"
    return {
        "MASTER_ADDR": hosts[0],
        "MASTER_PORT": str(_int(environ, "MASTER_PORT", master_port(job_id))),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(_int(environ, "SLURM_LOCALID", 0)),
        "LOCAL_WORLD_SIZE": str(per_node[node]),
    }


def _local_env(environ: Mapping[str, str]) -> dict[str, str]:
    world = _int(environ, "SUBMITIT_LOCAL_NTASKS", 1)
    rank = _int(environ, "SUBMITIT_LOCAL_GLOBALID")
    job_id = environ.get("SUBMITIT_LOCAL_JOB_ID", "0")
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_int(environ, "MASTER_PORT", master_port(job_id))),
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(_int(environ, "SUBMITIT_LOCAL_LOCALID", rank)),
        "LOCAL_WORLD_SIZE": str(world),
    }


def parse_time_minutes(value: str | int) -> int:
    """SLURM time limit (`90`, `2:00:00`, `1-12:00:00`, `1-12`, `30:00`) -> whole minutes (rounded up)."""
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"time limit {value!r}: must be a positive number of minutes")
        return value
    text = value.strip()
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        if not d.isdigit():
            raise ValueError(f"time limit {value!r}: expected [D-]HH:MM:SS, MM:SS, MM, D-HH or D-HH:MM")
        days = int(d)
        parts = text.split(":")
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"time limit {value!r}: expected D-HH, D-HH:MM or D-HH:MM:SS")
        parts += ["0"] * (3 - len(parts))
    else:
        parts = text.split(":")
        if len(parts) == 1:
            parts = ["0", parts[0], "0"]  # minutes
        elif len(parts) == 2:
            parts = ["0", *parts]  # minutes:seconds
        elif len(parts) != 3:
            raise ValueError(f"time limit {value!r}: expected [D-]HH:MM:SS, MM:SS, MM, D-HH or D-HH:MM")
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"time limit {value!r}: expected [D-]HH:MM:SS, MM:SS, MM, D-HH or D-HH:MM")
    hours, minutes, seconds = (int(p) for p in parts)
    total_seconds = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total_seconds <= 0:
        raise ValueError(f"time limit {value!r}: must be positive")
    return -(-total_seconds // 60)
