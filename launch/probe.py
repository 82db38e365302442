"""A seconds-long stand-in for a training run that checks a cluster before real work goes on it.

    python -m launch.slurm configs/debug.yaml --cluster configs/clusters/NAME.yaml --nodes 2 --probe

Every task joins torch.distributed through the same env:// rendezvous the trainer uses, checks an
all-reduce, and counts steps. It follows the trainer's stop protocol: on SIGTERM or SIGUSR1 all ranks agree at
the end of the current step, rank 0 saves the step, and the process exits 75; with --resume it continues from
the saved step. OUT/runs.jsonl gets one line per run (start/end step, world size, hosts, exit code), so
requeue and resume can be seen without spending GPU hours.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
import types
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.cli import program_name
from trainer.stop import EXIT_PREEMPTED, STOP_SIGNALS


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program_name("launch.probe"), description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for state.json, progress.json, runs.jsonl"
    )
    parser.add_argument("--steps", type=int, default=20, help="steps to count (default 20)")
    parser.add_argument("--step-seconds", type=float, default=0.5, help="sleep per step (default 0.5)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/state.json if present")
    parser.add_argument("--backend", choices=("gloo", "nccl"), help="default: nccl with CUDA, else gloo")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: must be >= 1, got {args.steps}")
    if args.step_seconds < 0:
        parser.error(f"--step-seconds: must be >= 0, got {args.step_seconds}")
    return args


class StopFlag:
    """SIGTERM/SIGUSR1 handler that only records the request; the loop acts on it at a step boundary."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: types.FrameType | None) -> None:
        self.requested = True

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self)


def write_json(path: Path, obj: object) -> None:
    """Atomic write: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stop = StopFlag()
    stop.install()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu")
    if world > 1:
        backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if world > 1 else 0
    try:
        return _count(args, stop, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _count(args: argparse.Namespace, stop: StopFlag, rank: int, world: int, device: torch.device) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    start = 0
    if args.resume and state_path.is_file():
        start = int(json.loads(state_path.read_text(encoding="utf-8"))["step"])
    hosts = [socket.gethostname()]
    if world > 1:
        hosts = [""] * world
        dist.all_gather_object(hosts, socket.gethostname())
        total = torch.tensor([float(rank)], device=device)
        dist.all_reduce(total)
        if int(total.item()) != world * (world - 1) // 2:
            raise RuntimeError(
                f"all-reduce of ranks gave {total.item()}, expected {world * (world - 1) // 2}"
            )
    step, code = start, 0
    while step < args.steps:
        time.sleep(args.step_seconds)
        step += 1
        if rank == 0:
            write_json(out / "progress.json", {"step": step})
        flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)
        if world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and step < args.steps:
            code = EXIT_PREEMPTED
            break
    if rank == 0:
        write_json(state_path, {"step": step})
        run = {"start_step": start, "end_step": step, "world_size": world, "hosts": hosts, "exit": code}
        with open(out / "runs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(run) + "\n")
        print(
            f"[probe] steps {start}->{step} of {args.steps} on {world} ranks ({', '.join(hosts)}); exit {code}"
        )
    if world > 1:
        dist.barrier()
    return code


if __name__ == "__main__":
    sys.exit(main())
