"""The training program end to end, as users launch it: python -m trainer, torchrun, accelerate launch, DeepSpeed.

Every run is a real subprocess on real shards (tools.synthetic layouts through the real converters).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, train_overrides, wait_for_steps

DEBUG = str(ROOT / "configs" / "debug.yaml")


def run_trainer(
    overrides: list[str],
    nproc: int = 1,
    launcher: str = "python",
    timeout: int = 600,
    env: dict | None = None,
):
    if launcher == "python":
        cmd = [sys.executable, "-m", "trainer", DEBUG]
    elif launcher == "torchrun":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "trainer",
            DEBUG,
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(nproc),
        ]
        cmd += ["--num_machines", "1", "--main_process_port", "29517", "-m", "trainer", DEBUG]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(cmd + overrides, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def check(proc, code: int = 0) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run)}


def assert_same_losses(a: dict[int, float], b: dict[int, float], tol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        assert abs(a[step] - b[step]) <= tol * max(1.0, abs(a[step])), (step, a[step], b[step])


def straight_vs_resumed(tiny_shards, tmp_path, steps: int, **kw) -> tuple[Path, Path]:
    """`steps` in one run vs steps/2 + resume + steps/2; returns both run dirs."""
    nproc = kw.pop("nproc", 1)
    launcher = kw.pop("launcher", "python")
    half = steps // 2
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = {"train.save_every": half, **kw}
    check(
        run_trainer(
            train_overrides(tiny_shards, straight, **{"train.max_steps": steps, **extra}), nproc, launcher
        )
    )
    check(
        run_trainer(
            train_overrides(tiny_shards, resumed, **{"train.max_steps": half, **extra}), nproc, launcher
        )
    )
    second = run_trainer(
        train_overrides(tiny_shards, resumed, **{"train.max_steps": steps, **extra}), nproc, launcher
    )
    check(second)
    assert f"at step {half}" in second.stdout + second.stderr
    return straight, resumed


def test_exact_resume_single_process(tiny_shards, tmp_path):
    straight, resumed = straight_vs_resumed(tiny_shards, tmp_path, 6, **{"train.keep_last": 2})
    assert_same_losses(losses(straight), losses(resumed))
    kinds = [m["batch_kind"] for m in metrics(resumed)]
    assert kinds == ["weak", "strong"] * 3  # strong_every=2
    ckpts = resumed / "checkpoints"
    assert (ckpts / "latest").resolve().name == "step_6"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_3", "step_6"]
    state = json.loads((ckpts / "latest" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data_seen"] == {"clotho": 12, "tacos": 12}
    assert (ckpts / "latest" / "model" / "config.json").is_file()
    assert (resumed / "config.yaml").is_file()
    last = metrics(resumed)[-1]
    for key in (
        "loss",
        "lr",
        "logit_scale",
        "samples_per_s",
        "audio_seconds_per_s",
        "grad_norm",
        "data_seen",
    ):
        assert last[key] is not None, key


def test_exact_resume_two_processes_with_workers(tiny_shards, tmp_path):
    straight, resumed = straight_vs_resumed(
        tiny_shards, tmp_path, 6, nproc=2, launcher="torchrun", **{"data.num_workers": 1}
    )
    assert_same_losses(losses(straight), losses(resumed))
    state = json.loads((resumed / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and sum(state["data_seen"].values()) == 6 * 4 * 2


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_processes_and_resume(tiny_shards, tmp_path, stage):
    ds = f"configs/deepspeed/zero{stage}.json"
    straight, resumed = straight_vs_resumed(
        tiny_shards, tmp_path, 4, nproc=2, launcher="torchrun", **{"train.deepspeed": ds}
    )
    assert_same_losses(losses(straight), losses(resumed))
    # ZeRO gives the same losses as plain DDP on the same data and init.
    ddp = tmp_path / "ddp"
    check(run_trainer(train_overrides(tiny_shards, ddp, **{"train.max_steps": 4}), 2, "torchrun"))
    assert_same_losses(losses(straight), losses(ddp), tol=1e-4)
    ckpt = resumed / "checkpoints" / "latest"
    assert (ckpt / "accelerate" / "pytorch_model").is_dir()  # a real DeepSpeed checkpoint
    from trainer.model import AudioTextModel

    AudioTextModel.from_pretrained(ckpt / "model")  # consolidated weights load for evaluation


@pytest.mark.parametrize("stage", [2, 3])
def test_locked_towers_under_deepspeed_zero_two_processes(tiny_shards, tmp_path, stage):
    from safetensors.torch import load_file

    lock = {
        "model.audio.freeze": 1,
        "model.text.freeze": "true",
        "loss.learn_logit_scale": "false",
        "train.max_steps": 2,
        "train.save_every": 1,
        "train.keep_last": 0,
    }
    zero, ddp = tmp_path / "zero", tmp_path / "ddp"
    ds = {"train.deepspeed": f"configs/deepspeed/zero{stage}.json"}
    check(run_trainer(train_overrides(tiny_shards, zero, **lock, **ds), 2, "torchrun"))
    check(run_trainer(train_overrides(tiny_shards, ddp, **lock), 2, "torchrun"))
    assert_same_losses(losses(zero), losses(ddp), tol=1e-4)
    assert [m["logit_scale"] for m in metrics(zero)] == pytest.approx([1 / 0.07] * 2)
    first, second = (
        load_file(zero / "checkpoints" / f"step_{s}" / "model" / "model.safetensors") for s in (1, 2)
    )
    trains = ("audio_encoder.backend.blocks.1.", "audio_encoder.backend.norm.", "audio_proj.", "text_proj.")
    assert any(name.startswith(trains) for name in first)
    for name, value in first.items():
        assert torch.equal(value, second[name]) != name.startswith(trains), name


def test_every_parity_knob_on_resumes_exactly(tiny_shards, tmp_path):
    knobs = {
        "loss.duplicate_audio": "positive",
        "loss.learn_logit_scale": "false",
        "data.caption_transform": "lower_strip_punct_trim",
        "data.caption_sampling": "all",
        "data.mixup.prob": 0.5,
        "data.spec_augment": "{time_masks: 2, time_width: 0.2, freq_masks: 2, freq_width: 8}",
        "model.audio.freeze": 2,
        "model.text.freeze": 1,
    }
    straight, resumed = straight_vs_resumed(tiny_shards, tmp_path, 6, **knobs)
    assert_same_losses(losses(straight), losses(resumed))
    assert [m["logit_scale"] for m in metrics(resumed)] == pytest.approx([1 / 0.07] * 6)
    config = json.loads((resumed / "checkpoints" / "latest" / "model" / "config.json").read_text())
    assert config["caption_transform"] == "lower_strip_punct_trim"


def test_compile_gives_the_same_losses_and_plain_checkpoints(tiny_shards, tmp_path):
    from safetensors.torch import load_file

    # Dropout off: compiled code draws its own random numbers.
    plain = {
        "model.text.overrides": "{hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
        "train.save_every": 2,
    }
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    check(run_trainer(train_overrides(tiny_shards, eager, **plain, **{"train.max_steps": 3})))
    on = {**plain, "train.compile": "true"}
    check(run_trainer(train_overrides(tiny_shards, compiled, **on, **{"train.max_steps": 2})))
    proc = run_trainer(train_overrides(tiny_shards, compiled, **on, **{"train.max_steps": 3}))
    check(proc)
    assert "at step 2" in proc.stdout + proc.stderr
    assert_same_losses(losses(eager), losses(compiled), tol=1e-4)
    for run in (eager, compiled):
        for weights in ("model/model.safetensors", "accelerate/model.safetensors"):
            saved = load_file(run / "checkpoints" / "step_2" / weights)
            assert saved and not any("_orig_mod" in name for name in saved), weights
    names = [
        set(load_file(r / "checkpoints" / "latest" / "model" / "model.safetensors"))
        for r in (eager, compiled)
    ]
    assert names[0] == names[1]


def test_accelerate_launch_on_cpu_forms_one_gloo_group(tiny_shards, tmp_path):
    run = tmp_path / "acc"
    check(run_trainer(train_overrides(tiny_shards, run, **{"train.max_steps": 2}), 2, "accelerate"))
    state = json.loads((run / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and sum(state["data_seen"].values()) == 2 * 4 * 2


def _start(overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", DEBUG, *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_then_exits_for_requeue(tiny_shards, tmp_path, sig):
    run = tmp_path / "sig"
    overrides = train_overrides(tiny_shards, run, **{"train.max_steps": 500, "train.save_every": 0})
    proc = _start(overrides)
    wait_for_steps(run, proc, 3)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out[-3000:]
    stopped = json.loads((run / "checkpoints" / "latest" / "trainer_state.json").read_text())["step"]
    assert 3 <= stopped < 500
    final = stopped + 2
    check(run_trainer(train_overrides(tiny_shards, run, **{"train.max_steps": final, "train.save_every": 0})))
    assert [m["step"] for m in metrics(run)] == list(range(1, final + 1))


def test_sigkill_resumes_from_last_complete_checkpoint(tiny_shards, tmp_path):
    run = tmp_path / "kill"
    overrides = train_overrides(tiny_shards, run, **{"train.max_steps": 40, "train.save_every": 2})
    proc = _start(overrides)
    wait_for_steps(run, proc, 7)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    latest = (run / "checkpoints" / "latest").resolve()
    saved = json.loads((latest / "trainer_state.json").read_text())["step"]
    assert saved >= 6 and saved % 2 == 0
    resumed = run_trainer(
        train_overrides(tiny_shards, run, **{"train.max_steps": saved + 4, "train.save_every": 2})
    )
    check(resumed)
    assert f"at step {saved}" in resumed.stdout + resumed.stderr
    # metrics.jsonl was cut back to the checkpoint: every step exactly once
    assert [m["step"] for m in metrics(run)] == list(range(1, saved + 5))


def test_periodic_evaluation_writes_reports(tiny_shards, tmp_path):
    run = tmp_path / "eval"
    check(run_trainer(train_overrides(tiny_shards, run, **{"train.max_steps": 4, "train.eval_every": 2})))
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["step_2.json", "step_4.json"]
    report = json.loads((run / "eval" / "step_4.json").read_text())
    assert report["step"] == 4
    for key in ("clotho-evaluation/t2a/R@1", "clotho-evaluation/t2a/mAP@10", "tacos-test/frame_auroc"):
        assert 0.0 <= report[key] <= 1.0, key


def test_zero3_evaluation_with_uneven_batches_matches_ddp(tiny_shards, tmp_path):
    # 3 samples over 2 ranks at batch size 1: rank 0 has 1 batch, rank 1 has 2. Under ZeRO-3 every forward
    # gathers parameters from all ranks, so evaluation runs in lockstep (rank 0 forwards a filler while rank 1 works;
    # NCCL needs that, gloo happens to tolerate uneven forwards). Logging the partitioned logit scale gathers it.
    evals = {
        "train.max_steps": 2,
        "train.eval_every": 2,
        "eval.batch_size": 1,
        "eval.retrieval": f"[{{name: clotho-evaluation, urls: {tiny_shards}/clotho/evaluation, max_samples: 3}}]",
        "eval.temporal": f"[{{name: tacos-test, urls: {tiny_shards}/tacos/test, max_samples: 3}}]",
    }
    zero3, ddp = tmp_path / "zero3", tmp_path / "ddp"
    ds_config = json.loads((ROOT / "configs" / "deepspeed" / "zero3.json").read_text())
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even the tiny params
    (tmp_path / "zero3.json").write_text(json.dumps(ds_config))
    ds = {"train.deepspeed": str(tmp_path / "zero3.json")}
    check(run_trainer(train_overrides(tiny_shards, zero3, **evals, **ds), 2, "torchrun", timeout=300))
    check(run_trainer(train_overrides(tiny_shards, ddp, **evals), 2, "torchrun", timeout=300))
    a, b = (json.loads((run / "eval" / "step_2.json").read_text()) for run in (zero3, ddp))
    assert a["clotho-evaluation/num_clips"] == b["clotho-evaluation/num_clips"] == 3
    assert sorted(a) == sorted(b)
    for key, value in b.items():
        assert a[key] == pytest.approx(value, abs=1e-3), key


def test_user_errors_are_one_clear_line(tiny_shards, tmp_path):
    proc = run_trainer(train_overrides(tiny_shards, tmp_path / "x", **{"optim.lr": "fast"}))
    assert proc.returncode == 2 and "optim.lr" in proc.stderr
    proc = run_trainer(train_overrides(tiny_shards, tmp_path / "y", **{"train.mixed_precision": "fp16"}))
    assert proc.returncode != 0 and "fp16 needs a CUDA GPU" in proc.stderr
    proc = run_trainer(
        train_overrides(tiny_shards, tmp_path / "z", **{"train.resume": str(tmp_path / "nope")})
    )
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_single_process_deepspeed_bf16_then_init_from(tiny_shards, tmp_path):
    # bf16 under DeepSpeed casts the parameters (not the buffers) of the whole model: the front end must cope.
    ds = tmp_path / "ds"
    ds_args = {
        "train.max_steps": 2,
        "train.deepspeed": "configs/deepspeed/zero2.json",
        "train.mixed_precision": "bf16",
    }
    check(run_trainer(train_overrides(tiny_shards, ds, **ds_args)))
    assert all(math.isfinite(v) for v in losses(ds).values())
    fresh, init = tmp_path / "fresh", tmp_path / "init"
    check(run_trainer(train_overrides(tiny_shards, fresh, **{"train.max_steps": 1})))
    init_args = {"train.max_steps": 1, "train.init_from": str(ds / "checkpoints" / "latest")}
    check(run_trainer(train_overrides(tiny_shards, init, **init_args)))
    # Same data and seed: only the starting weights differ.
    assert losses(init)[1] != losses(fresh)[1]
    bad = train_overrides(tiny_shards, tmp_path / "bad", **{"train.init_from": str(tmp_path / "nothing")})
    proc = run_trainer(bad)
    assert proc.returncode == 2 and "train.init_from" in proc.stderr and "not a directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    bad = train_overrides(tiny_shards, tmp_path / "bad", **{"train.init_from": str(tmp_path / "empty")})
    proc = run_trainer(bad)
    assert proc.returncode == 2 and "holds no saved model" in proc.stderr


def test_resume_with_another_data_setup_restarts_the_stream(tiny_shards, tmp_path):
    run = tmp_path / "changed"
    check(run_trainer(train_overrides(tiny_shards, run, **{"train.max_steps": 2})))
    extra_source = f"[{{name: clotho, urls: {tiny_shards}/clotho/development}}, {{name: more, urls: {tiny_shards}/clotho/evaluation}}]"
    proc = run_trainer(train_overrides(tiny_shards, run, **{"train.max_steps": 3, "data.weak": extra_source}))
    check(proc)
    assert "data stream restarts" in proc.stdout + proc.stderr
    records = metrics(run)
    assert [m["step"] for m in records] == [1, 2, 3]
    # data_seen goes on counting over the restart (it used to start again from 0)
    assert records[1]["data_seen"] == {"clotho": 4, "tacos": 4}
    seen = records[2]["data_seen"]
    assert seen["tacos"] == 4 and seen["clotho"] + seen["more"] == 8 and seen["clotho"] >= 4
    assert records[2]["samples"]["read"] >= records[1]["samples"]["read"]


# ---------------------------------------------------------------------------------------------------------------------
# Reliability: non-finite values, damaged and interrupted checkpoints, corrupt shards, hostile config values
# ---------------------------------------------------------------------------------------------------------------------


def finite_weights(checkpoint: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    files = [checkpoint / "model" / "model.safetensors", checkpoint / "accelerate" / "model.safetensors"]
    files = [f for f in files if f.is_file()]  # under DeepSpeed, accelerate/ holds a DeepSpeed checkpoint
    return all(bool(torch.isfinite(t).all()) for f in files for t in load_file(f).values())


def test_nan_stops_with_one_line_and_keeps_the_last_finite_checkpoint(tiny_shards, tmp_path):
    """optim.lr=1e6 on configs/debug.yaml: the loss is NaN from step 2. It used to train on to the end (exit 0), log
    null, save NaN checkpoints and prune the finite ones."""
    run = tmp_path / "nan"
    extra = {"optim.lr": 1e6, "train.max_steps": 12, "train.save_every": 1, "train.keep_last": 1}
    proc = run_trainer(train_overrides(tiny_shards, run, **extra))
    check(proc, 1)
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "error: non-finite loss at step 2 (grad_norm nan) on a strong batch from tacos (4 samples)"
    )
    assert "train.nan_patience=0" in error and "the last checkpoint is step_1" in error
    records = metrics(run)
    assert [m["step"] for m in records] == [1, 2]
    assert (
        records[1]["loss"] == "NaN"
        and records[1]["loss_strong"] == "NaN"
        and records[1]["grad_norm"] == "NaN"
    )
    assert records[1]["skipped_steps"] == 1
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_1"]
    assert finite_weights(ckpts / "latest")


@pytest.mark.parametrize("launcher", ["python", "ddp", "zero2", "zero3"])
def test_non_finite_steps_are_skipped_up_to_the_patience(tiny_shards, tmp_path, launcher):
    """loss.strong_weight=1e39 makes every strong loss infinite and leaves weak ones finite: with nan_patience=1 each
    strong step is skipped (no update: the logit scale stays put) and the run finishes with finite weights, under
    DDP and DeepSpeed alike (its engine skips the step through its own overflow check)."""
    run = tmp_path / launcher
    extra = {"loss.strong_weight": 1e39, "train.nan_patience": 1, "train.max_steps": 4, "train.save_every": 0}
    if launcher.startswith("zero"):
        extra["train.deepspeed"] = f"configs/deepspeed/{launcher}.json"
    nproc = 1 if launcher == "python" else 2
    check(
        run_trainer(train_overrides(tiny_shards, run, **extra), nproc, "python" if nproc == 1 else "torchrun")
    )
    records = metrics(run)
    assert [m["loss"] == "Infinity" for m in records] == [False, True, False, True]  # strong_every=2
    assert records[1]["logit_scale"] == records[0]["logit_scale"]  # step 2 made no update
    assert records[3]["logit_scale"] == records[2]["logit_scale"]
    assert records[2]["logit_scale"] != records[1]["logit_scale"]  # step 3 did
    assert records[-1]["skipped_steps"] == 2
    state = json.loads((run / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["skipped_steps"] == 2
    assert finite_weights(run / "checkpoints" / "latest")
    if launcher == "zero2":  # patience 0: every rank stops at step 2, nothing saved
        stopped = tmp_path / "zero2-stop"
        proc = run_trainer(
            train_overrides(tiny_shards, stopped, **{**extra, "train.nan_patience": 0}), 2, "torchrun"
        )
        check(proc, 1)
        assert proc.stderr.count("error: non-finite loss at step 2") == 2  # one line per rank, the same
        assert not list((stopped / "checkpoints").glob("step_*"))


def test_signal_right_after_a_periodic_save_saves_once(tiny_shards, tmp_path):
    """A stop signal arriving right after the periodic save of step 3 used to save step 3 again, removing the
    checkpoint `latest` pointed at before renaming the new one."""
    run = tmp_path / "term"
    env_fault = {"SONOTEXT_CHECKPOINT_FAULT": "term:saved@3"}
    extra = {"train.max_steps": 50, "train.save_every": 3, "train.keep_last": 1}
    proc = run_trainer(train_overrides(tiny_shards, run, **extra), env=env_fault)
    check(proc, 75)
    out = proc.stdout + proc.stderr
    assert out.count("saved checkpoint") == 1 and "checkpoint of step 3 already saved" in out
    assert (run / "checkpoints" / "latest").resolve().name == "step_3"


def test_killed_between_rename_and_link_resumes_from_the_new_checkpoint(tiny_shards, tmp_path):
    """keep_last=1 and a SIGKILL inside the save of step 4: the next run resumes from step 4, never from 0."""
    run = tmp_path / "kill"
    extra = {"train.max_steps": 6, "train.save_every": 2, "train.keep_last": 1}
    proc = run_trainer(
        train_overrides(tiny_shards, run, **extra), env={"SONOTEXT_CHECKPOINT_FAULT": "renamed@4"}
    )
    check(proc, -signal.SIGKILL)
    resumed = run_trainer(train_overrides(tiny_shards, run, **extra))
    check(resumed)
    assert (
        "resumed from" in resumed.stdout + resumed.stderr and "at step 4" in resumed.stdout + resumed.stderr
    )
    assert [m["step"] for m in metrics(run)] == list(range(1, 7))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_6"]


def test_damaged_latest_checkpoint_falls_back_to_the_next_older(tiny_shards, tmp_path):
    """A deleted random_states_0.pkl used to resume silently (and no longer exactly); now the next older checkpoint
    is used, with one line saying why, and the damaged one is set aside. None usable: an error, not step 0."""
    run = tmp_path / "damaged"
    extra = {"train.max_steps": 4, "train.save_every": 2, "train.keep_last": 2}
    check(run_trainer(train_overrides(tiny_shards, run, **extra)))
    ckpts = run / "checkpoints"
    (ckpts / "step_4" / "accelerate" / "random_states_0.pkl").unlink()
    resumed = run_trainer(train_overrides(tiny_shards, run, **{**extra, "train.max_steps": 6}))
    check(resumed)
    out = resumed.stdout + resumed.stderr
    assert "checkpoint step_4 is not usable, trying the next older one" in out
    assert "accelerate/random_states_0.pkl is missing" in out and "at step 2" in out
    assert (ckpts / "step_4.unusable").is_dir() and (ckpts / "latest").resolve().name == "step_6"
    straight = tmp_path / "straight"
    check(run_trainer(train_overrides(tiny_shards, straight, **{**extra, "train.max_steps": 6})))
    assert_same_losses(losses(straight), losses(run))  # the fallback resumed exactly
    # a checkpoint that verifies but does not load (its checksums were rewritten over a broken file) falls back too
    optimizer = ckpts / "step_6" / "accelerate" / "optimizer.bin"
    optimizer.write_bytes(b"not a torch file")
    from trainer.checkpoint import write_checksums

    write_checksums(ckpts / "step_6")
    resumed = run_trainer(train_overrides(tiny_shards, run, **{**extra, "train.max_steps": 6}))
    check(resumed)
    assert (
        "checkpoint step_6 could not be loaded, trying the next older one" in resumed.stdout + resumed.stderr
    )
    for step in ckpts.glob("step_*"):
        if step.is_dir():
            (step / "accelerate" / "random_states_0.pkl").unlink(missing_ok=True)
    proc = run_trainer(train_overrides(tiny_shards, run, **{**extra, "train.max_steps": 8}))
    check(proc, 2)
    assert (
        "error: train.resume=auto: no usable checkpoint" in proc.stderr and "train.resume=null" in proc.stderr
    )


def test_corrupt_training_shards_are_skipped_and_counted(tiny_shards, tmp_path):
    """A truncated and a non-tar shard used to crash the run before step 1 (a raw TarError in the tokenizer pass)."""
    import shutil

    data = tmp_path / "shards"
    shutil.copytree(tiny_shards, data)
    dev = sorted((data / "clotho" / "development").glob("*.tar"))
    dev[0].write_bytes(dev[0].read_bytes()[: dev[0].stat().st_size // 3])
    dev[1].write_bytes(b"<html>404</html>")
    run = tmp_path / "run"
    check(run_trainer(train_overrides(data, run, **{"train.max_steps": 4})))
    counts = metrics(run)[-1]["samples"]
    assert counts["skipped"] > 0 and counts["expected"] == counts["read"] + counts["skipped"]
    state = json.loads((run / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert state["samples"] == counts


def test_output_dir_that_is_a_file_is_one_line(tiny_shards, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_trainer(train_overrides(tiny_shards, tmp_path / "file"))
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: run.output_dir: {tmp_path / 'file'} is a file, not a folder"
    )


def test_corrupt_evaluation_split_during_training(tiny_shards, tmp_path):
    """In-training evaluation of a split with a truncated shard stops the run with one line, or, with
    eval.allow_partial, reports on what was read with SET/expected, SET/read and SET/skipped."""
    import shutil

    data = tmp_path / "shards"
    shutil.copytree(tiny_shards, data)
    (shard,) = sorted((data / "clotho" / "evaluation").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    extra = {"train.max_steps": 2, "train.eval_every": 2, "train.save_every": 0}
    partial = tmp_path / "partial"
    check(run_trainer(train_overrides(data, partial, **extra, **{"eval.allow_partial": "true"})))
    report = json.loads((partial / "eval" / "step_2.json").read_text())
    counts = [report[f"clotho-evaluation/{k}"] for k in ("expected", "read", "skipped")]
    assert counts[0] == counts[1] + counts[2] and counts[2] > 0
    assert report["tacos-test/skipped"] == 0
    proc = run_trainer(train_overrides(data, tmp_path / "strict", **extra))
    check(proc, 1)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: evaluation read ")
