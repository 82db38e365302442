"""Against a real SLURM cluster (skipped with the reason when `sinfo` gets no answer; see tools/slurm_local.sh).

configs/clusters/local.yaml describes the single-node test cluster: one node, 2 tasks per job.
Requeued jobs normally wait ~2 min (BeginTime) before they may start again; `slurm.wait` lets them start now.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import replace
from pathlib import Path

from submitit.core.utils import pickle_load

from launch.cluster import load_cluster
from launch.job import PROBE_ENTRY, TrainJob
from launch.slurm import submit

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/debug.yaml")
LOCAL = str(REPO / "configs/clusters/local.yaml")


def job_id_of(stdout: str) -> str:
    match = re.search(r"^job id:\s+(\d+)", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


def task_results(folder: Path, job_id: str, tasks: int) -> list:
    return [pickle_load(folder / f"{job_id}_{t}_result.pkl") for t in range(tasks)]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def last_step(path: Path, key: str = "step") -> int:
    """`key` of the last JSON line of `path` (0 while the file is missing or empty)."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return int(json.loads(lines[-1])[key]) if lines else 0
    except (FileNotFoundError, ValueError):
        return 0


def probe_job(out: Path, steps: int, step_seconds: float) -> TrainJob:
    argv = ["--out", str(out), "--steps", str(steps), "--step-seconds", str(step_seconds)]
    return TrainJob(argv=argv, entry=PROBE_ENTRY, resume_argv=["--resume"])


def test_probe_two_task_job_via_cli(slurm, cli, jsonl, tmp_path):
    result = cli(
        "launch.slurm", DEBUG, "--cluster", LOCAL, "--probe", f"run.output_dir={tmp_path}", env=slurm.env()
    )
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stdout)
    assert f"run dir:  {tmp_path}" in result.stdout
    assert slurm.wait(job_id, 300) == "COMPLETED"
    (run,) = jsonl(tmp_path / "probe" / "runs.jsonl")
    assert (run["world_size"], run["end_step"], run["exit"]) == (2, 20, 0)
    folder = tmp_path / "submitit"
    assert task_results(folder, job_id, 2) == [("success", 0), ("success", 0)]
    assert "[launch] rank 1/2" in (folder / f"{job_id}_1_log.out").read_text()
    # --dry-run prints exactly the script that was submitted.
    dry = cli(
        "launch.slurm", DEBUG, "--cluster", LOCAL, "--dry-run", f"run.output_dir={tmp_path}", env=slurm.env()
    )
    assert dry.stdout.rstrip("\n") == (folder / f"{job_id}_submission.sh").read_text().rstrip("\n")


def test_probe_scontrol_requeue_resumes(slurm, jsonl, tmp_path):
    """`scontrol requeue` (what preemption does): SIGTERM -> save -> exit 75 -> SLURM requeues -> resume."""
    out = tmp_path / "probe"
    job = submit(probe_job(out, 40, 0.5), load_cluster(LOCAL), tmp_path / "submitit", "requeue", nodes=1)
    wait_for(lambda: last_step(out / "progress.json") >= 3, 180, "the probe to pass step 3")
    assert slurm.job(job.job_id)["JobState"] == "RUNNING"
    slurm.run("scontrol", "requeue", job.job_id)
    assert slurm.wait(job.job_id, 300) == "COMPLETED"
    runs = jsonl(out / "runs.jsonl")
    assert [r["exit"] for r in runs] == [75, 0]
    assert runs[0]["start_step"] == 0 and 3 <= runs[0]["end_step"] < 40
    assert runs[1]["start_step"] == runs[0]["end_step"] and runs[1]["end_step"] == 40
    log = (tmp_path / "submitit" / f"{job.job_id}_0_log.out").read_text()
    assert "stopped by the scheduler after saving a checkpoint" in log
    assert "run 2: launch.probe:main" in log and "--resume" in log


def test_probe_time_limit_requeues_itself(slurm, jsonl, tmp_path):
    """At the time-limit signal the job saves, requeues itself through submitit's checkpoint(), and resumes."""
    out = tmp_path / "probe"
    # 1 minute per run, signal 55 s before the end: SLURM signals at its next time-limit sweep (~every 30 s).
    cluster = replace(load_cluster(LOCAL), time=1, signal_delay_s=55, max_requeues=20)
    job = submit(probe_job(out, 10, 3.0), cluster, tmp_path / "submitit", "timelimit", nodes=1)
    assert slurm.wait(job.job_id, 600) == "COMPLETED"
    runs = jsonl(out / "runs.jsonl")
    assert len(runs) >= 2, runs
    assert runs[0]["exit"] == 75 and runs[-1]["exit"] == 0 and runs[-1]["end_step"] == 10
    assert all(a["end_step"] == b["start_step"] for a, b in itertools.pairwise(runs))
    log = (tmp_path / "submitit" / f"{job.job_id}_0_log.out").read_text()
    assert "checkpoint saved at the time limit; requeueing" in log
    assert int(slurm.job(job.job_id)["Restarts"]) == len(runs) - 1


def test_submission_error_is_one_line(slurm, cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partition: no-such-partition\ntasks_per_node: 1\n")
    result = cli("launch.slurm", DEBUG, "--cluster", str(bad), f"run.output_dir={tmp_path}", env=slurm.env())
    assert result.returncode == 1
    assert result.stderr.startswith("error: submission failed:") and "partition" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- the trainer ---------------------------------------------------------------------------------------------------


def test_slurm_trains_debug_config_two_tasks(
    slurm, cli, jsonl, tmp_path, tiny_shards, debug_args, trainer_ready
):
    run_dir = tmp_path / "run"
    args = ["--cluster", LOCAL, *debug_args(tiny_shards, run_dir)]
    result = cli("launch.slurm", DEBUG, *args, env=slurm.env())
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stdout)
    state = slurm.wait(job_id, 900)
    folder = run_dir / "submitit"
    assert state == "COMPLETED", (folder / f"{job_id}_0_log.err").read_text()[-3000:]
    assert task_results(folder, job_id, 2) == [("success", 0), ("success", 0)]
    assert "[launch] rank 1/2" in (folder / f"{job_id}_1_log.out").read_text()
    records = jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    # data_seen sums over ranks: 10 steps x batch 8 x 2 processes
    assert sum(records[-1]["data_seen"].values()) == 10 * 8 * 2
    assert (run_dir / "checkpoints" / "latest").resolve().name == "step_10"


def test_slurm_requeue_resumes_debug_config(
    slurm, cli, jsonl, tmp_path, tiny_shards, debug_args, trainer_ready
):
    """Preempted with `scontrol requeue`, the 2-task job resumes from its checkpoint and ends at the same step.

    debug.yaml's save_every 5 / keep_last 2 stay: periodic saves after the resume prune its checkpoint.
    """
    run_dir, max_steps = tmp_path / "run", 40
    args = ["--cluster", LOCAL, *debug_args(tiny_shards, run_dir, f"train.max_steps={max_steps}")]
    result = cli("launch.slurm", DEBUG, *args, env=slurm.env())
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stdout)
    metrics = run_dir / "metrics.jsonl"
    folder = run_dir / "submitit"

    def trained_or_ended() -> bool:
        return last_step(metrics) >= 2 or slurm.ended(job_id)

    wait_for(trained_or_ended, 600, "two logged training steps")
    assert last_step(metrics) >= 2, (folder / f"{job_id}_0_log.err").read_text()[-3000:]
    slurm.run("scontrol", "requeue", job_id)
    assert slurm.wait(job_id, 300, until={"PENDING"}) == "PENDING"  # first run over, not yet released
    first_run = jsonl(metrics)
    stopped_at = first_run[-1]["step"]
    assert 2 <= stopped_at < max_steps, "the requeue must interrupt training"
    assert (run_dir / "checkpoints" / "latest").resolve().name == f"step_{stopped_at}"
    assert slurm.wait(job_id, 900) == "COMPLETED", (folder / f"{job_id}_0_log.err").read_text()[-3000:]
    records = jsonl(metrics)
    assert records[: len(first_run)] == first_run
    assert [r["step"] for r in records[len(first_run) :]] == list(range(stopped_at + 1, max_steps + 1))
    assert sum(records[-1]["data_seen"].values()) == max_steps * 8 * 2  # the data stream resumed too
    assert (run_dir / "checkpoints" / "latest").resolve().name == f"step_{max_steps}"
    log = (folder / f"{job_id}_0_log.out").read_text()
    assert "stopped by the scheduler after saving a checkpoint" in log
    assert "run 2: trainer.__main__:main" in log and "train.resume=auto" in log
