"""`python -m tools.bench gpu`: the tiny CPU mode end to end, FLOP counting, the peak table, run checks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import ROOT
from tools.bench import main as bench_main
from tools.benchmarks.gpu_figures import check_run, flop_counter, mfu, peak_tflops_for, quantity

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def bench(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tools.bench", "gpu", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_tiny_cpu_mode_end_to_end(tmp_path):
    out = tmp_path / "gpu.json"
    proc = bench("--device", "cpu", "--tiny", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())

    layout = [(r["name"], r["ckpt"], r["workers"]) for r in result["rows"]]
    assert layout == [("model", "off", 0), ("model", "on", 0), ("loader", "off", 0), ("loader", "off", 2)]
    for row in result["rows"]:
        assert row["samples/s"] > 0 and row["step_ms"] > 0
        parts = row["data_ms"] + row["fwd_ms"] + row["bwd_ms"] + row["opt_ms"]
        # the four spans partition the step (wall time on CPU)
        assert abs(parts - row["step_ms"]) <= 0.1 * row["step_ms"] + 1.0, row
        assert 0 < row["wait_ms"] <= row["data_ms"] + 1.0
        assert 0 < row["busy"] <= 1
        assert 0 < row["mfu_step"] <= row["mfu"]
        assert row["mfu"] == pytest.approx(row["tflops"] / result["peak_tflops"])
        assert row["tflops"] == pytest.approx(
            result["flops_per_step"] / (row["fwd_ms"] + row["bwd_ms"]) / 1e9
        )
        assert row["finite"] and math.isfinite(row["loss"])
        assert row["peak_gb"] is None and row["util"] is None  # CUDA-only figures

    assert result["ratio"] == result["mfu"] == result["rows"][0]["mfu"]
    assert result["memory_ratio"] is None and result["device"] == "cpu" and result["tiny"]
    # no datasheet peak for a CPU: the matmul measured in the same run stands in
    assert result["peak_source"] == "measured matmul" and result["peak_tflops"] == result["matmul_tflops"] > 0
    # backward adds up to 2 forwards (less here: the mel front end and the patch input need no gradient)
    forward = result["forward_flops_audio"] + result["forward_flops_text"]
    assert result["forward_flops_audio"] > 0 and result["forward_flops_text"] > 0
    assert 1.2 < result["flops_per_step"] / forward < 3.5
    assert result["params"] > 0 and result["precision"] == "bf16"

    assert "name" in proc.stdout and "mfu" in proc.stdout and "ratio (ours / baseline)" in proc.stdout
    assert "MFU fwd+bwd" in proc.stdout


def error_line(argv: list[str]) -> str:
    """The message a bad command line exits with (in-process: the same code path as the CLI)."""
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["gpu", *argv])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_bad_input_is_one_line(tmp_path):
    assert "--data" in error_line(["--device", "cpu", "--tiny", "--data", str(tmp_path / "missing")])
    assert "fp16 needs a CUDA device" in error_line(["--device", "cpu", "--precision", "fp16"])
    assert "not a torch device" in error_line(["--device", "gpu0"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_missing_is_one_line():
    assert "no CUDA device is visible" in error_line(["--device", "cuda"])


def test_flop_counter_matches_hand_counts():
    b, n_in, n_out = 8, 16, 4
    layer = torch.nn.Linear(n_in, n_out)
    x = torch.randn(b, n_in, requires_grad=True)
    with flop_counter() as counter:
        layer(x).sum().backward()
    # forward, gradient of the input, gradient of the weight: one b x n_in x n_out product each
    assert counter.get_total_flops() == 3 * 2 * b * n_in * n_out

    batch, heads, seq, dim = 2, 3, 16, 8
    q, k, v = (torch.randn(batch, heads, seq, dim, requires_grad=True) for _ in range(3))
    with flop_counter() as counter:
        out = F.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * 2 * batch * heads * seq * seq * dim  # QK^T and PV
    with flop_counter() as counter:
        out.sum().backward()
    assert (
        counter.get_total_flops() == 5 * 2 * batch * heads * seq * seq * dim
    )  # recompute QK^T + 4 gradients


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("Tesla V100-SXM2-32GB", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_table(name, peak):
    assert peak_tflops_for(name) == peak


def test_mfu_and_quantity():
    assert mfu(0.5 * 989.4e12, 1.0, 989.4) == pytest.approx(0.5)
    assert mfu(50e12, 0.25, 400.0) == pytest.approx(0.5)
    assert quantity(5.02e13, "FLOP") == "50.2 TFLOP"
    assert quantity(81.3e9, "FLOP/s") == "81.3 GFLOP/s"
    assert quantity(12.0, "FLOP") == "12 FLOP"


def write_metrics(path, losses):
    records = [
        {"step": 10 * (i + 1), "loss": loss, "samples_per_s": 100.0 + i, "batch_kind": "weak"}
        for i, loss in enumerate(losses)
    ]
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_check_run(tmp_path):
    write_metrics(tmp_path / "good", [2.0, 1.9, 1.8, 1.2, 1.0, 0.8])
    good = check_run(tmp_path / "good")
    assert good["finite"] and good["decreased"] and good["last_step"] == 60 and good["records"] == 6
    assert good["loss_first"] == pytest.approx(1.9) and good["loss_last"] == pytest.approx(1.0)
    assert good["max_memory_mb"] is None

    write_metrics(tmp_path / "flat", [1.0, 1.0, 1.1, 1.1])
    assert not check_run(tmp_path / "flat")["decreased"]

    write_metrics(tmp_path / "nan", [2.0, None, 1.0, 0.5])  # metrics.jsonl writes NaN as null
    bad = check_run(tmp_path / "nan")
    assert not bad["finite"] and not bad["decreased"]

    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl"):
        check_run(tmp_path / "missing")
