"""Training and evaluation from shards behind a real HTTP server on 127.0.0.1 (tools.serve): two processes under
torchrun with DataLoader workers give the same losses and evaluation reports as from disk; a server that dies in
the middle of a shard is retried, its shards are skipped and counted, and training goes on with the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tests.helpers import (
    RETRIEVAL,
    ROOT,
    http_server,
    http_server_process,
    tone,
    toy_sample,
    train_overrides,
    write_split,
)
from tests.trainer.test_train import check, losses, metrics, run_trainer


def test_two_processes_train_and_evaluate_over_http_like_from_disk(tiny_shards, tmp_path):
    extra = {"data.num_workers": 2, "train.max_steps": 4, "train.eval_every": 4, "train.save_every": 4}
    disk, http = tmp_path / "disk", tmp_path / "http"
    check(run_trainer(train_overrides(tiny_shards, disk, **extra), 2, "torchrun"))
    with http_server(tiny_shards) as server:
        # every url (training sources, evaluation sets, their manifests and judgements) over http
        check(run_trainer(train_overrides(server.url, http, **extra), 2, "torchrun"))
        assert (http / "config.yaml").read_text().count(server.url) == 4
        reports = {}
        for name, data in (("disk", str(tiny_shards / RETRIEVAL)), ("http", f"{server.url}/{RETRIEVAL}")):
            out = tmp_path / f"{name}.json"
            cmd = [
                sys.executable,
                "-m",
                "tools.evaluate",
                "--checkpoint",
                str(disk / "checkpoints" / "latest"),
            ]
            cmd += ["--data", data, "--task", "retrieval", "--out", str(out), "--no-cache"]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            reports[name] = json.loads(out.read_text())["metrics"]
    assert losses(http) == losses(disk)  # the same batches, bit for bit
    assert [m["batch_kind"] for m in metrics(http)] == [m["batch_kind"] for m in metrics(disk)]
    a, b = (json.loads((run / "eval" / "step_4.json").read_text()) for run in (disk, http))
    assert a == b and a["clotho-evaluation/num_clips"] > 0
    assert reports["http"] == reports["disk"] and reports["disk"]["num_clips"] > 0


def test_a_server_that_dies_mid_run_is_retried_then_its_shards_are_skipped(tmp_path):
    """8 shards on two servers: with 2 ranks x 2 workers, worker t reads shard t (server A) and t+4 (server B).
    B dies in the middle of a shard after the start-up reads; every worker goes on with its A shard."""
    rate = 16000
    samples = [
        (
            toy_sample(f"clip{i:02d}", "train", rate, [f"tone number {i}", "a steady tone"], seconds=2.0),
            tone(2.0, rate, 200 + 40 * i, noise=0.01, seed=i),
        )
        for i in range(24)
    ]
    split = write_split(tmp_path / "data", "train", samples, rate, per_shard=3)
    shards = sorted(p.name for p in split.glob("*.tar"))
    assert len(shards) == 8
    # Start-up reads of B: each of the 2 ranks reads its 4 shards' captions for the tokenizer (8 GETs).
    with (
        http_server_process(tmp_path / "data") as (_, url_a),
        http_server_process(tmp_path / "data", die_after=10) as (dying, url_b),
    ):
        urls = [f"{url_a}/toy/train/{n}" for n in shards[:4]] + [f"{url_b}/toy/train/{n}" for n in shards[4:]]
        run = tmp_path / "run"
        overrides = train_overrides(
            tmp_path / "unused",
            run,
            **{
                "data.weak": f"[{{name: toy, urls: {json.dumps(urls)}, weight: 1.0}}]",
                "data.strong": "[]",
                "data.strong_every": 0,
                "data.num_workers": 2,
                "data.retries": 2,
                "data.retry_backoff_s": 0.05,
                "eval.retrieval": "[]",
                "eval.temporal": "[]",
                "train.max_steps": 24,
                "train.save_every": 24,
            },
        )
        proc = run_trainer(overrides, 2, "torchrun")
        check(proc)
        assert dying.poll() is not None  # B is gone
    assert [m["step"] for m in metrics(run)] == list(range(1, 25))
    assert "skipping unreadable shard: " + url_b in proc.stderr
    skipped = 0
    for rank in range(2):
        state = torch.load(run / "checkpoints" / "latest" / "data" / f"rank_{rank}.pt", weights_only=False)
        skipped += sum(w["stats"]["unreadable_shards"] for w in state["workers"] if w is not None)
    assert skipped >= 1
