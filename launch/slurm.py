"""Submit a training run to SLURM with submitit: one task per GPU, requeue at the time limit, resume from latest.

    python -m launch.slurm CONFIG.yaml --cluster configs/clusters/NAME.yaml --nodes N [--gpus-per-node G]
                           [--dry-run] [--probe] [a.b=c ...]

Each task is one training process; launch.job.TrainJob sets its torch.distributed env from SLURM and runs the
trainer in-process. Logs and submitit's files go to RUN_DIR/submitit/. See docs/launch.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launch.cluster import ClusterConfig, load_cluster, sbatch_parameters
from launch.job import PROBE_ENTRY, TrainJob, time_limit_signal
from trainer.cli import program_name
from trainer.config import ConfigError, load_config
from trainer.config_files import resolve_config_file

PROBE_STEPS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("launch.slurm"),
        description="Submit a sonotext training run to SLURM (submitit; requeues and resumes on time limits).",
    )
    parser.add_argument(
        "config", help="run config: a YAML path or a shipped name (debug, configs/debug.yaml)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4"
    )
    parser.add_argument(
        "--cluster",
        required=True,
        help="cluster YAML: a path or a shipped name (configs/clusters/NAME.yaml, NAME)",
    )
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node; default: the cluster file's")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")
    parser.add_argument(
        "--probe", action="store_true", help="run launch.probe (a seconds-long cluster check)"
    )
    return parser


def make_job(config: str | Path, overrides: Sequence[str], run_dir: Path, probe: bool = False) -> TrainJob:
    """The job every task runs: the trainer on CONFIG + overrides, or the probe writing to RUN_DIR/probe."""
    if probe:
        argv = ["--out", str(run_dir / "probe"), "--steps", str(PROBE_STEPS)]
        return TrainJob(argv=argv, entry=PROBE_ENTRY, resume_argv=["--resume"])
    path = resolve_config_file(config, folders=("", "experiments"))  # a path, or a shipped name such as debug
    return TrainJob(argv=[str(path.resolve()), *overrides])


def submitit_command(folder: Path, python: str | None) -> str:
    """The command srun starts in every task (what submitit's SlurmExecutor writes)."""
    py = python if python is not None else shlex.quote(sys.executable)
    return f"{py} -u -m submitit.core._submit {shlex.quote(str(folder))}"


def sbatch_script(params: dict[str, Any], folder: Path, python: str | None = None) -> str:
    """The sbatch script submitit writes for these parameters (for --dry-run; no SLURM needed).

    submitit has no public call that returns the script without submitting (its SlurmExecutor even refuses to be
    built where `srun` is missing), so this calls the private function the executor writes the submission file
    with. setup.cfg pins submitit to the release series whose signature this was checked against (1.5.x), and a
    test on a real cluster checks that --dry-run prints exactly the script that gets submitted.
    """
    return _make_sbatch_string(command=submitit_command(folder, python), folder=folder, **params)


@contextlib.contextmanager
def submission_env() -> Iterator[None]:
    """submitit's clean_env (no SLURM_*/RANK/... of an enclosing job leak into the new one), keeping SLURM_CONF."""
    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf is not None:
            os.environ["SLURM_CONF"] = conf
        yield


def submit(
    job: TrainJob,
    cluster: ClusterConfig,
    folder: Path,
    job_name: str,
    nodes: int,
    gpus_per_node: int | None = None,
) -> submitit.Job:
    """Submit `job` with sbatch through submitit; returns the submitit Job (job_id, paths)."""
    time_limit_signal()  # refuse a SUBMITIT_PREEMPT_SIGNAL the trainer would take for its own stop signal
    params = sbatch_parameters(cluster, job_name, nodes, gpus_per_node)
    executor = submitit.SlurmExecutor(
        folder=folder, max_num_timeout=cluster.max_requeues, python=cluster.python
    )
    executor.update_parameters(**params)
    with submission_env():
        return executor.submit(job)


def describe(job: submitit.Job, run_dir: Path, tasks: int) -> str:
    """What a user needs after submitting: job id, logs, run dir."""
    out, err = job.paths.stdout, job.paths.stderr
    lines = [
        f"job id:   {job.job_id} ({tasks} task{'s' if tasks > 1 else ''})",
        f"run dir:  {run_dir}",
        f"logs:     {out}  and  {err}  (rank 0; other ranks: {job.job_id}_<rank>_log.out/.err)",
        f"script:   {job.paths.submission_file}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        cluster = load_cluster(args.cluster)
        params = sbatch_parameters(cluster, cfg.run.name, args.nodes, args.gpus_per_node)
        time_limit_signal()
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = cfg.output_dir.resolve()
    folder = run_dir / "submitit"
    if args.dry_run:
        print(sbatch_script(params, folder, cluster.python))
        return 0
    job = make_job(args.config, args.overrides, run_dir, probe=args.probe)
    captured = io.StringIO()  # submitit echoes sbatch's stderr on failure; we report it as one line
    try:
        with contextlib.redirect_stderr(captured):
            submitted = submit(job, cluster, folder, cfg.run.name, args.nodes, args.gpus_per_node)
    except (RuntimeError, OSError) as e:
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        print(f"error: submission failed: {lines[0]}", file=sys.stderr)
        return 1
    sys.stderr.write(captured.getvalue())
    print(describe(submitted, run_dir, args.nodes * params["ntasks_per_node"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
