"""Checkpoints that resume exactly and are never half-written.

Layout of ``RUN/checkpoints/step_N/``:
    accelerate/        accelerator.save_state: model, optimizer, scheduler, grad scaler, RNG of every process
                       (a DeepSpeed checkpoint under DeepSpeed)
    model/             consolidated weights + model config + tokenizer (AudioTextModel.from_pretrained; tools.evaluate)
    data/rank_R.pt     data-stream state of rank R
    trainer_state.json step, world size, data_seen, ...
    config.yaml        the resolved config of the run

Every process writes into ``.tmp-step_N``; after a barrier the main process renames it to ``step_N``, then
points ``latest`` (a relative symlink) at it, then prunes. A crash at any point leaves ``latest`` on a complete
checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for resuming; the message names the path and why."""


def step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"step_{step}"


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / "accelerate").is_dir()


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints sorted by step."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest(ckpt_root: Path) -> Path | None:
    """The checkpoint `latest` points at, or the newest complete one if the link is missing or broken."""
    link = ckpt_root / "latest"
    if link.exists() and is_complete(link.resolve()):
        return link.resolve()
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, ckpt_root: Path) -> Path | None:
    """train.resume -> checkpoint dir to load, or None to start fresh."""
    if resume is None or resume == "":
        return None
    if resume == "auto":
        return find_latest(ckpt_root)
    path = Path(resume)
    if path.is_dir() and path.name == "checkpoints":
        path = find_latest(path) or path
    if not path.is_dir():
        raise CheckpointError(f"train.resume: checkpoint {path} does not exist")
    path = path.resolve()
    if not is_complete(path):
        raise CheckpointError(
            f"train.resume: {path} is not a complete checkpoint (no {STATE_FILE} or accelerate/)"
        )
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(
    accelerator,
    ckpt_root: Path,
    step: int,
    model,
    trainer_state: dict[str, Any],
    data_state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
) -> Path:
    """Collective: every process must call it. Returns the final checkpoint dir."""
    final = step_dir(ckpt_root, step)
    tmp = ckpt_root / f".tmp-step_{step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "data").mkdir(parents=True)
    accelerator.wait_for_everyone()

    accelerator.save_state(str(tmp / "accelerate"), safe_serialization=True)
    torch.save(data_state, tmp / "data" / f"rank_{accelerator.process_index}.pt")
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3 (gathers the shards)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp / "model", state_dict=state_dict)
        (tmp / "config.yaml").write_text(config_yaml)
        _write_json(tmp / STATE_FILE, {**trainer_state, "step": step})
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _point_latest(ckpt_root, final.name)
        prune(ckpt_root, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_data_state(path: Path, rank: int) -> dict[str, Any] | None:
    f = path / "data" / f"rank_{rank}.pt"
    return torch.load(f, weights_only=False) if f.is_file() else None


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all) and stale temp dirs."""
    for p in ckpt_root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last <= 0:
        return
    latest = find_latest(ckpt_root)
    for _, p in list_checkpoints(ckpt_root)[:-keep_last]:
        if latest is None or p.resolve() != latest:
            shutil.rmtree(p, ignore_errors=True)


def _point_latest(ckpt_root: Path, name: str) -> None:
    tmp_link = ckpt_root / ".latest.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(name)
    os.replace(tmp_link, ckpt_root / "latest")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename makes the checkpoint visible (matters on power loss)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
