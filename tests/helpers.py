"""Helpers shared across the test packages: test audio, toy splits written by the real writer, small real datasets
made by the real generator and converters, and the trainer overrides that point configs/debug.yaml at them.

Fixtures built on these live in tests/conftest.py (`tiny_shards`); package-specific helpers stay in the package's
own conftest (e.g. tests/shards/conftest.py: hand-made tars for reader tests). `http_server` serves a folder from a
real HTTP server on 127.0.0.1 (tools.serve) that drops or stalls connections where a test says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tone(
    seconds: float,
    rate: int,
    freq: float = 440.0,
    amplitude: float = 0.4,
    start: float = 0.0,
    stop: float | None = None,
    channels: int = 1,
    noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """A float32 sine of `seconds` at `rate`, sounding in [start, stop) (default: throughout), plus `noise` times
    standard Gaussian noise (generator `seed`). With channels > 1: [frames, channels], channel c at (1 - 0.1 c)
    of the level."""
    t = np.arange(round(seconds * rate)) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t)
    if start > 0 or stop is not None:
        x = x * ((t >= start) & (t < (seconds if stop is None else stop)))
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(t.size)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1)


def toy_sample(
    source_id: str,
    split: str,
    sample_rate: int,
    captions: Sequence[str] = (),
    regions: Sequence[tuple[str, float, float]] = (),
    seconds: float = 2.0,
    dataset: str = "toy",
):
    """A Sample of `dataset` with the key the converters would give `source_id`; regions are (text, onset, offset)."""
    from shards.schema import Region, Sample, make_key

    return Sample(
        key=make_key(dataset, source_id),
        dataset=dataset,
        split=split,
        source_id=source_id,
        duration=seconds,
        sample_rate=sample_rate,
        captions=list(captions),
        strong=[Region(t, a, b) for t, a, b in regions],
    )


def write_split(
    root: Path,
    split: str,
    samples: Sequence[tuple[object, np.ndarray]],
    sample_rate: int,
    relevance: Mapping[str, Sequence[str]] | None = None,
    per_shard: int = 3,
    dataset: str = "toy",
) -> Path:
    """(Sample, float audio) pairs -> real FLAC in real shards + manifest (the production ShardWriter) under
    root/DATASET/SPLIT; `relevance` goes into the manifest as judgements."""
    from shards.audio import encode_flac
    from shards.writer import ShardWriter

    out = root / dataset / split
    extra = {"relevance": dict(relevance)} if relevance else None
    with ShardWriter(out, dataset, split, sample_rate, max_samples=per_shard, extra_manifest=extra) as w:
        for sample, audio in samples:
            w.write(sample, encode_flac(audio, sample_rate))
    return out


def make_shards(root: Path, clips: int = 24, seconds: float = 3.0, sample_rate: int = 16000) -> Path:
    """synthetic.layouts -> shards.convert: clotho (development, evaluation), tacos (train/test), audioset-strong eval."""
    from shards.convert import convert
    from shards.sources.audioset_strong import AudioSetStrong
    from shards.sources.clotho import Clotho
    from shards.sources.tacos import Tacos
    from synthetic.layouts import generate

    raw, out = root / "raw", root / "shards"
    generate(raw, clips, seed=0, seconds=seconds, sample_rate=sample_rate)
    jobs = [
        (Clotho(raw / "clotho"), ("development", "evaluation")),
        (Tacos(raw / "tacos", test_size=max(2, clips // 6)), ("train", "test")),
        (AudioSetStrong(raw / "audioset_strong"), ("eval",)),
    ]
    for source, splits in jobs:
        for split in splits:
            convert(source, split, out, sample_rate=sample_rate, samples_per_shard=8)
    return out


# The splits of `make_shards` that configs/debug.yaml's one weak, strong, retrieval and temporal entry read.
WEAK, STRONG, RETRIEVAL, TEMPORAL = "clotho/development", "tacos/train", "clotho/evaluation", "tacos/test"


def debug_overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """configs/debug.yaml as it is (its steps, batch, model), pointed at `shards` and a private output dir."""
    return [
        f"run.output_dir={run_dir}",
        f"data.weak.0.urls={shards}/{WEAK}",
        f"data.strong.0.urls={shards}/{STRONG}",
        f"eval.retrieval.0.urls={shards}/{RETRIEVAL}",
        f"eval.temporal.0.urls={shards}/{TEMPORAL}",
        "data.clip_seconds=3.0",
        *extra,
    ]


def train_overrides(shards: Path, out_dir: Path, **extra) -> list[str]:
    """configs/debug.yaml pointed at `shards`, writing to `out_dir`, sized to run in seconds; `extra` replaces keys."""
    values = {
        "run.output_dir": str(out_dir),
        "data.sample_rate": 16000,
        "data.clip_seconds": 2.0,
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.shuffle_buffer": 8,
        "data.weak": f"[{{name: clotho, urls: {shards}/{WEAK}, weight: 1.0}}]",
        "data.strong": f"[{{name: tacos, urls: {shards}/{STRONG}, weight: 1.0}}]",
        "eval.retrieval": f"[{{name: clotho-evaluation, urls: {shards}/{RETRIEVAL}}}]",
        "eval.temporal": f"[{{name: tacos-test, urls: {shards}/{TEMPORAL}}}]",
        "train.max_steps": 6,
        "train.log_every": 1,
        "train.save_every": 3,
        "train.eval_every": 0,
        "optim.warmup_steps": 2,
        "wandb.mode": "disabled",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# ---------------------------------------------------------------------------------------------------------------------
# A real HTTP server on loopback (tools.serve: byte ranges, ETag) that fails on purpose where a test says so
# ---------------------------------------------------------------------------------------------------------------------


def wait_for_steps(
    run: Path, proc: subprocess.Popen, n: int, timeout: float = 300, group: bool = False
) -> None:
    """Wait until the training `proc` has logged `n` steps in RUN/metrics.jsonl; fail (killing it, or its process
    group when `group`: it was started in a session of its own) if it exits first or takes over `timeout` s."""
    import pytest

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"trainer exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        f = run / "metrics.jsonl"
        if f.is_file() and len(f.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    pytest.fail(f"no {n} logged steps within {timeout}s")


@dataclass
class Faults:
    """What the loopback server does wrong, by file name. Each GET of NAME takes the next entry of `cut[NAME]`
    (send that many body bytes, then drop the connection) or `stall[NAME]` (send that many, then send nothing
    until the server stops); a NAME in `fail` loses its connection before any byte, every time. `ignore_range`
    answers every GET with the whole file (200), as a server without Range support would. `after_cut` runs
    after each cut (e.g. to change the file). `requests` logs (path, Range header) of every GET."""

    cut: dict[str, list[int]] = field(default_factory=dict)
    stall: dict[str, list[int]] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)
    ignore_range: bool = False
    after_cut: Callable[[str], None] | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, plan: dict[str, list[int]], name: str) -> int | None:
        with self.lock:
            left = plan.get(name)
            return left.pop(0) if left else None

    def ranges(self, name: str) -> list[str | None]:
        """The Range headers of the GETs of a file name, in order."""
        with self.lock:
            return [r for p, r in self.requests if p.rsplit("/", 1)[-1] == name]


def _faulty_handler(faults: Faults):
    import socket

    from tools.serve import ShardHandler

    class FaultyHandler(ShardHandler):
        def serve(self, body: bool) -> None:
            name = self.path.rsplit("/", 1)[-1]
            if body:
                with faults.lock:
                    faults.requests.append((self.path, self.headers.get("Range")))
                if name in faults.fail:
                    self._drop()
                    return
            if faults.ignore_range:
                del self.headers["Range"]
            super().serve(body)

        def send_body(self, path: Path, offset: int, length: int) -> None:
            cut, stall = faults.take(faults.cut, path.name), faults.take(faults.stall, path.name)
            if cut is None and stall is None:
                return super().send_body(path, offset, length)
            super().send_body(path, offset, min(length, cut if cut is not None else stall))
            if stall is not None:
                self.wfile.flush()
                faults.release.wait()
            self._drop()
            if cut is not None and faults.after_cut is not None:
                faults.after_cut(path.name)

        def _drop(self) -> None:
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    return FaultyHandler


@contextmanager
def http_server(root: Path, faults: Faults | None = None) -> Iterator:
    """tools.serve's server over `root` on 127.0.0.1 (a free port) in a thread, failing as `faults` say; its `url`."""
    from tools.serve import make_server

    faults = faults or Faults()
    server = make_server(root, handler=_faulty_handler(faults))
    try:
        yield server
    finally:
        faults.release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def http_server_process(root: Path, die_after: int | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m tools.serve ROOT --port 0` as its own process: (process, url). With `die_after` N, the process
    sends half of the body of the N-th .tar it is asked for and then exits at once, as a crashed server would."""
    if die_after is None:
        cmd = [sys.executable, "-m", "tools.serve", str(root), "--port", "0"]
    else:
        cmd = [
            sys.executable,
            "-c",
            f"from tests.helpers import serve_then_die; serve_then_die({str(root)!r}, {die_after})",
        ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r"at (http://\S+?)/?$", line.strip())
        assert found, f"the shard server did not start: {line!r}"
        yield proc, found.group(1)
    finally:
        proc.kill()
        proc.wait()


def serve_then_die(root: str, die_after: int) -> None:
    """tools.serve's server on a free port that dies in the middle of the `die_after`-th .tar it serves."""
    import os

    from tools.serve import ShardHandler, ShardServer

    served = [0]
    lock = threading.Lock()

    class Dying(ShardHandler):
        def send_body(self, path: Path, offset: int, length: int) -> None:
            if path.suffix == ".tar":
                with lock:
                    served[0] += 1
                    last = served[0] >= die_after
                if last:
                    super().send_body(path, offset, length // 2)
                    self.wfile.flush()
                    os._exit(1)
            super().send_body(path, offset, length)

    server = ShardServer(Path(root), handler=Dying)
    print(f"serving {server.root} at {server.url}/", flush=True)
    server.serve_forever()


CLAP_CAPTIONS = (
    "a dog barks twice",
    "rain falls on a tin roof",
    "a car passes by followed by a horn",
    "birds chirp in the morning",
    "a tone at 440 hertz",
    "a steady beep",
)


def tiny_joint_model(
    sample_rate: int,
    texts: Sequence[str],
    width: int = 16,
    vocab_size: int = 200,
    embed_dim: int = 8,
    loss=None,
):
    """A random-init AudioTextModel small enough for any test (conv audio tower and tiny text tower `width` wide,
    `width` mel bands, a tokenizer trained on `texts`), built from seed 0 in eval mode: the same weights every time."""
    import torch

    from trainer.config import AudioModelConfig, LossConfig, ModelConfig, TextModelConfig
    from trainer.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        audio=AudioModelConfig(name="conv", hidden_size=width, num_layers=1, n_mels=width),
        text=TextModelConfig(
            name="tiny", hidden_size=width, num_layers=1, num_heads=2, vocab_size=vocab_size, max_length=16
        ),
        embed_dim=embed_dim,
    )
    return build_model(cfg, loss or LossConfig(), sample_rate, list(texts)).eval()


def save_tiny_clap(path: Path, fused: bool = False, seed: int = 1, logit_scale: float = 20.0):
    """A tiny full CLAP checkpoint (transformers ClapModel: HTSAT + RoBERTa-style text, both projection heads and the
    logit scales) saved as laion/clap-htsat-* are: weights, ClapFeatureExtractor settings (48 kHz, 2 s windows,
    16 mels) and a tokenizer built offline. `fused` is the clap-htsat-fused variant. Returns (model, extractor,
    tokenizer)."""
    import torch
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

    from trainer.model.text import train_tokenizer

    torch.manual_seed(seed)
    audio = ClapAudioConfig(
        num_mel_bins=16,
        spec_size=64,
        patch_embeds_hidden_size=16,
        hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 4],
        **({"enable_fusion": True, "fusion_type": "aff_2d"} if fused else {}),
    )
    text = ClapTextConfig(
        vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    config = ClapConfig(
        text_config=text.to_dict(),
        audio_config=audio.to_dict(),
        projection_dim=16,
        logit_scale_init_value=logit_scale,
    )
    model = ClapModel(config).eval()
    extractor = ClapFeatureExtractor(
        feature_size=16, max_length_s=2, truncation="fusion" if fused else "rand_trunc", padding="repeatpad"
    )
    tokenizer = train_tokenizer(CLAP_CAPTIONS, 400, 16, "roberta")
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, extractor, tokenizer


@contextlib.contextmanager
def serve_hub(repos: Mapping[str, Path]) -> Iterator[tuple[str, list[str]]]:
    """A Hugging Face hub on loopback serving model repositories {repo_id: folder} (revision "main"), with the
    endpoints huggingface_hub's snapshot_download uses: repo info, the file tree, and file HEAD/GET with the
    commit and ETag headers. Yields (endpoint URL for HF_ENDPOINT, the list of requests received)."""
    import hashlib
    import json
    import re
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote, urlparse

    commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
    requests: list[str] = []

    def files(repo: str) -> list[str]:
        root = Path(repos[repo])
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def reply(self, code: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def route(self) -> None:
            requests.append(f"{self.command} {self.path}")
            path = unquote(urlparse(self.path).path)
            api = re.match(r"^/api/models/([^/]+/[^/]+)/(revision|tree)/[^/]+", path)
            if api and api.group(1) in repos:
                repo = api.group(1)
                if api.group(2) == "revision":
                    info = {
                        "id": repo,
                        "sha": commits[repo],
                        "siblings": [{"rfilename": f} for f in files(repo)],
                    }
                else:
                    root = Path(repos[repo])
                    info = [
                        {
                            "type": "file",
                            "path": f,
                            "size": (root / f).stat().st_size,
                            "oid": hashlib.sha1((root / f).read_bytes()).hexdigest(),
                        }
                        for f in files(repo)
                    ]
                return self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
            resolve = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", path)
            if (
                resolve
                and resolve.group(1) in repos
                and (Path(repos[resolve.group(1)]) / resolve.group(2)).is_file()
            ):
                data = (Path(repos[resolve.group(1)]) / resolve.group(2)).read_bytes()
                etag = f'"{hashlib.sha1(data).hexdigest()}"'
                return self.reply(200, data, {"X-Repo-Commit": commits[resolve.group(1)], "ETag": etag})
            code = "EntryNotFound" if resolve and resolve.group(1) in repos else "RepoNotFound"
            self.reply(404, b"{}", {"X-Error-Code": code})

        do_GET = do_HEAD = route

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
