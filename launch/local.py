"""Run the SLURM job on this machine through submitit's local executor: real processes, real logs, same job.

    python -m launch.local CONFIG.yaml [--tasks N] [--gpus G] [--timeout-min M] [--probe] [a.b=c ...]

Each task is one training process with the torch.distributed env a SLURM task would get (gloo on CPU). Near
the time limit the job checkpoints, requeues itself (submitit restarts the tasks) and resumes from latest.
Waits for the job; exits 0 when every task finished cleanly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import submitit

from launch.job import TrainJob, time_limit_signal
from launch.slurm import make_job, submission_env
from trainer.cli import program_name
from trainer.config import ConfigError, load_config

DEFAULT_TIMEOUT_MIN = 7 * 24 * 60


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("launch.local"),
        description="Run a sonotext training job through submitit's local executor (one process per task).",
    )
    parser.add_argument(
        "config", help="run config: a YAML path or a shipped name (debug, configs/debug.yaml)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4"
    )
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to use (default 0)")
    parser.add_argument("--tasks", type=int, help="training processes (default: one per GPU, or 1)")
    parser.add_argument(
        "--timeout-min", type=float, default=DEFAULT_TIMEOUT_MIN, help="time limit per run (default 7 days)"
    )
    parser.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="checkpoint this long before the time limit (default 120)",
    )
    parser.add_argument(
        "--max-requeues", type=int, default=20, help="requeues at the time limit (default 20)"
    )
    parser.add_argument("--probe", action="store_true", help="run launch.probe (a seconds-long check)")
    return parser


def submit_local(
    job: TrainJob,
    folder: Path,
    tasks: int,
    gpus: int = 0,
    timeout_min: float = DEFAULT_TIMEOUT_MIN,
    signal_delay_s: int = 120,
    max_requeues: int = 20,
) -> submitit.Job:
    """Start `job` with `tasks` local processes; returns the submitit Job (job_id = controller pid)."""
    time_limit_signal()  # refuse a SUBMITIT_PREEMPT_SIGNAL the trainer would take for its own stop signal
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeues)
    executor.update_parameters(
        tasks_per_node=tasks, gpus_per_node=gpus, timeout_min=timeout_min, signal_delay_s=signal_delay_s
    )
    with submission_env():
        return executor.submit(job)


def wait(job: submitit.Job) -> int:
    """Wait for every task; 0 if all returned 0, else 1 with the failing rank's log named."""
    try:
        job.wait()
    except KeyboardInterrupt:
        job.cancel()
        print(f"interrupted: job {job.job_id} cancelled", file=sys.stderr)
        return 130
    for task in (job.task(i) for i in range(job.num_tasks)):
        try:
            code = task.result()
        except (submitit.core.utils.UncompletedJobError, RuntimeError) as e:
            reason = failure_reason(str(e))
            print(f"error: task {task.task_id} failed ({task.paths.stderr}): {reason}", file=sys.stderr)
            return 1
        if code != 0:
            print(f"error: task {task.task_id} returned {code} ({task.paths.stdout})", file=sys.stderr)
            return 1
    return 0


def failure_reason(message: str) -> str:
    """The exception line of a submitit failure message (its traceback sits between two dashed rules)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    if len(rules) >= 2 and rules[1] > rules[0] + 1:
        return lines[rules[1] - 1]
    return lines[0] if lines else "unknown error"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        time_limit_signal()
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = args.tasks if args.tasks is not None else max(args.gpus, 1)
    checks = (("--tasks", tasks, 1), ("--gpus", args.gpus, 0), ("--max-requeues", args.max_requeues, 0))
    for name, value, low in checks:
        if value < low:
            print(f"error: {name}: must be >= {low}, got {value}", file=sys.stderr)
            return 2
    if args.timeout_min <= 0:
        print(f"error: --timeout-min: must be > 0, got {args.timeout_min}", file=sys.stderr)
        return 2
    run_dir = cfg.output_dir.resolve()
    job = make_job(args.config, args.overrides, run_dir, probe=args.probe)
    submitted = submit_local(
        job, run_dir / "submitit", tasks, args.gpus, args.timeout_min, args.signal_delay_s, args.max_requeues
    )
    print(f"job id:   {submitted.job_id} ({tasks} task{'s' if tasks > 1 else ''}, local)")
    print(f"run dir:  {run_dir}")
    print(f"logs:     {submitted.paths.stdout}  and  {submitted.paths.stderr}  (rank 0)", flush=True)
    code = wait(submitted)
    if code == 0:
        print(f"done: {run_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
