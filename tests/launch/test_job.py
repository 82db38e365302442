"""TrainJob in this process: entry loading, resume on restart, exit codes, and real signal forwarding."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import submitit

from launch import job as jobmod
from launch.job import EXIT_PREEMPTED, TimeLimitForwarder, TrainJob, load_entry


@pytest.fixture(autouse=True)
def restore_signals(monkeypatch):
    """Tests install real handlers; put the previous ones back, and run as a plain (unscheduled) process."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")) or key in (
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
        ):
            monkeypatch.delenv(key)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def probe_job(out, steps=3, step_seconds=0.0, restarts=0) -> TrainJob:
    argv = ["--out", str(out), "--steps", str(steps), "--step-seconds", str(step_seconds)]
    return TrainJob(argv=argv, entry=jobmod.PROBE_ENTRY, resume_argv=["--resume"], restarts=restarts)


def runs(out) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


def test_exit_code_matches_the_trainer():
    trainer_loop = pytest.importorskip("trainer.loop")
    assert trainer_loop.EXIT_PREEMPTED == EXIT_PREEMPTED == 75


def test_load_entry():
    assert load_entry("launch.probe:main").__name__ == "main"
    with pytest.raises(ValueError, match="expected module:function"):
        load_entry("launch.probe")
    with pytest.raises(ValueError, match=r"module launch\.probe has no 'nope'"):
        load_entry("launch.probe:nope")
    with pytest.raises(ModuleNotFoundError):
        load_entry("launch.nope:main")


def test_job_runs_the_entry_and_returns_0(tmp_path):
    assert probe_job(tmp_path)() == 0
    (run,) = runs(tmp_path)
    assert (run["start_step"], run["end_step"], run["world_size"], run["exit"]) == (0, 3, 1, 0)


def test_failing_entry_raises_naming_the_code(tmp_path, trainer_ready):
    with pytest.raises(RuntimeError, match=r"trainer.__main__:main exited with code 2 on rank 0"):
        TrainJob(argv=[str(tmp_path / "missing.yaml")])()


@pytest.mark.parametrize(
    ("restarts", "slurm_restart_count", "start"),
    [(0, None, 0), (0, "1", 2), (1, None, 2)],
    ids=["first-run", "requeued-by-slurm", "requeued-by-checkpoint"],
)
def test_restart_appends_resume_argv(tmp_path, monkeypatch, restarts, slurm_restart_count, start):
    """A first run starts from scratch; a requeued run continues from the saved step."""
    if slurm_restart_count is not None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", slurm_restart_count)
    (tmp_path / "state.json").write_text('{"step": 2}')
    assert probe_job(tmp_path, steps=4, restarts=restarts)() == 0
    (run,) = runs(tmp_path)
    assert (run["start_step"], run["end_step"]) == (start, 4)


def test_checkpoint_resubmits_the_same_job_with_one_more_restart(tmp_path):
    job = probe_job(tmp_path, restarts=2)
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    path = tmp_path / "submitted.pkl"
    delayed.dump(path)
    again = submitit.helpers.DelayedSubmission.load(path).function
    assert again == TrainJob(job.argv, job.entry, job.resume_argv, restarts=3)


def send_after_first_step(sig: signal.Signals, out) -> threading.Thread:
    """Send `sig` to this process once the probe has written its first step (not after a guessed delay: a loaded
    machine may take longer than any delay to start the entry, whose handlers must be in place first)."""

    def wait_then_kill() -> None:
        while not (out / "progress.json").exists():
            time.sleep(0.01)
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=wait_then_kill, daemon=True)
    thread.start()
    return thread


def test_scheduler_stop_exits_75_without_requeue(tmp_path):
    """SIGTERM (preemption, scontrol requeue, scancel): the entry saves and stops; the task exits 75, no requeue."""
    calls = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # submitit's handler slot
    send_after_first_step(signal.SIGTERM, tmp_path)
    with pytest.raises(SystemExit) as info:
        probe_job(tmp_path, steps=2000, step_seconds=0.02)()
    assert info.value.code == EXIT_PREEMPTED
    assert calls == []
    (run,) = runs(tmp_path)
    assert run["exit"] == EXIT_PREEMPTED and 0 < run["end_step"] < 2000


def test_time_limit_signal_is_forwarded_and_requeues(tmp_path):
    """SIGUSR2 (submitit's time-limit signal) reaches the entry as SIGUSR1; then submitit's handler requeues."""
    calls = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    send_after_first_step(signal.SIGUSR2, tmp_path)
    with pytest.raises(SystemExit) as info:
        probe_job(tmp_path, steps=2000, step_seconds=0.02)()
    assert info.value.code == EXIT_PREEMPTED
    assert calls == [signal.SIGUSR2]  # submitit's checkpoint_and_try_requeue runs once, after the save
    (run,) = runs(tmp_path)
    assert run["exit"] == EXIT_PREEMPTED and 0 < run["end_step"] < 2000


def test_forwarder_delivers_when_the_trainer_starts_listening_later():
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    forwarder = TimeLimitForwarder.install()
    os.kill(os.getpid(), signal.SIGUSR2)  # arrives during "start-up": nobody listens to SIGUSR1 yet
    time.sleep(0.3)
    assert forwarder.fired
    got = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.set())
    deadline = time.monotonic() + 5
    while not got.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)  # Python runs signal handlers in the main thread between bytecodes
    assert got.is_set()


def test_time_limit_signal_must_not_be_a_trainer_signal(monkeypatch):
    monkeypatch.setattr(submitit.JobEnvironment, "USR_SIG", "USR1")
    with pytest.raises(
        ValueError, match="SUBMITIT_PREEMPT_SIGNAL=USR1: the trainer uses SIGTERM and SIGUSR1"
    ):
        jobmod.time_limit_signal()
    monkeypatch.setattr(submitit.JobEnvironment, "USR_SIG", "NOPE")
    with pytest.raises(ValueError, match="'NOPE' is not a signal name"):
        jobmod.time_limit_signal()
