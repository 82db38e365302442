"""`python -m launch.local`: the SLURM job through submitit's local executor — real processes, real logs."""

from __future__ import annotations

import itertools
from pathlib import Path

from launch.job import PROBE_ENTRY, TrainJob
from launch.local import submit_local, wait

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/debug.yaml")


def test_local_probe_two_tasks(cli, jsonl, tmp_path):
    result = cli("launch.local", DEBUG, "--probe", "--tasks", "2", f"run.output_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "job id:" in result.stdout and f"run dir:  {tmp_path}" in result.stdout
    (run,) = jsonl(tmp_path / "probe" / "runs.jsonl")
    assert (run["world_size"], run["end_step"], run["exit"]) == (2, 20, 0)
    logs = sorted((tmp_path / "submitit").glob("*_1_log.out"))
    assert len(logs) == 1 and "[launch] rank 1/2" in logs[0].read_text()


def test_local_time_limit_requeues_and_resumes(jsonl, tmp_path):
    """Near the time limit the job saves, submitit requeues it, and the next run continues from the save."""
    out = tmp_path / "probe"
    job = TrainJob(["--out", str(out), "--steps", "16"], entry=PROBE_ENTRY, resume_argv=["--resume"])
    # 24 s per run, time-limit signal 16 s before the end: each run is stopped ~8 s in.
    submitted = submit_local(job, tmp_path / "submitit", tasks=2, timeout_min=0.4, signal_delay_s=16)
    assert wait(submitted) == 0
    runs = jsonl(out / "runs.jsonl")
    assert len(runs) >= 2, runs
    assert runs[0]["start_step"] == 0 and runs[0]["exit"] == 75
    assert all(a["end_step"] == b["start_step"] for a, b in itertools.pairwise(runs))
    assert runs[-1]["end_step"] == 16 and runs[-1]["exit"] == 0
    log = (tmp_path / "submitit" / f"{submitted.job_id}_0_log.out").read_text()
    assert "checkpoint saved at the time limit; requeueing" in log
    assert "--resume" in log


def test_local_bad_input(cli, tmp_path):
    result = cli("launch.local", DEBUG, "--tasks", "0", timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "error: --tasks: must be >= 1, got 0"
    result = cli("launch.local", DEBUG, "train.max_steps=-1", timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "error: train.max_steps: must be > 0, got -1"


def test_local_trains_debug_config(cli, jsonl, tmp_path, tiny_shards, debug_args, trainer_ready):
    run_dir = tmp_path / "run"
    result = cli("launch.local", DEBUG, *debug_args(tiny_shards, run_dir), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [r["step"] for r in jsonl(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, 11))  # debug.yaml: max_steps 10, log_every 1
    assert (run_dir / "checkpoints" / "latest").exists()
    assert (run_dir / "config.yaml").is_file()
