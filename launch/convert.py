"""Convert a dataset with many tasks: a SLURM job array (submitit), resumable, merged into verified splits.

    python -m launch.convert DATASET --src RAW --out OUT --cluster configs/clusters/NAME.yaml --tasks N
                             [--workers-per-task K] [--split S] [--partition P] [--dry-run] [dataset flags]
    python -m launch.convert DATASET --src RAW --out OUT --local --tasks N [--workers-per-task K]

Each split's listing is cut into N contiguous ranges of entries (shards.parts). One array element per
(split, task), a launch.convert_jobs.ConvertTask, converts its range with K worker processes into
``OUT/DATASET/SPLIT/DATASET-SPLIT-TTTT-NNNNNN.tar``
with its own journal; a task stopped by the scheduler exits, a task at its time limit requeues itself
(submitit checkpoint -> DelayedSubmission), and either resumes from its journal. A job that depends on the
array (afterany) merges the parts of every split into its ``manifest.json`` and verifies the split; it fails,
naming the tasks, if any task did not finish. Rerunning the same command submits only what is missing (tasks
without a finished part, then the merge) and leaves finished work alone. The result is that of
``python -m tools.convert`` with the same options, up to shard boundaries; the same N gives the same bytes.

``--local`` runs the same jobs through submitit's local executor on this machine (all tasks at once) and then
merges and verifies in this process. Logs go to OUT/DATASET/submitit/. See docs/launch.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launch.cluster import ClusterConfig, load_cluster, sbatch_parameters
from launch.convert_jobs import ConvertTask, MergeJob
from launch.slurm import submission_env, submitit_command
from shards.convert import ConvertError
from shards.convert_cli import conversion_parser, positive_int
from shards.parts import ConvertOptions, SplitPlan, plan_split
from shards.sources import SOURCES, SourceError
from shards.splitdir import WriterError, remove_part_files, write_plan
from trainer.cli import program_name
from trainer.config import ConfigError

PROG = program_name("launch.convert")
DEFAULT_LOCAL_TIMEOUT_MIN = 7 * 24 * 60


def own_options(p: argparse.ArgumentParser) -> None:
    """launch.convert's options besides the shared ones: where the tasks run, how many, --dry-run."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--cluster", type=Path, help="cluster YAML (configs/clusters/NAME.yaml): submit to SLURM"
    )
    where.add_argument("--local", action="store_true", help="run the tasks on this machine (submitit local)")
    p.add_argument("--tasks", type=positive_int, default=1, help="tasks per split (default %(default)s)")
    p.add_argument(
        "--workers-per-task",
        type=positive_int,
        help="decode/encode processes per task (default: the cluster file's cpus_per_task; with --local, "
        "this machine's cores divided by --tasks)",
    )
    p.add_argument("--partition", help="SLURM partition for the conversion (default: the cluster file's)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the sbatch scripts; submit nothing"
    )


def build_parser() -> argparse.ArgumentParser:
    return conversion_parser(PROG, __doc__.split("\n\n")[0], own_options, out_required=True)


# -- planning and submission -----------------------------------------------------------------------------------


def describe_plan(plans: Sequence[SplitPlan]) -> str:
    """One line per split: complete, or entries, tasks and the tasks still to run."""
    lines = []
    for plan in plans:
        where = f"{plan.dataset}/{plan.split}"
        if plan.complete:
            lines.append(f"{where}: already complete ({plan.out_dir})")
            continue
        todo = [p.task for p in plan.todo]
        sizes = [p.stop - p.start for p in plan.parts]
        each = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
        state = "all tasks finished, to merge" if not todo else f"tasks to run: {_ranges(todo)}"
        if plan.running:
            running = ", ".join(f"{t} ({who})" for t, who in sorted(plan.running.items()))
            state = (
                f"{state if todo else 'nothing to submit'}; running now: {running} — their own merge job "
                f"completes the split (rerun this command if it does not)"
            )
        lines.append(f"{where}: {plan.entries} entries, {plan.tasks} tasks of {each} entries; {state}")
    return "\n".join(lines)


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: list[str] = []
    for v in values:
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out)


def task_cluster(cluster: ClusterConfig, workers: int, partition: str | None) -> ClusterConfig:
    """The cluster file, for conversion: one task per job, `workers` CPUs, no GPUs."""
    return replace(
        cluster,
        tasks_per_node=1,
        cpus_per_task=workers,
        gpus_per_node=0,
        partition=partition if partition is not None else cluster.partition,
    )


def dry_run_text(
    plans: Sequence[SplitPlan],
    tasks: Sequence[ConvertTask],
    params: dict[str, Any],
    folder: Path,
    python: str | None,
) -> str:
    command = submitit_command(folder, python)
    out = [describe_plan(plans)]
    if tasks:
        array = {"map_count": len(tasks)} if len(tasks) > 1 else {}
        out += [
            f"\n# the conversion: {len(tasks)} task(s)",
            _make_sbatch_string(command=command, folder=folder, **params, **array),
        ]
    merge = {**params, "job_name": f"{params['job_name']}-merge"}
    if tasks:
        merge["dependency"] = "afterany:CONVERSION_JOB_ID"
    out += ["\n# the merge and verification", _make_sbatch_string(command=command, folder=folder, **merge)]
    return "\n".join(out)


def submit_slurm(
    tasks: Sequence[ConvertTask],
    merge: MergeJob,
    cluster: ClusterConfig,
    params: dict[str, Any],
    folder: Path,
) -> tuple[list[submitit.Job], submitit.Job]:
    """The array of conversion tasks, then the merge job after it (afterany)."""
    executor = submitit.SlurmExecutor(
        folder=folder, max_num_timeout=cluster.max_requeues, python=cluster.python
    )
    executor.update_parameters(**params)
    with submission_env():
        jobs = executor.submit_array(list(tasks)) if tasks else []
        if jobs:
            executor.update_parameters(dependency=f"afterany:{jobs[0].job_id.split('_')[0]}")
        executor.update_parameters(job_name=f"{params['job_name']}-merge")
        merged = executor.submit(merge)
    return jobs, merged


def run_local(
    tasks: Sequence[ConvertTask],
    merge: MergeJob,
    folder: Path,
    timeout_min: float = DEFAULT_LOCAL_TIMEOUT_MIN,
) -> int:
    """Every task as a local submitit job at once; then the merge here. 0 when all went well."""
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=timeout_min)
    with submission_env():
        jobs = [executor.submit(t) for t in tasks]
    for task, job in zip(tasks, jobs):
        print(f"job {job.job_id}: {task.name}  (log {job.paths.stdout})", flush=True)
    failed = []
    try:
        for task, job in zip(tasks, jobs):
            try:
                job.result()
            except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
                failed.append(f"{task.name} failed ({job.paths.stderr}): {_last_line(str(e))}")
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if failed:
        for line in failed:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        print(f"{PROG}: rerun the same command to complete what is missing", file=sys.stderr)
        return 1
    try:
        merge()
    except (ConvertError, WriterError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _last_line(message: str) -> str:
    """The exception line of a submitit failure (its traceback sits between dashed rules)."""
    lines = [line.strip() for line in message.splitlines() if line.strip() and set(line.strip()) != {"-"}]
    return lines[-1] if lines else "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.src.is_dir():
        print(f"{PROG}: error: --src {args.src} is not a folder", file=sys.stderr)
        return 2
    cluster = None
    try:
        if args.cluster is not None:
            cluster = load_cluster(args.cluster)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    workers = args.workers_per_task
    if workers is None:
        workers = cluster.cpus_per_task if cluster else max(1, (os.cpu_count() or 1) // args.tasks)
    options = ConvertOptions(
        args.sample_rate,
        args.samples_per_shard,
        args.max_shard_bytes,
        args.max_seconds,
        args.max_caption_chars,
    )
    out = args.out.resolve()
    plans: list[SplitPlan] = []
    errors: list[str] = []
    try:
        if args.audio_dir is not None:
            args.audio_dir = args.audio_dir.resolve()
        source = SOURCES[args.dataset].from_args(args.src.resolve(), args)
        splits = [args.split] if args.split else list(source.splits)
        for split in splits:
            try:
                plans.append(plan_split(source, split, out, options, args.tasks))
            except SourceError as e:
                if args.split:
                    raise
                errors.append(f"{args.dataset}/{split}: {e}")
    except (SourceError, ConvertError, WriterError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if errors and not plans:
        print(f"{PROG}: error: {errors[0]}", file=sys.stderr)
        return 2
    for line in errors:
        print(f"{PROG}: warning: {line} (not converted)", file=sys.stderr)
    folder = out / args.dataset / "submitit"
    tasks = [ConvertTask(source, p.split, out, options, part, workers) for p in plans for part in p.todo]
    # a split whose missing tasks all run now (an earlier submission) is left to that submission's merge job
    pending = [p for p in plans if not p.complete and (p.todo or not p.running)]
    merge = MergeJob(source, [p.split for p in pending], out, options, verify_workers=workers)
    params: dict[str, Any] = {}
    if cluster is not None:
        try:
            params = sbatch_parameters(
                task_cluster(cluster, workers, args.partition), f"convert-{args.dataset}", 1, 0
            )
        except ConfigError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
    if args.dry_run:
        if cluster is None:
            print(describe_plan(plans))
        else:
            print(dry_run_text(plans, tasks, params, folder, cluster.python))
        return 0
    print(describe_plan(plans), flush=True)
    for plan in plans:
        if plan.complete:  # a merge stopped between writing manifest.json and removing the bookkeeping
            remove_part_files(plan.out_dir)
    if not pending:
        return 1 if errors else 0
    for plan in plans:
        if not plan.complete and not plan.recorded:
            write_plan(plan.out_dir, plan.record)
    if cluster is None:
        code = run_local(tasks, merge, folder)
        return code or (1 if errors else 0)
    captured = io.StringIO()  # submitit echoes sbatch's stderr on failure; we report it as one line
    try:
        with contextlib.redirect_stderr(captured):
            jobs, merged = submit_slurm(tasks, merge, cluster, params, folder)
    except (RuntimeError, OSError) as e:
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        print(f"{PROG}: error: submission failed: {lines[0]}", file=sys.stderr)
        return 1
    sys.stderr.write(captured.getvalue())
    if jobs:
        first = jobs[0].job_id.split("_")[0]
        print(f"conversion job: {first} ({len(jobs)} task{'s' if len(jobs) > 1 else ''})")
        for task, job in zip(tasks, jobs):
            print(f"  {job.job_id}: {task.name}")
    print(
        f"merge job:      {merged.job_id} (merges and verifies {', '.join(merge.splits)} once the tasks end)"
    )
    print(f"logs:           {folder}/")
    print("after any failure, rerun this command: it submits only what is missing")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
