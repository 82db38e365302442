"""configs/accelerate/*.yaml: each loads with Accelerate's own loader, and `accelerate launch` really starts them.

GPU files are launched on CPU by switching `use_cpu` on in a copy: the process layout and the rendezvous
(machine rank, main process address/port, DeepSpeed's launcher) are the part under test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_DIR = REPO / "configs" / "accelerate"
FILES = sorted(ACCELERATE_DIR.glob("*.yaml"))
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_expected_files():
    names = {p.stem for p in FILES}
    assert {"single_node_ddp", "multi_node_ddp", "multi_node_zero2", "multi_node_zero3", "cpu_debug"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_loads_with_accelerate(path):
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1
    assert cfg.num_processes % cfg.num_machines == 0, "processes must split evenly over machines"
    if cfg.num_machines > 1:
        assert cfg.rdzv_backend == "static" and cfg.main_process_port


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_files(stage):
    raw = yaml.safe_load((ACCELERATE_DIR / f"multi_node_zero{stage}.yaml").read_text())
    assert raw["distributed_type"] == "DEEPSPEED"
    # Accelerate refuses precision in the accelerate file when a DeepSpeed JSON is given.
    assert "mixed_precision" not in raw
    ds_file = REPO / raw["deepspeed_config"]["deepspeed_config_file"]
    assert ds_file == REPO / "configs" / "deepspeed" / f"zero{stage}.json"
    assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == stage
    assert raw["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"


def launch_probe(config: Path, out: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [
        *ACCELERATE,
        "--config_file",
        str(config),
        *extra,
        "-m",
        "launch.probe",
        "--out",
        str(out),
        "--steps",
        "3",
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cpu_debug_starts_two_processes(tmp_path, jsonl):
    proc = launch_probe(
        ACCELERATE_DIR / "cpu_debug.yaml", tmp_path, ["--main_process_port", str(free_port())]
    )
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    (run,) = jsonl(tmp_path / "runs.jsonl")
    assert (run["world_size"], run["end_step"]) == (2, 3)


@pytest.mark.parametrize("name", ["multi_node_ddp", "multi_node_zero2"])
def test_multi_node_file_rendezvous_of_two_machines(tmp_path, jsonl, name):
    """Two `accelerate launch` (machine ranks 0 and 1) on localhost, one process each, form one world of 2."""
    raw = yaml.safe_load((ACCELERATE_DIR / f"{name}.yaml").read_text())
    raw["use_cpu"] = True
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    port = str(free_port())
    layout = ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    procs = [
        launch_probe(
            config, tmp_path / "out", [*layout, "--main_process_port", port, "--machine_rank", str(rank)]
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    (run,) = jsonl(tmp_path / "out" / "runs.jsonl")
    assert (run["world_size"], run["end_step"]) == (2, 3)


def test_cpu_debug_trains_debug_config(tmp_path, jsonl, tiny_shards, debug_args, trainer_ready):
    run_dir = tmp_path / "run"
    cmd = [*ACCELERATE, "--config_file", str(ACCELERATE_DIR / "cpu_debug.yaml")]
    cmd += ["--main_process_port", str(free_port()), "-m", "trainer", str(REPO / "configs/debug.yaml")]
    result = subprocess.run(
        [*cmd, *debug_args(tiny_shards, run_dir)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [r["step"] for r in jsonl(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, 11))
