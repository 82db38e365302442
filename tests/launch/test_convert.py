"""`python -m launch.convert` without SLURM: --local runs, determinism, reruns, the time limit, bad input, --dry-run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import submitit

from launch.convert import main
from launch.convert_jobs import ConvertTask
from shards.convert import convert
from shards.mixing import MixedStream
from shards.parts import ConvertOptions, plan_split
from shards.sources.clotho import Clotho
from shards.splitdir import DirLock, Part, read_part_manifest, write_plan
from tests.launch.convert_data import (
    OPTIONS,
    RATE,
    clotho_files,
    content,
    make_raw,
    one_process,
    split_files,
    write_long_wav,
)
from tools.verify import main as verify
from trainer.config import DataConfig, SourceConfig

REPO = Path(__file__).resolve().parents[2]
LOCAL = str(REPO / "configs/clusters/local.yaml")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Synthetic Clotho (21/5/4 clips, one development clip without audio) and TACOS (30 clips) layouts."""
    root = make_raw(tmp_path_factory.mktemp("convert-raw"))
    clotho_files(root, "development")[5].unlink()
    return root


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory) -> Path:
    """One-process tools.convert of every Clotho and TACOS split: OUT/clotho/..., OUT/tacos/..."""
    out = tmp_path_factory.mktemp("convert-reference")
    one_process(raw, out, "clotho")
    one_process(raw, out, "tacos", "--test-size", "4")
    return out


def local(cli, raw: Path, out: Path, dataset: str, tasks: int, *flags: str):
    src = raw / dataset
    args = [dataset, "--src", str(src), "--out", str(out), "--local", "--tasks", str(tasks), *OPTIONS, *flags]
    return cli("launch.convert", *args, "--workers-per-task", "1", timeout=600)


def test_local_tasks_equal_one_process_and_readers_take_the_split(cli, raw, reference, tmp_path):
    """TACOS (captions and regions) in 2 tasks: each split equals tools.convert's; verify and the stream read it."""
    result = local(cli, raw, tmp_path, "tacos", 2, "--test-size", "4")
    assert result.returncode == 0, result.stderr
    for split in ("train", "test"):
        assert re.search(
            rf"^tacos/{split}: \d+ entries, 2 tasks of [\d-]+ entries; tasks to run: 0-1$",
            result.stdout,
            re.M,
        )
        samples = content(reference / "tacos" / split)["manifest"]["num_samples"]
        assert f"[merge] tacos/{split}: {samples} samples" in result.stdout
    for split in ("train", "test"):
        split_dir = tmp_path / "tacos" / split
        assert content(split_dir) == content(reference / "tacos" / split)
        names = sorted(p.name for p in split_dir.iterdir() if p.name != "manifest.json")
        assert {n[: -len("-000000.tar")] for n in names} == {f"tacos-{split}-0000", f"tacos-{split}-0001"}
        assert (split_dir / "manifest.json").is_file() and all(n.endswith(".tar") for n in names)
    assert (
        verify([str(tmp_path / "tacos" / "train"), str(tmp_path / "tacos" / "test"), "--workers", "2"]) == 0
    )
    # the training stream reads the merged split through `urls: DIR`
    train = str(tmp_path / "tacos" / "train")
    cfg = DataConfig(
        sample_rate=RATE,
        clip_seconds=1.0,
        batch_size=4,
        num_workers=0,
        weak=[SourceConfig("tacos_weak", train, 1.0)],
        strong=[SourceConfig("tacos_strong", train, 1.0)],
        strong_every=2,
        shuffle_buffer=4,
    )
    it = iter(MixedStream(cfg, seed=0))
    batches = [next(it) for _ in range(4)]
    it.close()
    assert [b["kind"] for b in batches] == ["weak", "strong", "weak", "strong"]
    assert all(k.startswith("tacos-") for b in batches for k in b["keys"])
    assert all(len(b["region_text"]) > 0 for b in batches if b["kind"] == "strong")


def test_same_tasks_same_bytes_and_content_independent_of_tasks(cli, raw, reference, tmp_path):
    """Clotho in 3 tasks twice: the same bytes; and the content of the one-process conversion (skips included)."""
    for out in ("a", "b"):
        result = local(cli, raw, tmp_path / out, "clotho", 3)
        assert result.returncode == 0, result.stderr
    for split in ("development", "validation", "evaluation"):
        a, b = tmp_path / "a" / "clotho" / split, tmp_path / "b" / "clotho" / split
        assert split_files(a) == split_files(b)
        assert content(a) == content(reference / "clotho" / split)
    dev = content(tmp_path / "a" / "clotho" / "development")["manifest"]
    assert [s["reason"].split(":")[0] for s in dev["skipped"]] == ["missing audio"]
    evaluation = content(tmp_path / "a" / "clotho" / "evaluation")["manifest"]
    assert evaluation.get("relevance"), "the merge adds the source's manifest fields (DCASE judgements)"


def test_rerun_completes_what_is_missing_and_keeps_what_is_finished(cli, raw, reference, tmp_path):
    """Tasks 0 and 2 of 3 finished, task 1 half done (journal, one shard): the command finishes only task 1."""
    source, options = Clotho(raw / "clotho"), ConvertOptions(sample_rate=RATE, samples_per_shard=2)
    plan = plan_split(source, "development", tmp_path, options, 3)
    write_plan(plan.out_dir, plan.record)
    for part in (plan.parts[0], plan.parts[2]):
        convert(source, "development", tmp_path, **options.kwargs(), part=part)

    # Task 1 interrupted (Ctrl-C) once its first shard is finished: its journal vouches for that shard.
    def interrupt(entries: int, samples: int, seconds: float) -> None:
        if samples == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(
            source, "development", tmp_path, **options.kwargs(), part=plan.parts[1], on_progress=interrupt
        )
    split_dir = tmp_path / "clotho" / "development"
    before = {n: d for n, d in split_files(split_dir).items() if n.endswith(".tar")}
    assert read_part_manifest(split_dir, 1) is None and "clotho-development-0001-000000.tar" in before
    result = local(cli, raw, tmp_path, "clotho", 3, "--split", "development")
    assert result.returncode == 0, result.stderr
    assert "tasks to run: 1\n" in result.stdout and result.stdout.count("job ") == 1
    assert (
        "resumed after 1 shards" in next((tmp_path / "clotho" / "submitit").glob("*_0_log.out")).read_text()
    )
    after = split_files(split_dir)
    assert {n: after[n] for n in before} == before
    assert content(split_dir) == content(reference / "clotho" / "development")
    again = local(cli, raw, tmp_path, "clotho", 3, "--split", "development")
    assert again.returncode == 0 and "already complete" in again.stdout and "job " not in again.stdout


def test_time_limit_checkpoints_requeues_and_resumes(raw, tmp_path):
    """At the time-limit signal submitit calls checkpoint() and requeues the task; the next run resumes."""
    source, options = Clotho(raw / "clotho"), ConvertOptions(sample_rate=RATE, samples_per_shard=2)
    part = Part(1, 3, 21)  # entries 7..13: a shard of 7 and 8, then entry 9
    task = ConvertTask(source, "development", tmp_path, options, part, workers=1)
    again = task.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function == ConvertTask(source, "development", tmp_path, options, part, 1, restarts=1)
    files = clotho_files(raw, "development")
    kept, long_file = files[9].read_bytes(), tmp_path / "long.wav"
    write_long_wav(long_file)
    os.replace(long_file, files[9])
    journal = tmp_path / "clotho" / "development" / ".progress-0001.jsonl"
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit", max_num_timeout=3)
    # 24 s per run, the time-limit signal 16 s before the end: ~8 s in, the task is deep in the long file.
    executor.update_parameters(timeout_min=0.4, signal_delay_s=16)
    try:
        job = executor.submit(task)
        deadline = time.monotonic() + 120
        while not (journal.is_file() and len(journal.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline, "the first shard of task 1 was never written"
            time.sleep(0.2)
        # The running task holds the long file open; the next run opens the normal one put in its place.
        restored = tmp_path / "restored.wav"
        restored.write_bytes(kept)
        os.replace(restored, files[9])
        result = job.result()
    finally:
        files[9].write_bytes(kept)
    assert result["status"] == "resumed" and result["resumed_shards"] == 1 and result["num_samples"] == 7
    log = Path(job.paths.stdout).read_text()
    assert "run 1" in log and "run 2" in log
    assert "Caught signal SIGUSR2" in Path(job.paths.stderr).read_text()
    assert read_part_manifest(tmp_path / "clotho" / "development", 1)["num_samples"] == 7


def test_dry_run_prints_plan_and_scripts_and_writes_nothing(raw, tmp_path, capsys):
    args = ["clotho", "--src", str(raw / "clotho"), "--out", str(tmp_path / "out"), *OPTIONS]
    assert main([*args, "--cluster", LOCAL, "--tasks", "3", "--workers-per-task", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "clotho/development: 21 entries, 3 tasks of 7 entries; tasks to run: 0-2" in out
    assert "#SBATCH --array=0-8%9" in out  # 3 splits x 3 tasks
    assert "#SBATCH --cpus-per-task=2" in out and "#SBATCH --ntasks-per-node=1" in out
    assert "#SBATCH --dependency=afterany:CONVERSION_JOB_ID" in out
    assert "#SBATCH --requeue" in out and "#SBATCH --signal=USR2@60" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "one of the arguments --cluster --local is required"),
        (["--local", "--cluster", LOCAL], "not allowed with argument"),
        (["--local", "--tasks", "0"], "--tasks: expected an integer >= 1, got 0"),
        (["--cluster", "no/such.yaml"], "cluster file not found: no/such.yaml"),
    ],
)
def test_bad_arguments_give_one_clear_line(raw, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        code = main(["clotho", "--src", str(raw / "clotho"), "--out", str(tmp_path), *extra])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_other_task_count_on_a_started_split_is_refused(raw, tmp_path, capsys):
    source, options = Clotho(raw / "clotho"), ConvertOptions(sample_rate=RATE, samples_per_shard=2)
    plan = plan_split(source, "validation", tmp_path, options, 3)
    write_plan(plan.out_dir, plan.record)
    args = ["clotho", "--src", str(raw / "clotho"), "--out", str(tmp_path), "--split", "validation", *OPTIONS]
    assert main([*args, "--local", "--tasks", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is being converted with other options" in err and "tasks: was 3, now 2" in err
    assert len(err.splitlines()) == 1
    # and tools.convert refuses to write a split that is being converted in tasks
    from tools.convert import main as tools_convert

    assert tools_convert(["clotho", *args[1:]]) == 2
    assert "is being converted in tasks" in capsys.readouterr().err


def test_a_task_running_now_is_not_submitted_again(raw, tmp_path, capsys):
    """Rerun while task 1 of an earlier submission still runs (holds its lock): it is named, not duplicated."""
    source, options = Clotho(raw / "clotho"), ConvertOptions(sample_rate=RATE, samples_per_shard=2)
    plan = plan_split(source, "validation", tmp_path, options, 2)
    write_plan(plan.out_dir, plan.record)
    convert(source, "validation", tmp_path, **options.kwargs(), part=plan.parts[0])
    lock = DirLock(plan.out_dir / ".lock-0001", "task 1").acquire()
    try:
        args = [
            "clotho",
            "--src",
            str(raw / "clotho"),
            "--out",
            str(tmp_path),
            "--split",
            "validation",
            *OPTIONS,
        ]
        assert main([*args, "--local", "--tasks", "2"]) == 0
        out = capsys.readouterr().out
        assert f"nothing to submit; running now: 1 (pid {os.getpid()} on " in out
        assert "(log " not in out and not (plan.out_dir / "manifest.json").exists()
    finally:
        lock.release()
    assert main([*args, "--local", "--tasks", "2"]) == 0
    assert "tasks to run: 1\n" in capsys.readouterr().out
    assert content(plan.out_dir)["manifest"]["num_samples"] == 5
