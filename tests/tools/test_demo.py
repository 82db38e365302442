"""`make demo` end to end, reduced: fewer and shorter clips, a few steps, the same commands and outputs."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT
from tools.demo import RUNS, SUMMARY_KEYS


def test_reduced_demo_end_to_end(tmp_path):
    data, out = tmp_path / "data", tmp_path / "runs"
    args = ["--data", str(data), "--out", str(out), "--clips", "30", "--seconds", "4", "--steps", "4"]
    args += [
        "data.batch_size=4",
        "data.num_workers=0",
        "data.shuffle_buffer=8",
        "optim.warmup_steps=1",
        "train.log_every=1",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.demo", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(RUNS)
    for run, metrics in summary.items():
        assert set(metrics) == {key for key, _, _ in SUMMARY_KEYS}, run
        assert all(0.0 <= v <= 1.0 for v in metrics.values()), (run, metrics)
        steps = [json.loads(line)["step"] for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 4
    kinds = {
        json.loads(line)["batch_kind"]
        for line in (out / "weak_strong" / "metrics.jsonl").read_text().splitlines()
    }
    assert kinds == {"weak", "strong"}
    figures = list((out / "figures").rglob("*.png"))
    assert (out / "figures" / "compare.png") in figures and len(figures) >= 9
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 1000 for f in figures)
    for line in ("summary:", "figures:", "frame_auroc"):
        assert line in proc.stdout
