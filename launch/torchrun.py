"""`python -m launch.torchrun ARGS` (`sonotext-torchrun`): torchrun ARGS, with the trainer's stop protocol intact.

    python -m launch.torchrun --nproc_per_node 8 -m trainer CONFIG.yaml      # exit 75 after a SIGTERM/SIGUSR1 stop

Under plain torchrun the exit status is not the trainer's: the elastic agent exits 1 whenever a worker exits with
anything but 0, so a run that saved its checkpoint and asks to be resumed (75, trainer.stop.EXIT_PREEMPTED) looks
like a crash; and when the agent itself receives SIGTERM it forwards it, gives the workers `--shutdown-timeout`
(30 s) before SIGKILL — a large checkpoint can be cut short — and exits 1 with a traceback.

This wrapper runs the same agent (torch.distributed.run) with the same arguments, in-process, but keeps SIGTERM and
SIGUSR1 for itself: it forwards them to the workers and waits for them however long their checkpoint takes; it exits
75 when every worker that stopped exited 75, 0 on success, 1 otherwise. (With --max-restarts > 0 the agent restarts
a stopped group, which resumes from its checkpoint, until the restarts are used up.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from trainer.stop import EXIT_PREEMPTED, STOP_SIGNALS

AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"
"""The signals left to the agent (it forwards them, then kills the workers); the stop signals are ours."""


def children() -> list[int]:
    """Process ids of this process's children (the workers the agent started), from /proc."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def forward(signum: int, frame) -> None:
    """Pass a stop signal on to every worker; the agent goes on watching them exit."""
    for pid in children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    try:
        torchrun([f"--signals-to-handle={AGENT_SIGNALS}", *argv])
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        print(f"[launch.torchrun] workers exited with {sorted(codes)}", file=sys.stderr)
        return EXIT_PREEMPTED if stopped(codes) else 1
    return 0


def stopped(codes: set[int]) -> bool:
    """Whether worker exit codes say "checkpoint saved, resume me": some 75, the others 75 or ended by the SIGTERM
    the agent sends the rest of the group once one worker exits (a worker only exits 75 after the collective save
    and the final barrier, so the others had finished their part too)."""
    return EXIT_PREEMPTED in codes and codes <= {EXIT_PREEMPTED, -signal.SIGTERM}


if __name__ == "__main__":
    sys.exit(main())
