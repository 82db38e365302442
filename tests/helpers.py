"""Helpers shared across the test packages: test audio, toy splits written by the real writer, small real datasets
made by the real generator and converters, and the trainer overrides that point configs/debug.yaml at them.

Fixtures built on these live in tests/conftest.py (`tiny_shards`); package-specific helpers stay in the package's
own conftest (e.g. tests/shards/conftest.py: hand-made tars for reader tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
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


CLAP_CAPTIONS = (
    "a dog barks twice",
    "rain falls on a tin roof",
    "a car passes by followed by a horn",
    "birds chirp in the morning",
    "a tone at 440 hertz",
    "a steady beep",
)


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
