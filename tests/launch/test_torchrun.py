"""`python -m launch.torchrun`: torchrun with the trainer's stop protocol — a SIGTERM'd run exits 75, for real, with
two gloo workers. Plain torchrun exits 1 in the same situation (its elastic agent turns the workers' 75 into 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launch.torchrun import stopped
from tests.helpers import ROOT, train_overrides, wait_for_steps

DEBUG = str(ROOT / "configs" / "debug.yaml")


def start(launcher: str, run: Path, shards: Path) -> subprocess.Popen:
    module = "launch.torchrun" if launcher == "wrapper" else "torch.distributed.run"
    overrides = train_overrides(shards, run, **{"train.max_steps": 500, "train.save_every": 0})
    cmd = [sys.executable, "-m", module, "--nproc_per_node", "2", "-m", "trainer", DEBUG, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    "launcher,target,code",
    [
        ("wrapper", "agent", 75),  # `kill PID` of the launcher
        ("wrapper", "group", 75),  # SLURM/scancel: the whole process group
        ("torchrun", "agent", 1),  # plain torchrun: the checkpoint is saved, but the exit status says crash
    ],
)
def test_sigterm_under_torchrun(tiny_shards, tmp_path, launcher, target, code):
    run = tmp_path / "run"
    proc = start(launcher, run, tiny_shards)
    wait_for_steps(run, proc, 3, group=True)
    if target == "agent":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, out[-4000:]
    assert "signal received: checkpointing" in out
    state = json.loads((run / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and 3 <= state["step"] < 500


def test_exit_codes_that_mean_stopped():
    term = -signal.SIGTERM
    assert stopped({75}) and stopped({75, term})
    assert (
        not stopped({term})
        and not stopped({1})
        and not stopped({75, 1})
        and not stopped({75, -signal.SIGKILL})
    )
