"""Processes: rank and world size, collectives on Python objects, joining a launcher's group, and the Accelerator.

Every helper works without a process group too (rank 0 of a world of 1), so callers need no special case.

Accelerator construction: DDP (NCCL on GPU, gloo on CPU) or DeepSpeed, from our config alone. Two traps are
handled here rather than left to users:
- On a machine without CUDA, `Accelerator()` under a multi-process launcher (`torchrun`, `accelerate launch
  --multi_gpu`) silently runs N independent single-process jobs; we pass `cpu=True`, which makes Accelerate set
  up one gloo process group, and we refuse to continue if the world size still does not match the launcher's.
- DeepSpeed ignores `cpu=True`; on CPU it needs `cpu=False` and a gloo process group.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from trainer.config import Config, ConfigError


class LaunchError(RuntimeError):
    """The process layout is not what the launcher asked for."""


def launcher_world_size() -> int:
    """The number of processes the launcher (torchrun, accelerate launch, SLURM via launch.job) started."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's object, in rank order, on rank 0 (None elsewhere)."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's object on every rank."""
    _, world = rank_world()
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def init_from_env() -> tuple[int, int]:
    """(rank, world size); joins the process group a launcher (torchrun) describes in the environment.

    For programs that run without Accelerate (tools.evaluate); NCCL on GPU, gloo on CPU.
    """
    world = launcher_world_size()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    return rank_world()


def local_device(given: str | None = None) -> torch.device:
    """`given` (a --device flag), else this process's GPU (cuda:LOCAL_RANK) when there is one, else the CPU."""
    if given:
        return torch.device(given)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def deepspeed_plugin(cfg: Config):
    """DeepSpeedPlugin from train.deepspeed; our config is the single source of truth for shared values."""
    from accelerate.utils import DeepSpeedPlugin

    path = Path(cfg.train.deepspeed)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: file not found: {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {e}") from None
    ours = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.train.grad_clip,
    }
    for key, value in ours.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(
                f'train.deepspeed: {path} sets {key}={given!r} but the config says {value!r}; use "auto" in the JSON'
            )
        ds[key] = value
    if "train_batch_size" in ds and ds["train_batch_size"] != "auto":
        raise ConfigError(
            f'train.deepspeed: {path} sets train_batch_size; use "auto" (derived from data.batch_size)'
        )
    ds.pop("train_batch_size", None)
    for key, enabled in (
        ("bf16", cfg.train.mixed_precision == "bf16"),
        ("fp16", cfg.train.mixed_precision == "fp16"),
    ):
        section = ds.get(key)
        if isinstance(section, dict) and section.get("enabled", "auto") not in ("auto", enabled):
            raise ConfigError(
                f"train.deepspeed: {path} sets {key}.enabled={section['enabled']} but train.mixed_precision is "
                f'{cfg.train.mixed_precision!r}; use "auto"'
            )
    # Our optimizer is torch AdamW (not DeepSpeed's fused/CPU Adam builds): ZeRO must accept it.
    ds.setdefault("zero_allow_untested_optimizer", True)
    return DeepSpeedPlugin(hf_ds_config=ds)


def build_accelerator(cfg: Config, cpu: bool = False):
    """The Accelerator of a run (DDP or DeepSpeed); `cpu` keeps it on the CPU even where CUDA is visible."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    has_cuda = torch.cuda.is_available() and not cpu
    if cfg.train.mixed_precision == "fp16" and not has_cuda:
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on CPU")
    if cfg.train.deepspeed and "LOCAL_RANK" not in os.environ:
        _single_process_env()  # DeepSpeed always needs a process group, even for `python -m trainer`
    handlers = []
    if not has_cuda and "LOCAL_RANK" in os.environ:  # Accelerate only creates a group under a launcher
        handlers.append(InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30)))
    if cfg.train.deepspeed:
        if not has_cuda:
            _disable_deepspeed_shm_op()
        accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            deepspeed_plugin=deepspeed_plugin(cfg),
            kwargs_handlers=handlers,
        )
    else:
        # Every parameter gets a gradient each step (the loss touches all outputs), so DDP needs no unused-parameter search.
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=False))
        accelerator = Accelerator(
            cpu=not has_cuda,
            mixed_precision=cfg.train.mixed_precision,
            gradient_accumulation_steps=cfg.train.grad_accum,
            kwargs_handlers=handlers,
        )
    want = launcher_world_size()
    if accelerator.num_processes != want:
        raise LaunchError(
            f"the launcher started {want} processes but Accelerate formed a group of {accelerator.num_processes}; "
            "on CPU use `torchrun --nproc_per_node N -m trainer ...` or "
            "`accelerate launch --multi_gpu --num_processes N -m trainer ...`"
        )
    return accelerator


def _single_process_env() -> None:
    """The environment torchrun would give a world of one process, with a free local port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    defaults.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _disable_deepspeed_shm_op() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory allreduce op on first init (~1 min); gloo suffices."""
    try:
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is not None:
            deepspeed.ops.__compatible_ops__[builder.NAME] = False
    except (ImportError, AttributeError):
        pass


def destroy() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
