"""tools.gpu_validate: the checks and figures `gpu_validate.sh run` ends with, on the files a run leaves."""

from __future__ import annotations

import json
from pathlib import Path

from tools.gpu_validate import main, read_status, summarize


def write_run(run: Path, losses: list[float]) -> None:
    run.mkdir(parents=True)
    records = [
        {"step": 10 * (i + 1), "loss": loss, "samples_per_s": 100.0, "max_memory_mb": 512.0}
        for i, loss in enumerate(losses)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def make_work(tmp_path: Path, zero_resumed: bool) -> tuple[Path, Path]:
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "logs").mkdir(parents=True)
    out.mkdir()
    steps = [("data", "0", 12), ("train_bf16", "0", 40), ("zero2_phase1", "0", 30), ("zero2_phase2", "0", 31)]
    (work / "status.tsv").write_text("".join(f"{n}\t{rc}\t{s}\n" for n, rc, s in steps))
    write_run(work / "runs" / "bf16", [2.0, 1.9, 1.8, 1.2, 1.1, 1.0])
    write_run(work / "runs" / "zero2", [2.0, 1.5, 1.0, 0.9])
    (work / "runs" / "zero2" / "checkpoints").mkdir()
    (work / "runs" / "zero2" / "checkpoints" / "step_40").mkdir()
    (work / "runs" / "zero2" / "checkpoints" / "latest").symlink_to("step_40")
    resumed = "resumed from /x/checkpoints/step_20 at step 20\n" if zero_resumed else "started fresh\n"
    (work / "logs" / "zero2_phase2.log").write_text(resumed)
    (out / "env.txt").write_text("torch 2.13.0\n")
    return work, out


def test_summary_checks_every_step_and_run(tmp_path):
    work, out = make_work(tmp_path, zero_resumed=True)
    assert read_status(work / "status.tsv")["train_bf16"] == {"exit": "0", "seconds": 40}
    ok, summary, md = summarize(work, out, zero_steps=40)
    assert ok and summary["ok"]
    names = [c["check"] for c in summary["checks"]]
    assert names == [
        "data exits 0",
        "train_bf16 exits 0",
        "zero2_phase1 exits 0",
        "zero2_phase2 exits 0",
        "bf16: loss falls, no NaN",
        "zero2: loss falls, no NaN",
        "zero2: checkpoint at 20, resumed to 40",
    ]
    assert summary["figures"]["bf16"]["decreased"] and summary["figures"]["zero2"]["last_step"] == 40
    assert "| zero2: checkpoint at 20, resumed to 40 | yes |" in md and "torch 2.13.0" in md

    assert main(["summary", "--work", str(work), "--out", str(out), "--zero-steps", "40"]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "summary.md").read_text() == md


def test_summary_fails_when_a_check_fails(tmp_path, capsys):
    work, out = make_work(tmp_path, zero_resumed=False)
    with (work / "status.tsv").open("a") as f:
        f.write("bench_ast\t124\t240\n")
    ok, summary, _ = summarize(work, out, zero_steps=40)
    failed = [c["check"] for c in summary["checks"] if not c["ok"]]
    assert not ok and failed == ["bench_ast exits 0", "zero2: checkpoint at 20, resumed to 40"]
    assert main(["summary", "--work", str(work), "--out", str(out), "--zero-steps", "40"]) == 1
    assert "SOME CHECKS FAILED" in capsys.readouterr().out


def test_environment_queries(tmp_path, capsys):
    assert main(["version", "numpy"]) == 0 and capsys.readouterr().out.strip()[0].isdigit()
    assert main(["version", "no-such-package-here"]) == 1
    assert "not installed" in capsys.readouterr().err
    assert main(["cuda"]) == 0 and capsys.readouterr().out.strip() in ("0", "1")
    assert main(["env"]) == 0 and "torch " in capsys.readouterr().out
    assert main(["summary", "--work", str(tmp_path), "--out", str(tmp_path), "--zero-steps", "8"]) == 1
    assert "status.tsv" in capsys.readouterr().err
