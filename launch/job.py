"""The callable that submitit runs in every task of a training job (SLURM or local executor).

One task = one training process. The task sets the torch.distributed environment from the scheduler
(launch.slurm_env), calls the trainer in-process, and turns the trainer's exit into the scheduler's next move:

- exit 0: done.
- exit 75 (EX_TEMPFAIL, the trainer's "stopped on a signal after saving a checkpoint") after the time-limit
  signal: submitit's handler runs on rank 0, calls `checkpoint()` (a DelayedSubmission of the same job) and
  requeues it; the next run resumes from `checkpoints/latest`.
- exit 75 after SIGTERM (preemption, `scontrol requeue`, `scancel`): SLURM already decided whether the job
  comes back; the task just exits, and a requeued run resumes from `checkpoints/latest`.

The time-limit signal is submitit's (SIGUSR2 at `signal_delay_s` before the limit). The trainer listens to
SIGTERM and SIGUSR1 only, so the task catches SIGUSR2 itself, remembers that it came, and raises SIGUSR1 for
the trainer: the trainer finishes its step, all ranks save, and it returns 75.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import submitit

from launch.slurm_env import current_task_env
from trainer.stop import EXIT_PREEMPTED, STOP_SIGNALS

TRAINER_ENTRY = "trainer.__main__:main"
PROBE_ENTRY = "launch.probe:main"


@dataclass
class TrainJob:
    """A submitit job: runs `entry(argv)` in every task with the torch.distributed env of that task."""

    argv: list[str]
    """Arguments of the entry point: CONFIG.yaml followed by key=value overrides."""
    entry: str = TRAINER_ENTRY
    """`module:function` called as function(argv) -> exit code."""
    resume_argv: list[str] = field(default_factory=lambda: ["train.resume=auto"])
    """Appended to argv when the job runs again after a requeue, so it continues from its latest checkpoint."""
    restarts: int = 0
    """Requeues made through checkpoint() at the time limit (SLURM also counts them in SLURM_RESTART_COUNT)."""

    def __call__(self) -> int:
        forwarder = TimeLimitForwarder.install()
        dist = current_task_env()
        if int(dist["WORLD_SIZE"]) > 1:
            os.environ.update(dist)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus and "OMP_NUM_THREADS" not in os.environ:
            os.environ["OMP_NUM_THREADS"] = cpus
        # SLURM counts every requeue (its own and submitit's scontrol requeue); the local executor counts none.
        restarts = max(self.restarts, int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        argv = [*self.argv, *self.resume_argv] if restarts else list(self.argv)
        rank = int(dist["RANK"])
        print(
            f"[launch] rank {rank}/{dist['WORLD_SIZE']} on {socket.gethostname()} "
            f"(local {dist['LOCAL_RANK']}/{dist['LOCAL_WORLD_SIZE']}), "
            f"master {dist['MASTER_ADDR']}:{dist['MASTER_PORT']}, run {restarts + 1}: {self.entry} {' '.join(argv)}",
            flush=True,
        )
        code = load_entry(self.entry)(argv)
        if code == 0:
            return 0
        if code == EXIT_PREEMPTED:
            if forwarder.fired:
                print(f"[launch] rank {rank}: checkpoint saved at the time limit; requeueing", flush=True)
                forwarder.requeue()  # rank 0: dumps checkpoint(), requeues and exits; other ranks return here
            else:
                print(f"[launch] rank {rank}: stopped by the scheduler after saving a checkpoint", flush=True)
            sys.exit(EXIT_PREEMPTED)
        raise RuntimeError(f"{self.entry} exited with code {code} on rank {rank}")

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 at the time limit: the same job again, resuming from its checkpoint."""
        return submitit.helpers.DelayedSubmission(replace(self, restarts=self.restarts + 1))


def load_entry(spec: str) -> Callable[[list[str]], int]:
    """`package.module:function` -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry point {spec!r}: expected module:function, e.g. {TRAINER_ENTRY}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"entry point {spec!r}: module {module_name} has no {attr!r}") from None


def trainer_listens() -> bool:
    """True once a Python handler for SIGUSR1 is installed (the trainer's stop request)."""
    return callable(signal.getsignal(signal.SIGUSR1))


def _deliver_when_listening(poll_s: float = 0.2) -> None:
    while not trainer_listens():
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGUSR1)


def time_limit_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before the time limit (SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    name = "SIG" + submitit.JobEnvironment.USR_SIG
    sig = getattr(signal, name, None)
    if sig is None:
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={submitit.JobEnvironment.USR_SIG!r} is not a signal name")
    if sig in STOP_SIGNALS:
        raise ValueError(
            f"SUBMITIT_PREEMPT_SIGNAL={submitit.JobEnvironment.USR_SIG}: the trainer uses SIGTERM and SIGUSR1 "
            "for its own stop; pick another time-limit signal (default USR2)"
        )
    return sig


@dataclass
class TimeLimitForwarder:
    """Signal handler: records the time-limit signal and passes it on to the trainer as SIGUSR1."""

    signum: signal.Signals
    previous: Callable[[int, types.FrameType | None], object] | int | None
    fired: bool = False

    @classmethod
    def install(cls) -> TimeLimitForwarder:
        signum = time_limit_signal()
        forwarder = cls(signum, signal.getsignal(signum))
        signal.signal(signum, forwarder)
        return forwarder

    def __call__(self, signum: int, frame: types.FrameType | None) -> None:
        if self.fired:
            return
        self.fired = True
        if trainer_listens():
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            # Still starting up (imports, model build): deliver as soon as the trainer's handler is in place.
            print(
                "[launch] time-limit signal during start-up; passed on once the trainer listens", flush=True
            )
            threading.Thread(target=_deliver_when_listening, name="time-limit-signal", daemon=True).start()

    def requeue(self) -> None:
        """Run submitit's own time-limit handler (saved at install): on rank 0 it requeues and exits."""
        if callable(self.previous):
            self.previous(self.signum, None)
