"""Checkpoints: the save sequence survives a SIGKILL at every point of it, damaged checkpoints are detected and the
next older one is used, and nothing half-written or half-deleted is ever taken for a checkpoint.

The saves are real (Accelerate's save_state of a tiny random-init model, in a subprocess); the kills come from the
fault-injection hook of trainer.checkpoint (SONOTEXT_CHECKPOINT_FAULT), so every point is hit deterministically.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from trainer import checkpoint as ckpt

SAVE = r"""
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from trainer.checkpoint import save_checkpoint
from trainer.config import LossConfig, ModelConfig
from trainer.model import build_model

root, keep_last, steps = Path(sys.argv[1]), int(sys.argv[2]), [int(s) for s in sys.argv[3:]]
torch.manual_seed(0)
acc = Accelerator(cpu=True)
model = build_model(ModelConfig(), LossConfig(), sample_rate=8000, tokenizer_texts=["a tone", "a short beep"])
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, opt = acc.prepare(model, opt)
root.mkdir(parents=True, exist_ok=True)
for step in steps:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_checkpoint(acc, root, step, model, {"data_seen": {}}, {"step": step}, "run: {}\n", keep_last)
"""


def save(root: Path, steps: list[int], keep_last: int = 1, fault: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != ckpt.FAULT_ENV}
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env[ckpt.FAULT_ENV] = fault
    cmd = [sys.executable, "-c", SAVE, str(root), str(keep_last), *map(str, steps)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def step_of(path: Path) -> int:
    return json.loads((path / ckpt.STATE_FILE).read_text())["step"]


def resumable(root: Path, lines: list[str] | None = None) -> Path | None:
    """What a resume would load: the newest checkpoint that verifies."""
    candidates, _ = ckpt.resume_candidates("auto", root)
    return ckpt.first_verified(candidates, (lines if lines is not None else []).append)


# (what `latest` points at, what a resume loads) after a kill at each point of the save of step 3
AFTER_KILL = {
    "written": (2, 2),  # files in .tmp-step_3, no checksums yet
    "summed": (2, 2),  # .tmp-step_3 complete but not renamed: not a checkpoint yet
    "renamed": (2, 3),  # step_3 complete, `latest` not moved yet
    "linked": (3, 3),  # `latest` moved, step_2 not pruned yet
    "pruning": (3, 3),  # step_2 renamed to .deleting-step_2, not deleted yet
}


@pytest.mark.parametrize("point", list(AFTER_KILL))
def test_sigkill_at_every_point_of_the_save_keeps_latest_valid(tmp_path, point):
    """keep_last=1, the case that lost everything before: the old sequence removed step_N before renaming the new
    one, so a kill in between left `latest` dangling while the complete checkpoint sat in .tmp-step_N until pruning
    deleted it, and the run restarted from step 0 without a word."""
    root = tmp_path / "checkpoints"
    assert save(root, [1, 2, 3], keep_last=1, fault=f"{point}@3") == -signal.SIGKILL
    latest_step, resume_step = AFTER_KILL[point]
    latest = (root / "latest").resolve()
    assert latest.is_dir() and ckpt.is_complete(latest)
    ckpt.verify_checkpoint(latest)
    assert step_of(latest) == latest_step
    assert step_of(resumable(root)) == resume_step
    # nothing named step_N is ever incomplete: a half-written or half-deleted folder has another name
    for _, p in ckpt.step_dirs(root):
        ckpt.verify_checkpoint(p)
    # the next save cleans up after the killed one
    assert save(root, [4], keep_last=1) == 0
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_4"]
    assert step_of((root / "latest").resolve()) == 4


def make_checkpoints(root: Path) -> None:
    assert save(root, [1, 2], keep_last=2) == 0
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1", "step_2"]


def flip_bytes(path: Path, n: int = 54, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    for i in random.Random(seed).sample(
        range(len(data) // 2, len(data)), n
    ):  # inside the tensors, past the header
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "random_states deleted": (
        lambda c: (c / "accelerate" / "random_states_0.pkl").unlink(),
        "accelerate/random_states_0.pkl is missing",
    ),
    "54 bytes flipped in the model weights": (
        lambda c: flip_bytes(c / "model" / "model.safetensors"),
        "model/model.safetensors does not match its checksum",
    ),
    "truncated accelerate weights": (
        lambda c: (c / "accelerate" / "model.safetensors").write_bytes(
            (c / "accelerate" / "model.safetensors").read_bytes()[:1000]
        ),
        "accelerate/model.safetensors does not match its checksum",
    ),
    "garbage trainer_state.json": (
        lambda c: (c / ckpt.STATE_FILE).write_text("{not json"),
        "trainer_state.json does not match its checksum",
    ),
    "no checksums (unfinished or older version)": (
        lambda c: (c / ckpt.CHECKSUMS).unlink(),
        "no checksums.sha256",
    ),
}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two") / "checkpoints"
    make_checkpoints(root)
    return root


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_detected_and_the_next_older_checkpoint_is_used(two_checkpoints, tmp_path, kind):
    root = Path(shutil.copytree(two_checkpoints, tmp_path / "checkpoints", symlinks=True))
    damage, reason = DAMAGE[kind]
    damage(root / "step_2")
    with pytest.raises(ckpt.CheckpointError, match=reason):
        ckpt.verify_checkpoint(root / "step_2")
    lines: list[str] = []
    assert resumable(root, lines) == root / "step_1"
    assert len(lines) == 1 and lines[0].startswith("checkpoint step_2 is not usable") and reason in lines[0]
    if reason.startswith("model/"):  # evaluation and init_from read the model: they check it too
        with pytest.raises(ckpt.CheckpointError, match=reason):
            ckpt.load_model(root / "step_2")


def test_no_usable_checkpoint_is_an_error_not_a_fresh_start(two_checkpoints, tmp_path):
    root = Path(shutil.copytree(two_checkpoints, tmp_path / "checkpoints", symlinks=True))
    (root / "step_2" / "accelerate" / "random_states_0.pkl").unlink()
    flip_bytes(root / "step_1" / "model" / "model.safetensors")
    candidates, fresh_ok = ckpt.resume_candidates("auto", root)
    assert fresh_ok and resumable(root) is None
    message = ckpt.no_usable(candidates, "auto")
    assert "no usable checkpoint (step_2, step_1" in message and "train.resume=null" in message
    # no checkpoint at all is a fresh start
    assert ckpt.resume_candidates("auto", tmp_path / "empty") == ([], True)


def test_settle_resumed_sets_newer_checkpoints_aside(two_checkpoints, tmp_path):
    root = Path(shutil.copytree(two_checkpoints, tmp_path / "checkpoints", symlinks=True))
    lines: list[str] = []
    ckpt.settle_resumed(root, root / "step_1", keep_last=2, report=lines.append)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1", "step_2.superseded"]
    assert (root / "latest").resolve() == (root / "step_1").resolve()
    assert lines == ["checkpoint step_2 is newer than the one resumed: renamed to step_2.superseded"]


def test_checksums_written_by_sha256sum_are_accepted(two_checkpoints, tmp_path):
    """Checkpoints of an older version have no checksums.sha256: the documented shell line makes one."""
    root = Path(shutil.copytree(two_checkpoints, tmp_path / "checkpoints", symlinks=True))
    step = root / "step_2"
    (step / ckpt.CHECKSUMS).unlink()
    line = f"find . -type f ! -name {ckpt.CHECKSUMS} -exec sha256sum {{}} + > {ckpt.CHECKSUMS}"
    subprocess.run(["sh", "-c", line], cwd=step, check=True)
    ckpt.verify_checkpoint(step)
    flip_bytes(step / "model" / "model.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="does not match"):
        ckpt.verify_checkpoint(step)
