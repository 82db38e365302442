"""Figures of the GPU benchmark that need no device: datasheet peaks, MFU, FLOP counting, a run's loss trend."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    # Dense (no sparsity) bf16 tensor-core peak per GPU from NVIDIA's datasheets; the first matching pattern wins.
    (r"H100.*PCIe", 756.0),
    (r"H[12]00.*NVL", 835.0),
    (r"H100|H200", 989.4),  # SXM / HBM3 boards and GH200
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA30\b", 165.0),
    (r"\bA10\b", 125.0),
)


def peak_tflops_for(device_name: str) -> float | None:
    """Dense bf16 tensor-core peak (TFLOP/s) of a GPU from its CUDA device name, or None if not in the table."""
    for pattern, peak in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: FLOPs done in `seconds` as a fraction of `peak_tflops` (TFLOP/s)."""
    return flops / seconds / (peak_tflops * 1e12)


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _attention_mapping() -> dict[Any, Any]:
    """FlopCounterMode formulas for the CPU flash-attention kernels, which torch's table lacks (CUDA's are there)."""
    aten = torch.ops.aten
    mapping = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_attention_backward_flops),
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = formula
    return mapping


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts attention on CPU."""
    return FlopCounterMode(display=False, custom_mapping=_attention_mapping())


def module_flops(counter: FlopCounterMode, suffix: str) -> int:
    """FLOPs the counter attributed to the module whose name ends with `suffix` (0 if none)."""
    for name, ops in counter.get_flop_counts().items():
        if name.endswith(suffix):
            return int(sum(ops.values()))
    return 0


def check_run(run_dir: str | Path, window: int = 3) -> dict[str, Any]:
    """Loss trend of a training run's metrics.jsonl: finite everywhere, and lower over the last `window` records
    than over the first `window`."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (did the run start?)")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(records) < 2:
        raise ValueError(f"{path}: {len(records)} metrics records; need at least 2 to see a trend")
    losses = [r.get("loss") for r in records]
    finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses)
    k = max(1, min(window, len(records) // 2))
    first = statistics.fmean(losses[:k]) if finite else math.nan
    last = statistics.fmean(losses[-k:]) if finite else math.nan
    memory = [r["max_memory_mb"] for r in records if r.get("max_memory_mb") is not None]
    return {
        "run": str(run_dir),
        "last_step": int(records[-1]["step"]),
        "records": len(records),
        "finite": finite,
        "loss_first": first,
        "loss_last": last,
        "decreased": bool(finite and last < first),
        "max_memory_mb": max(memory) if memory else None,
        "samples_per_s": statistics.fmean(r["samples_per_s"] for r in records[k:] or records),
    }


def quantity(value: float, unit: str) -> str:
    """`value` with an SI prefix, 3 significant digits: 5.02e13 FLOP -> '50.2 TFLOP'."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"
