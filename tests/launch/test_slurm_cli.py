"""`python -m launch.slurm` without a cluster: --dry-run prints the sbatch script; bad input exits non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import slurm

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "configs/clusters/example.yaml")
LOCAL = str(REPO / "configs/clusters/local.yaml")
DEBUG = str(REPO / "configs/debug.yaml")


def dry_run(capsys, *args: str) -> str:
    assert slurm.main([*args, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_dry_run_prints_the_sbatch_script(capsys, tmp_path):
    run_dir = tmp_path / "run"
    script = dry_run(
        capsys, DEBUG, "--cluster", EXAMPLE, "--nodes", "4", f"run.output_dir={run_dir}", "run.name=big"
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for flag in (
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=12",
        "--mem=768G",
        "--partition=gpu",
        "--account=my-project",
        "--qos=normal",
        "--constraint=a100-80gb",
        "--time=2880",
        "--signal=USR2@300",
        "--job-name=big",
        "--exclusive",
        "--mail-type=END,FAIL",
        "--requeue",
        f"--output={run_dir}/submitit/%j_0_log.out",
        f"--error={run_dir}/submitit/%j_0_log.err",
    ):
        assert f"#SBATCH {flag}" in lines, flag
    setup = lines.index("# setup")
    command = lines.index("# command")
    assert lines[setup + 1 : setup + 4] == [
        "module load cuda/12.4",
        "source $HOME/sonotext/.venv/bin/activate",
        "export NCCL_DEBUG=WARN",
    ]
    srun = next(line for line in lines[command:] if line.startswith("srun "))
    assert f"--output {run_dir}/submitit/%j_%t_log.out" in srun
    assert "--cpus-per-task=12 --cpu-bind=none" in srun
    assert srun.endswith(f"python -u -m submitit.core._submit {run_dir}/submitit")
    assert not run_dir.exists(), "--dry-run must not create anything"


def test_dry_run_gpus_per_node_sets_one_task_per_gpu(capsys, tmp_path):
    out = dry_run(capsys, DEBUG, "--cluster", EXAMPLE, "--gpus-per-node", "2", f"run.output_dir={tmp_path}")
    assert "#SBATCH --gpus-per-node=2" in out and "#SBATCH --ntasks-per-node=2" in out
    assert "#SBATCH --nodes=1" in out


def test_dry_run_local_cluster_uses_this_interpreter(capsys, tmp_path):
    import shlex
    import sys

    out = dry_run(capsys, DEBUG, "--cluster", LOCAL, f"run.output_dir={tmp_path}")
    assert "#SBATCH --ntasks-per-node=2" in out and "--gpus-per-node" not in out
    assert f"{shlex.quote(sys.executable)} -u -m submitit.core._submit" in out
    assert "#SBATCH --partition=debug" in out and "#SBATCH --signal=USR2@60" in out


def test_overrides_may_come_before_options(capsys, tmp_path):
    out = dry_run(
        capsys, DEBUG, f"run.output_dir={tmp_path}", "--cluster", LOCAL, "run.name=mixed", "--nodes", "2"
    )
    assert "#SBATCH --job-name=mixed" in out and "#SBATCH --nodes=2" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([DEBUG, "--cluster", LOCAL, "optim.lr=fast"], "error: optim.lr: expected float, got str 'fast'"),
        ([DEBUG, "--cluster", LOCAL, "optim.lrr=1"], "error: unknown config key optim.lrr"),
        (["nope.yaml", "--cluster", LOCAL], "error: config file not found: nope.yaml"),
        ([DEBUG, "--cluster", "nope.yaml"], "error: cluster file not found: nope.yaml"),
        ([DEBUG, "--cluster", LOCAL, "--nodes", "0"], "error: --nodes: must be >= 1, got 0"),
        (
            [DEBUG, "--cluster", LOCAL, "--gpus-per-node", "-1"],
            "error: --gpus-per-node: must be >= 0, got -1",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    assert slurm.main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message or err.startswith(message), err
    assert len(err.strip().splitlines()) == 1


def test_help_works(cli):
    result = cli("launch.slurm", "--help", timeout=120)
    assert result.returncode == 0
    assert (
        "--cluster" in result.stdout and "--dry-run" in result.stdout and "--gpus-per-node" in result.stdout
    )


def test_make_job_trainer_and_probe(tmp_path):
    job = slurm.make_job(DEBUG, ["optim.lr=1e-4"], tmp_path)
    assert job.entry == "trainer.__main__:main"
    assert job.argv == [str(Path(DEBUG).resolve()), "optim.lr=1e-4"]
    assert job.resume_argv == ["train.resume=auto"] and job.restarts == 0
    probe = slurm.make_job(DEBUG, [], tmp_path, probe=True)
    assert probe.entry == "launch.probe:main" and probe.resume_argv == ["--resume"]
    assert probe.argv[:2] == ["--out", str(tmp_path / "probe")]


def test_refuses_a_time_limit_signal_the_trainer_uses(capsys, monkeypatch, tmp_path):
    import submitit

    monkeypatch.setattr(submitit.JobEnvironment, "USR_SIG", "TERM")
    assert slurm.main([DEBUG, "--cluster", LOCAL, f"run.output_dir={tmp_path}"]) == 2
    assert "SUBMITIT_PREEMPT_SIGNAL=TERM: the trainer uses SIGTERM and SIGUSR1" in capsys.readouterr().err
