"""tools/slurm_local.sh: usage, and a full start -> sinfo -> stop cycle of a second cluster on other ports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "slurm_local.sh"


def run_script(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_usage():
    result = run_script("bogus")
    assert result.returncode == 2 and "usage:" in result.stderr and "start|stop|status" in result.stderr


def test_env_prints_slurm_conf_of_the_state_dir(tmp_path):
    result = run_script("env", env={**os.environ, "SONOTEXT_SLURM_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == f"export SLURM_CONF={tmp_path}/slurm.conf"


@pytest.mark.skipif(
    shutil.which("slurmctld") is None, reason="slurm daemons not installed (slurmctld not found)"
)
def test_start_status_stop(tmp_path):
    state = tmp_path / "slurm"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SONOTEXT_SLURM_DIR=str(state), SONOTEXT_SLURM_PORT="6917")
    started = run_script("start", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"export SLURM_CONF={state}/slurm.conf" in started.stdout
        pids = [int((state / f"{d}.pid").read_text()) for d in ("slurmctld", "slurmd")]
        status = run_script("status", env=env)
        assert status.returncode == 0 and "localhost" in status.stdout
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%P %c"],
            env={**env, "SLURM_CONF": f"{state}/slurm.conf"},
            capture_output=True,
            text=True,
        )
        assert sinfo.stdout.split()[0] == "debug*" and int(sinfo.stdout.split()[1]) >= 2
        again = run_script("start", env=env)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stopped = run_script("stop", env=env)
    assert stopped.returncode == 0 and "stopped slurmctld" in stopped.stdout
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert run_script("status", env=env).returncode == 1
