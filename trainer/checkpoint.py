"""Checkpoints that resume exactly, are never half-written and are verified before use; the one place that knows
their layout.

Layout of ``RUN/checkpoints/step_N/``:
    accelerate/        accelerator.save_state: model, optimizer, scheduler, grad scaler, RNG of every process
                       (a DeepSpeed checkpoint under DeepSpeed)
    model/             consolidated weights + model config + tokenizer (AudioTextModel.save_pretrained), what
                       `load_model` reads for evaluation, inference and train.init_from
    data/rank_R.pt     data-stream state of rank R
    trainer_state.json step, world size, data_seen, read counts, ...
    config.yaml        the resolved config of the run
    checksums.sha256   sha256 of every file above (`sha256sum -c checksums.sha256` checks it by hand), written last:
                       a checkpoint without it is not complete

The save sequence (`save_checkpoint`) keeps `latest` on a complete checkpoint at every instant:
    1. every process writes into ``.tmp-step_N``                                       fault point "written"
    2. the main process writes checksums.sha256 (synced to disk)                       "summed"
    3. renames ``.tmp-step_N`` to ``step_N``                                           "renamed"
    4. points ``latest`` (a relative symlink) at it: a new link renamed over the old   "linked"
    5. prunes: each old checkpoint is renamed to ``.deleting-step_M`` (never taken for a checkpoint again), then
       deleted                                                                           "pruning" (after a rename)
A kill before 3 leaves a temp folder that the next save or prune removes; after 3 the new checkpoint is complete.
An existing ``step_N`` is never replaced in place: a run does not save a step twice, and resuming sets newer
checkpoints aside (`settle_resumed`).

Resuming (`resume_candidates` + `verify_checkpoint`) takes the newest checkpoint whose files match their checksums;
one that does not (a file missing, damaged, half-deleted) is reported in one line and the next older one is tried.

Fault injection for tests: ``SONOTEXT_CHECKPOINT_FAULT=[ACTION:]POINT[@STEP]`` makes the main process kill itself
with SIGKILL (ACTION ``kill``, the default) or send itself SIGTERM (``term``: the stop protocol) at POINT of the
save of STEP (of every save without @STEP). Points: written, summed, renamed, linked, pruning, saved (after all).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from shards.files import file_sha256, fsync_path, write_atomic

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"
CONFIG_FILE = "config.yaml"
CHECKSUMS = "checksums.sha256"
EVAL_CACHE_DIR = "eval_cache"
FAULT_ENV = "SONOTEXT_CHECKPOINT_FAULT"
FAULT_POINTS = ("written", "summed", "renamed", "linked", "pruning", "saved")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for resuming; the message names the path and why."""


def step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"step_{step}"


def is_complete(path: Path) -> bool:
    """Whether the save of `path` finished (its checksums are written); `verify_checkpoint` checks the contents."""
    return (path / CHECKSUMS).is_file() and (path / STATE_FILE).is_file() and (path / "accelerate").is_dir()


def step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Every step_N folder (complete or not), sorted by step."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints sorted by step."""
    return [(step, p) for step, p in step_dirs(ckpt_root) if is_complete(p)]


def find_latest(ckpt_root: Path) -> Path | None:
    """The checkpoint `latest` points at, or the newest complete one if the link is missing or broken."""
    link = ckpt_root / "latest"
    if link.exists() and is_complete(link.resolve()):
        return link.resolve()
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


# ---------------------------------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------------------------------


def _hash_files(root: Path, names: list[str]) -> list[str]:
    """sha256 of each file, in threads (hashlib releases the GIL on large reads)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda name: file_sha256(root / name), names))


def write_checksums(path: Path) -> None:
    """CHECKSUMS of every file under `path` (sha256sum format), written atomically and synced: the last write."""
    names = sorted(
        os.path.relpath(os.path.join(d, f), path)
        for d, _, files in os.walk(path)
        for f in files
        if f != CHECKSUMS
    )
    lines = [f"{digest}  {name}\n" for name, digest in zip(names, _hash_files(path, names))]
    write_atomic(path / CHECKSUMS, "".join(lines))


def verify_checkpoint(path: Path, only: str | None = None) -> None:
    """Raise CheckpointError naming the first problem unless every file listed in CHECKSUMS (under `only`, a
    subfolder, when given) exists with its checksum. Files not listed (e.g. eval_cache/) are not checked."""
    listing = path / CHECKSUMS
    if not listing.is_file():
        raise CheckpointError(
            f"{path}: no {CHECKSUMS} (not completely written, or saved by an older version)"
        )
    expected: dict[str, str] = {}
    for n, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        name = name.removeprefix("./")  # as `find . -type f -exec sha256sum {} +` writes them
        if not sep or len(digest) != 64 or not name or name.startswith("/") or ".." in Path(name).parts:
            raise CheckpointError(f"{path}: {CHECKSUMS} line {n} is not 'SHA256  FILE'")
        expected[name] = digest
    for required in (STATE_FILE, f"{MODEL_DIR}/"):
        if not any(name == required or name.startswith(required) for name in expected):
            raise CheckpointError(f"{path}: {CHECKSUMS} lists no {required}")
    names = [n for n in expected if only is None or n.startswith(only.rstrip("/") + "/")]
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{path}: {missing[0]} is missing" + (f" ({len(missing)} files)" if len(missing) > 1 else "")
        )
    for name, digest in zip(names, _hash_files(path, names)):
        if digest != expected[name]:
            raise CheckpointError(f"{path}: {name} does not match its checksum (damaged or changed)")


# ---------------------------------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------------------------------


def resume_candidates(resume: str | None, ckpt_root: Path) -> tuple[list[Path], bool]:
    """train.resume -> (checkpoints to try, newest first; whether an empty list may start fresh), unverified.

    auto (or a RUN/checkpoints folder): every step_N folder, newest first; none at all means a fresh start. A path:
    that checkpoint only (it must exist).
    """
    if resume is None or resume == "":
        return [], True
    if resume == "auto":
        return [p for _, p in reversed(step_dirs(ckpt_root))], True
    path = Path(resume)
    if path.is_dir() and path.name == "checkpoints":
        return [p for _, p in reversed(step_dirs(path))], False
    if not path.is_dir():
        raise CheckpointError(f"train.resume: checkpoint {path} does not exist")
    return [path.resolve()], False


def first_verified(candidates: list[Path], report: Callable[[str], None]) -> Path | None:
    """The first of `candidates` that verifies; each one that does not is reported."""
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            report(f"checkpoint {path.name} is not usable, trying the next older one: {e}")
            continue
        return path
    return None


def no_usable(candidates: list[Path], resume: str | None) -> str:
    names = ", ".join(p.name for p in candidates)
    return (
        f"train.resume={resume}: no usable checkpoint ({names} failed verification or loading, see above); "
        "repair or remove them, name one with train.resume=PATH, or start from scratch with train.resume=null"
    )


def settle_resumed(
    ckpt_root: Path, resumed: Path, keep_last: int, report: Callable[[str], None] = print
) -> None:
    """Tidy the run's checkpoints around the one resumed (if it is one of them): `latest` points at it; every newer
    step_N (unusable, or of the timeline being replaced) is renamed to step_N.unusable / step_N.superseded, so that
    the run can save those steps again (nothing of them is deleted); leftovers of an interrupted save are pruned."""
    match = STEP_DIR.match(resumed.name)
    if resumed.parent.resolve() != ckpt_root.resolve() or match is None:
        return
    step = int(match.group(1))
    _point_latest(ckpt_root, resumed.name)
    for _, p in [(n, p) for n, p in step_dirs(ckpt_root) if n > step]:
        try:
            verify_checkpoint(p)
            suffix = "superseded"
        except CheckpointError:
            suffix = "unusable"
        aside = _free_name(ckpt_root, f"{p.name}.{suffix}")
        os.replace(p, aside)
        report(f"checkpoint {p.name} is newer than the one resumed: renamed to {aside.name}")
    fsync_path(ckpt_root)
    prune(ckpt_root, keep_last, step)


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------------------


def fault(point: str, step: int) -> None:
    """The fault-injection hook (see the module docstring): kill or signal this process at `point` if asked to."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    action, _, rest = spec.rpartition(":")
    where, _, at = rest.partition("@")
    if where == point and (not at or int(at) == step):
        os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGKILL)


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
    """Collective: every process must call it. Returns the final checkpoint dir (see the module docstring)."""
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
        fault("written", step)
        _fsync_tree(tmp)
        write_checksums(tmp)
        fault("summed", step)
        if final.exists():  # only when another run wrote this folder: keep it, out of the way
            os.replace(final, _free_name(ckpt_root, f"{final.name}.superseded"))
        os.replace(tmp, final)
        fsync_path(ckpt_root)
        fault("renamed", step)
        _point_latest(ckpt_root, final.name)
        fault("linked", step)
        prune(ckpt_root, keep_last, step)
        fault("saved", step)
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
    """The AudioTextModel saved in a checkpoint, a saved model folder or under a hub id (cached), on `device`; a
    local checkpoint's model files are checked against its checksums first."""
    from trainer.model import AudioTextModel

    if Path(path).is_dir():
        folder = model_dir(path, what)
        if folder.name == MODEL_DIR and (folder.parent / CHECKSUMS).is_file():
            verify_checkpoint(folder.parent, only=MODEL_DIR)
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


def prune(ckpt_root: Path, keep_last: int, step: int = -1) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (0 keeps all; never `latest`'s) and leftovers of
    interrupted saves and deletions. Each is renamed first, so a half-deleted folder is never taken for a checkpoint."""
    for p in [*ckpt_root.glob(".tmp-step_*"), *ckpt_root.glob(".deleting-*")]:
        shutil.rmtree(p, ignore_errors=True)
    if keep_last <= 0:
        return
    latest = find_latest(ckpt_root)
    for _, p in list_checkpoints(ckpt_root)[:-keep_last]:
        if latest is None or p.resolve() != latest:
            doomed = ckpt_root / f".deleting-{p.name}"
            os.replace(p, doomed)
            fault("pruning", step)
            shutil.rmtree(doomed, ignore_errors=True)


def _free_name(folder: Path, name: str) -> Path:
    """folder/name, or folder/name.2, name.3, ... if taken."""
    path, n = folder / name, 1
    while path.exists() or path.is_symlink():
        n += 1
        path = folder / f"{name}.{n}"
    return path


def _point_latest(ckpt_root: Path, name: str) -> None:
    tmp_link = ckpt_root / ".latest.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(name)
    os.replace(tmp_link, ckpt_root / "latest")
    fsync_path(ckpt_root)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename makes the checkpoint visible (matters on power loss)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(dirpath, f))
