"""Packaging: setup.cfg lists every package and command; the built wheel installs and runs outside the checkout.

The wheel test does what a new user on a cluster login node does: build the sdist and, from it, the wheel; install
that into a fresh venv (with its dependencies from the package index, torch from the same place as this venv's);
then, from an empty folder, run the console commands on a tiny dataset, a 2-step training by config name and a
2-process `accelerate launch -m trainer` with a shipped accelerate config.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "trainer", "launch", "tools", "synthetic")
# What the wheel is built from: the files an sdist of the checkout needs.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "configs", *PACKAGES)
# Commands the documentation promises; more may exist (setup.cfg [options.entry_points] is the list).
DOCUMENTED_COMMANDS = {
    "sonotext-convert": "tools.convert",
    "sonotext-verify": "tools.verify",
    "sonotext-train": "trainer",
    "sonotext-evaluate": "tools.evaluate",
    "sonotext-plot": "tools.plot",
    "sonotext-slurm": "launch.slurm",
    "sonotext-configs": "tools.configs",
}


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def console_scripts() -> dict[str, str]:
    """{command: 'module:function'} from setup.cfg."""
    text = setup_cfg()["options.entry_points"]["console_scripts"]
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip())
    return {name.strip(): target.strip() for name, target in pairs}


def module_form(target: str) -> str:
    """The `python -m` name of an entry point's module: `trainer` for trainer.__main__."""
    module = target.split(":")[0]
    return module.removesuffix(".__main__")


# ---------------------------------------------------------------------------------------------------------------------
# setup.cfg, without building anything
# ---------------------------------------------------------------------------------------------------------------------


def test_every_package_is_listed():
    listed = set(setup_cfg()["options"]["packages"].split())
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to setup.cfg [options] packages: {sorted(on_disk - listed)}"
    assert listed - on_disk == {"trainer.configs"}, (
        "packages without a folder (only trainer.configs is mapped)"
    )
    package_dir = setup_cfg()["options"]["package_dir"]
    assert [line.split() for line in package_dir.strip().splitlines()] == [
        ["trainer.configs", "=", "configs"]
    ]


def test_console_scripts_are_the_python_m_programs():
    scripts = console_scripts()
    for name, module in DOCUMENTED_COMMANDS.items():
        assert name in scripts and module_form(scripts[name]) == module, name
    for name, target in scripts.items():
        assert name.startswith("sonotext-"), name
        module, _, function = target.partition(":")
        assert function == "main", f"{name}: the entry point is `main(argv) -> int`, got {target}"
        path = ROOT / Path(*module.split(".")).with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), (
            f"{path}: no main()"
        )
        # `python -m` runs the same function: the module ends in `if __name__ == "__main__": sys.exit(main())`.
        guard = tree.body[-1]
        assert isinstance(guard, ast.If) and "__main__" in ast.unparse(guard.test), (
            f"{path}: no __main__ guard"
        )
        assert ast.unparse(guard.body[0]) == "sys.exit(main())", (
            f"{path}: the guard must call sys.exit(main())"
        )


# ---------------------------------------------------------------------------------------------------------------------
# The built wheel, installed into a fresh venv, used from outside the checkout
# ---------------------------------------------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command; on failure the assertion shows it with its output."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"$ {shlex.join(cmd)}\n(exit {out.returncode})\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    )
    return out.stdout


def build_wheel(tmp: Path) -> Path:
    """sdist of a copy of the sources, then the wheel from the unpacked sdist (as `python -m build` does)."""
    src, dist = tmp / "src", tmp / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    src.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    build_sdist = f"import setuptools.build_meta as b; print(b.build_sdist({str(dist)!r}))"
    sdist = dist / run([sys.executable, "-c", build_sdist], cwd=src).strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "sdist", filter="data")
    (unpacked,) = (tmp / "sdist").iterdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(unpacked)], cwd=tmp)
    (wheel,) = dist.glob("sonotext-*.whl")
    return wheel


def expected_wheel_files() -> set[str]:
    """Every module of the packages, and every config under trainer/configs/."""
    files = {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    configs = ROOT / "configs"
    files |= {
        f"trainer/configs/{p.relative_to(configs).as_posix()}" for p in configs.rglob("*") if p.is_file()
    }
    return {f for f in files if "__pycache__" not in f}


def torch_requirement() -> str:
    """The torch this venv has (a local CPU wheel on CI), unless `make test TORCH=...` says otherwise."""
    return os.environ.get("SONOTEXT_TORCH") or f"torch=={importlib.metadata.version('torch')}"


def user_env(venv: Path) -> dict[str, str]:
    """The environment of a user with only the fresh venv on PATH (nothing of this checkout or its venv)."""
    ours = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != ours]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *path]), VIRTUAL_ENV=str(venv), HF_HUB_OFFLINE="1")
    return env


# Runs in the fresh venv: where the packages come from, every console command's --help, every shipped config by name.
CHECK_INSTALLED = """
import contextlib, importlib, importlib.metadata as md, io, json, sys
from pathlib import Path
import launch, shards, tools, trainer
from launch.cluster import load_cluster
from trainer.config import load_config
from trainer.config_files import shipped_dir, shipped_names
report = {"packages": [m.__file__ for m in (launch, shards, tools, trainer)], "configs": str(shipped_dir())}
helps = {}
for ep in md.entry_points(group="console_scripts"):
    if ep.dist is None or ep.dist.name != "sonotext":
        continue
    module, _, attr = ep.value.partition(":")
    assert ep.load() is getattr(importlib.import_module(module), attr)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        ep.load()(["--help"])
    helps[ep.name] = out.getvalue()
report["helps"] = helps
loaded = {}
for name in shipped_names():
    stem = name.rsplit(".", 1)[0]
    if name.startswith("clusters/"):
        loaded[name] = load_cluster(stem.split("/", 1)[1]).partition
    elif name.endswith(".yaml") and "/" not in name or name.startswith("experiments/"):
        loaded[name] = load_config(stem).train.deepspeed
report["loaded"] = loaded
print(json.dumps(report))
"""


@pytest.mark.timeout(1800)
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path / "build")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(
            f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info/entry_points.txt"
        )
    missing = expected_wheel_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert not any(n.startswith(("tests/", "configs/")) for n in names)
    for name in console_scripts():
        assert f"{name} = ".encode() in entry_points, name

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = str(venv / "bin" / "python")
    pip_args = shlex.split(os.environ.get("SONOTEXT_PIP_ARGS", ""))
    install = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile", *pip_args]
    run([*install, str(wheel), torch_requirement()], cwd=tmp_path, timeout=1200)

    home = tmp_path / "user"  # the user's working folder: no configs/, no checkout
    home.mkdir()
    env = user_env(venv)

    def sonotext(command: str, *args: str) -> str:
        return run([str(venv / "bin" / f"sonotext-{command}"), *args], cwd=home, env=env)

    assert sonotext("convert", "--help").startswith("usage: sonotext-convert ")  # its own name, not python -m

    report = json.loads(run([py, "-c", CHECK_INSTALLED], cwd=home, env=env))
    site = Path(
        run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=home, env=env
        ).strip()
    )
    for file in report["packages"]:
        assert Path(file).is_relative_to(site), f"imported from {file}, not from the installed wheel"
    assert Path(report["configs"]) == site / "trainer" / "configs"
    assert set(report["helps"]) == set(console_scripts())
    for name, text in report["helps"].items():
        assert "usage:" in text, f"{name} --help printed {text!r}"
    assert report["loaded"]["clusters/local.yaml"] == "debug"
    # a recipe that names a DeepSpeed file by its repository path gets the shipped file
    assert report["loaded"]["experiments/large_mixture.yaml"] == str(
        site / "trainer/configs/deepspeed/zero2.json"
    )

    # a tiny dataset: the real generator, converters and verifier
    sonotext("synthetic", "--out", "raw", "--clips", "6", "--seconds", "3", "--seed", "0")
    for dataset, extra in (("clotho", []), ("tacos", ["--test-size", "2"])):
        sonotext(
            "convert", dataset, "--src", f"raw/{dataset}", "--out", "shards", "--sample-rate", "16000", *extra
        )
    assert "OK shards/tacos/train" in sonotext("verify", "shards/clotho/development", "shards/tacos/train")

    data = [
        "data.weak.0.urls=shards/clotho/development",
        "data.strong.0.urls=shards/tacos/train",
        "eval.retrieval.0.urls=shards/clotho/evaluation",
        "eval.temporal.0.urls=shards/tacos/test",
        "data.clip_seconds=3.0",
    ]
    # 2 steps of the shipped debug config, by name
    sonotext("train", "debug", "run.output_dir=runs/debug", "train.max_steps=2", "train.save_every=2", *data)
    steps = [
        json.loads(line)["step"] for line in (home / "runs/debug/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2]
    assert (home / "runs/debug/checkpoints/latest").exists()

    # `accelerate launch -m trainer` with a shipped accelerate file: 2 processes, one gloo group
    accelerate_file = sonotext("configs", "path", "accelerate/cpu_debug").strip()
    launch = [str(venv / "bin" / "accelerate"), "launch", "--config_file", accelerate_file, "-m", "trainer"]
    run(
        [*launch, "configs/debug.yaml", "run.output_dir=runs/ddp", "train.max_steps=1", *data],
        cwd=home,
        env=env,
    )
    (first,) = [json.loads(line) for line in (home / "runs/ddp/metrics.jsonl").read_text().splitlines()]
    assert first["data_seen"]["clotho"] == 2 * 8  # batch 8 on each of 2 ranks

    # the SLURM launcher with a shipped cluster file, by name
    script = sonotext("slurm", "debug", "--cluster", "example", "--nodes", "2", "--dry-run")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=gpu" in script
