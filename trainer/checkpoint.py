"""Checkpoints that resume exactly and are never half-written; the one place that knows their layout.

Layout of ``RUN/checkpoints/step_N/``:
    accelerate/        accelerator.save_state: model, optimizer, scheduler, grad scaler, RNG of every process
                       (a DeepSpeed checkpoint under DeepSpeed)
    model/             consolidated weights + model config + tokenizer (AudioTextModel.save_pretrained), what
                       `load_model` reads for evaluation, inference and train.init_from
    data/rank_R.pt     data-stream state of rank R
    trainer_state.json step, world size, data_seen, ...
    config.yaml        the resolved config of the run

Every process writes into ``.tmp-step_N``; after a barrier the main process renames it to ``step_N``, then
points ``latest`` (a relative symlink) at it, then prunes. A crash at any point leaves ``latest`` on a complete
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"
CONFIG_FILE = "config.yaml"
EVAL_CACHE_DIR = "eval_cache"


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
        accelerator.unwrap_model(model).save_pretrained(tmp / MODEL_DIR, state_dict=state_dict)
        (tmp / CONFIG_FILE).write_text(config_yaml)
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


def model_dir(path: str | Path, what: str = "checkpoint") -> Path:
    """The saved model of a checkpoint (its model/ folder), or `path` itself when it is a saved model folder.

    `what` names the path in errors: the config key or flag it came from (e.g. "train.init_from", "--checkpoint").
    """
    from trainer.model.joint import CONFIG_NAME

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{what} {path}: not a directory")
    if (path / MODEL_DIR / CONFIG_NAME).is_file():
        return path / MODEL_DIR
    if (path / CONFIG_NAME).is_file():
        return path
    raise CheckpointError(
        f"{what} {path}: holds no saved model (no {MODEL_DIR}/ folder with a {CONFIG_NAME}, and no {CONFIG_NAME}; "
        "expected RUN/checkpoints/step_N)"
    )


def load_model(path: str | Path, device: str | torch.device = "cpu", what: str = "checkpoint"):
    """The AudioTextModel saved in a checkpoint, a saved model folder or under a hub id (cached), on `device`."""
    from trainer.model import AudioTextModel

    return AudioTextModel.from_pretrained(path, device=device, what=what)


def checkpoint_config(checkpoint: Path) -> dict[str, Any]:
    """The resolved run config stored with a checkpoint (CHECKPOINT/config.yaml, else RUN/config.yaml); {} if none."""
    for path in (checkpoint / CONFIG_FILE, checkpoint.parent.parent / CONFIG_FILE):
        if path.is_file():
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            return loaded if isinstance(loaded, dict) else {}
    return {}


def training_summary(path: str | Path) -> dict[str, Any]:
    """What a checkpoint tells about its run, for a model card: `step`, `samples_seen`, `data_seen` (per source),
    `mixture` (data.weak/strong with weights, strong_every, strong_prob of its config) and `eval`, the last report
    RUN/eval/step_M.json with M <= step. {} for a saved model folder that is not part of a checkpoint."""
    path = Path(path).resolve()
    if path.name == MODEL_DIR and (path.parent / STATE_FILE).is_file():
        path = path.parent
    if not (path / STATE_FILE).is_file():
        return {}
    state = read_state(path)
    step = int(state["step"])
    data = checkpoint_config(path).get("data", {})
    summary: dict[str, Any] = {
        "step": step,
        "samples_seen": state.get("samples_seen"),
        "data_seen": state.get("data_seen", {}),
        "mixture": {k: data.get(k) for k in ("weak", "strong", "strong_every", "strong_prob") if k in data},
    }
    reports = []
    for report in (path.parent.parent / "eval").glob("step_*.json"):
        m = STEP_DIR.match(report.stem)
        if m and int(m.group(1)) <= step:
            reports.append((int(m.group(1)), report))
    if reports:
        summary["eval"] = json.loads(max(reports)[1].read_text(encoding="utf-8"))
    return summary


def checkpoint_sample_rate(checkpoint: Path, given: int | None = None, model=None) -> int:
    """The rate audio is fed at: `given` (--sample-rate), else the model's `sample_rate`, else data.sample_rate of
    the checkpoint's config; a clear error when none is known."""
    if given is not None:
        if given <= 0:
            raise ValueError(f"--sample-rate: must be > 0, got {given}")
        return given
    rate = getattr(model, "sample_rate", None)
    if not isinstance(rate, int) or rate <= 0:
        rate = checkpoint_config(checkpoint).get("data", {}).get("sample_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"{checkpoint}: no sample rate in the model or its config.yaml; pass --sample-rate")
    return rate


def eval_cache_path(checkpoint: Path, task: str, urls: list[str], sample_rate: int, extra: str = "") -> Path:
    """CHECKPOINT/eval_cache/TASK-HASH.npz; the hash covers the data urls, sample rate and query options."""
    digest = hashlib.sha1(json.dumps([urls, sample_rate, extra]).encode("utf-8")).hexdigest()[:16]
    return checkpoint / EVAL_CACHE_DIR / f"{task}-{digest}.npz"


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
