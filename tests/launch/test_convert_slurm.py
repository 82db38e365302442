"""launch.convert against a real SLURM cluster (skipped with the reason when `sinfo` gets no answer).

A 3-task array over Clotho's development split (21 clips, one without audio). Two clips are swapped for a
36-hour silent WAV so that tasks 1 and 2 are reliably busy in the middle of their range when the test acts:
task 1 is requeued (`scontrol requeue`, what preemption does) and resumes from its journal in the same
submission; task 2 is cancelled (`scancel JOBID_2`), the merge job then fails naming it, and rerunning the
command submits task 2 alone, which resumes, and a merge that succeeds. The long files get their normal audio
back before the tasks continue, so the result must equal a one-process `tools.convert` of the same files.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from shards.shardlist import expand_urls
from tests.launch.convert_data import (
    OPTIONS,
    clotho_files,
    content,
    make_raw,
    one_process,
    split_files,
    write_long_wav,
)
from tools.verify import main as verify

REPO = Path(__file__).resolve().parents[2]
LOCAL = str(REPO / "configs/clusters/local.yaml")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def journaled_shards(journal: Path) -> int:
    """Shards a task's journal vouches for (its first line is the header)."""
    try:
        return max(0, len(journal.read_text(encoding="utf-8").splitlines()) - 1)
    except FileNotFoundError:
        return 0


def job_ids(stdout: str) -> tuple[str, str]:
    """(conversion job id, merge job id) from launch.convert's output."""
    conversion = re.search(r"^conversion job: (\d+)", stdout, re.MULTILINE)
    merge = re.search(r"^merge job:\s+(\d+)", stdout, re.MULTILINE)
    assert conversion and merge, stdout
    return conversion.group(1), merge.group(1)


def test_array_task_requeued_and_task_cancelled_then_rerun_equals_one_process(slurm, cli, tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    files = clotho_files(raw, "development")  # 21 entries: tasks [0, 7), [7, 14), [14, 21)
    files[3].unlink()  # a skipped entry in task 0
    long_ones = {1: files[10], 2: files[17]}  # tasks 1 and 2 write shards of 2 samples, then meet these
    originals = {task: path.read_bytes() for task, path in long_ones.items()}
    for path in long_ones.values():
        write_long_wav(path)
    split_dir = out / "clotho" / "development"
    command = [
        "launch.convert",
        "clotho",
        "--src",
        str(raw / "clotho"),
        "--out",
        str(out),
        "--split",
        "development",
        "--cluster",
        LOCAL,
        "--tasks",
        "3",
        *OPTIONS,
    ]
    first = cli(*command, env=slurm.env())
    assert first.returncode == 0, first.stderr
    assert "clotho/development: 21 entries, 3 tasks of 7 entries; tasks to run: 0-2" in first.stdout
    array, merge = job_ids(first.stdout)
    logs = out / "clotho" / "submitit"

    # Task 1: preempted. SIGTERM stops it after its finished shards; SLURM requeues it; it resumes.
    wait_for(lambda: journaled_shards(split_dir / ".progress-0001.jsonl") >= 1, 300, "a shard of task 1")
    assert slurm.job(f"{array}_1")["JobState"] == "RUNNING"
    slurm.run("scontrol", "requeue", f"{array}_1")
    assert slurm.wait(f"{array}_1", 120, until={"PENDING"}) == "PENDING"
    long_ones[1].write_bytes(originals[1])

    # Task 2: cancelled for good; the merge must then fail and name it.
    wait_for(lambda: journaled_shards(split_dir / ".progress-0002.jsonl") >= 1, 300, "a shard of task 2")
    slurm.run("scancel", f"{array}_2")
    assert slurm.wait(f"{array}_2", 120) == "CANCELLED"
    long_ones[2].write_bytes(originals[2])
    assert slurm.wait(f"{array}_1", 300) == "COMPLETED"
    assert slurm.wait(f"{array}_0", 300) == "COMPLETED"
    assert slurm.wait(merge, 300) == "FAILED"
    assert "task(s) 2 of 3 have not finished" in (logs / f"{merge}_0_log.err").read_text()
    task1 = (logs / f"{array}_1_0_log.out").read_text()
    assert "stopped by SIGTERM" in task1 and "run 2" in task1
    assert re.search(
        r"task 1/3: resumed: 7 samples in 4 shards, 0 skipped, .*, resumed after 1 shards", task1
    )
    assert not (split_dir / "manifest.json").exists()

    # The same command again: only task 2, which resumes, then the merge.
    finished = {name: data for name, data in split_files(split_dir).items() if "-0002-" not in name}
    again = cli(*command, env=slurm.env())
    assert again.returncode == 0, again.stderr
    assert "tasks to run: 2\n" in again.stdout and "(1 task)" in again.stdout
    rerun, merge = job_ids(again.stdout)
    assert slurm.wait(rerun, 300) == "COMPLETED"
    assert slurm.wait(merge, 300) == "COMPLETED", (logs / f"{merge}_0_log.err").read_text()[-2000:]
    task2 = (logs / f"{rerun}_0_log.out").read_text()
    assert re.search(r"task 2/3: resumed: 7 samples in 4 shards, .*, resumed after 1 shards", task2)
    assert "[merge] clotho/development: 20 samples" in (logs / f"{merge}_0_log.out").read_text()

    # Nothing finished was touched; the split is that of one process, up to shard boundaries.
    after = split_files(split_dir)
    assert {name: after[name] for name in finished if name.endswith(".tar")} == {
        name: data for name, data in finished.items() if name.endswith(".tar")
    }
    reference = one_process(raw, tmp_path / "ref", "clotho", "--split", "development")
    assert content(split_dir) == content(reference / "development")
    assert [s["source_id"] for s in content(split_dir)["manifest"]["skipped"]] == [files[3].name]
    assert verify([str(split_dir)]) == 0
    assert sorted(p.name for p in split_dir.iterdir() if not p.name.endswith(".tar")) == ["manifest.json"]
    shards = expand_urls(str(split_dir))
    assert sum(s.num_samples for s in shards) == 20
    assert [Path(s.url).name for s in shards] == sorted(p.name for p in split_dir.glob("*.tar"))

    # A third run has nothing to do.
    done = cli(*command, env=slurm.env())
    assert done.returncode == 0 and "already complete" in done.stdout and "conversion job" not in done.stdout


def test_one_task_on_slurm_equals_local(slurm, cli, tmp_path):
    """`--tasks 1` through sbatch and through submitit's local executor write the same bytes."""
    raw = make_raw(tmp_path / "raw", clips=12)
    outs = {}
    for where in ("slurm", "local"):
        out = tmp_path / where
        target = ["--cluster", LOCAL] if where == "slurm" else ["--local"]
        args = ["clotho", "--src", str(raw / "clotho"), "--out", str(out), "--split", "validation", *OPTIONS]
        result = cli("launch.convert", *args, *target, "--tasks", "1", env=slurm.env())
        assert result.returncode == 0, result.stderr
        if where == "slurm":
            _, merge = job_ids(result.stdout)
            assert slurm.wait(merge, 300) == "COMPLETED"
        outs[where] = split_files(out / "clotho" / "validation")
    assert outs["slurm"] == outs["local"]
    assert [n for n in outs["slurm"] if n.endswith(".tar")] == ["clotho-validation-0000-000000.tar"]


@pytest.fixture(autouse=True)
def _no_leftover_jobs(slurm):
    """Cancel what a test that failed midway left queued, so the next test gets the node."""
    yield
    for name in ("convert-clotho", "convert-clotho-merge"):
        slurm.run("scancel", f"--name={name}", check=False)
