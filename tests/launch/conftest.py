"""Fixtures for launcher tests: a reachable SLURM cluster (or a skip saying why), job polling, CLI runs.

The tiny real shards are the suite's `tiny_shards` (tests/conftest.py).

The SLURM cluster is whatever `sinfo` reaches: SLURM_CONF from the environment, else the single-node cluster
that `tools/slurm_local.sh start` runs (its slurm.conf under $SONOTEXT_SLURM_DIR, default /tmp/sonotext-slurm).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import debug_overrides

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM_DIR = Path(os.environ.get("SONOTEXT_SLURM_DIR", "/tmp/sonotext-slurm"))
TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


class Slurm:
    """Commands against the test cluster (scontrol works without accounting, unlike sacct)."""

    def __init__(self, conf: str | None):
        self.conf = conf

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        if self.conf:
            env["SLURM_CONF"] = self.conf
        return env

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=60, check=check)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` fields (JobState, Reason, Restarts, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def ended(self, job_id: str) -> bool:
        return self.job(job_id).get("JobState") in TERMINAL_STATES

    def release_requeue_hold(self, job_id: str) -> None:
        """A requeued job waits ~2 min (BeginTime) before it may start; tests let it start now."""
        self.run("scontrol", "update", f"jobid={job_id}", "starttime=now", check=False)

    def wait(self, job_id: str, timeout: float, until: set[str] = TERMINAL_STATES) -> str:
        """Poll until the job reaches a state in `until`; requeued jobs are released from their hold."""
        deadline = time.monotonic() + timeout
        state = "UNKNOWN"
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "UNKNOWN")
            if state in until:
                return state
            if state == "PENDING" and info.get("Reason") == "BeginTime":
                self.release_requeue_hold(job_id)
            time.sleep(1.0)
        raise AssertionError(f"SLURM job {job_id} still {state} after {timeout:.0f} s: {self.job(job_id)}")


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    """A SLURM cluster that answers `sinfo` (SLURM_CONF set for the whole session), or a skip with the reason."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip(
            "no SLURM client tools (sinfo/sbatch not found); run `tools/slurm_local.sh start` (root, apt)"
        )
    conf = os.environ.get("SLURM_CONF")
    if conf is None and (LOCAL_SLURM_DIR / "slurm.conf").is_file():
        conf = str(LOCAL_SLURM_DIR / "slurm.conf")
    cluster = Slurm(conf)
    try:
        answer = cluster.run("sinfo", "-h", "-o", "%T", check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("no SLURM cluster reachable: sinfo timed out")
    states = answer.stdout.split()
    if answer.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        reason = (answer.stderr.strip().splitlines() or [f"node states {states}"])[-1]
        pytest.skip(f"no SLURM cluster reachable (sinfo: {reason}); run `tools/slurm_local.sh start`")
    with pytest.MonkeyPatch.context() as mp:
        if conf:
            mp.setenv("SLURM_CONF", conf)
        yield cluster


@pytest.fixture(scope="session")
def trainer_ready() -> None:
    """Skip when the trainer entry point is not importable yet."""
    try:
        from trainer.__main__ import main  # noqa: F401
        from trainer.loop import EXIT_PREEMPTED  # noqa: F401
    except ImportError as e:
        pytest.skip(f"trainer not available: {e}")


@pytest.fixture(scope="session")
def debug_args():
    """tests.helpers.debug_overrides: configs/debug.yaml pointed at `tiny_shards` and a private output dir."""
    return debug_overrides


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def jsonl():
    return read_jsonl


def run_cli(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """`python -m MODULE ARGS` from the repository root (where jobs import launch/ and trainer/)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli():
    return run_cli
