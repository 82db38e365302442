"""Shard lists: urls from configs -> shard paths with sample counts, and how workers split them.

    shards = expand_urls("data/shards/clotho/development")           # split dir: every shard its manifest lists
    shards = expand_urls("x/train/x-train-{000000..000009}.tar")      # brace pattern
    shards = expand_urls("pipe:curl -s https://host/x-{0..9}.tar", allow_pipe=True)

Sample counts come from the ``manifest.json`` beside the shards when there is one (None otherwise);
`split_manifests` names those manifests (e.g. to read a split's relevance judgements).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand

MANIFEST = "manifest.json"
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
GLOB_CHARS = re.compile(r"[*?\[]")


class ShardError(ValueError):
    """Shard urls that cannot be used: no match, empty shard, a forbidden scheme; names the url."""


@dataclass(frozen=True)
class Shard:
    """One tar shard: where to read it and how many samples it holds (None: unknown)."""

    url: str
    num_samples: int | None = None


def expand_urls(urls: str | Sequence[str], allow_pipe: bool = False) -> list[Shard]:
    """Brace patterns, globs, split directories (via manifest.json) and `pipe:` urls -> shards, in order."""
    items = [urls] if isinstance(urls, str) else list(urls)
    if not items:
        raise ShardError("no shard urls given")
    shards: list[Shard] = []
    manifests: dict[Path, dict[str, int]] = {}
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ShardError(f"shard url must be a non-empty string, got {item!r}")
        shards.extend(_expand_one(item.strip(), allow_pipe, manifests))
    seen: set[str] = set()
    for shard in shards:
        if shard.url in seen:
            raise ShardError(f"shard {shard.url} is listed twice in {urls!r}")
        seen.add(shard.url)
    return shards


def split_manifests(urls: str | Sequence[str], allow_pipe: bool = False) -> list[Path]:
    """The manifest.json of each local split folder that `urls` expand into (by `expand_urls`), in order.

    Folders without a manifest and `pipe:` urls (nothing local to read) are left out.
    """
    folders: list[Path] = []
    for shard in expand_urls(urls, allow_pipe):
        if shard.url.startswith("pipe:"):
            continue
        folder = Path(shard.url).parent
        if folder not in folders:
            folders.append(folder)
    return [f / MANIFEST for f in folders if (f / MANIFEST).is_file()]


def _expand_one(item: str, allow_pipe: bool, manifests: dict[Path, dict[str, int]]) -> list[Shard]:
    if item.startswith("pipe:"):
        if not allow_pipe:
            raise ShardError(
                f"{item}: pipe: urls run shell commands; set data.allow_pipe=true if you trust this config"
            )
        return [Shard(url) for url in braceexpand.braceexpand(item)]
    scheme = SCHEME.match(item)
    if scheme and scheme.group(1) != "file":
        raise ShardError(
            f"{item}: unsupported url scheme {scheme.group(1)!r}; use a local path or "
            f"'pipe:curl -s URL' (or another command) with data.allow_pipe=true"
        )
    if scheme:
        item = item[len("file://") :]
    shards: list[Shard] = []
    for pattern in braceexpand.braceexpand(item):
        path = Path(pattern)
        if path.is_dir():
            shards.extend(_split_dir(path, manifests))
            continue
        paths = sorted(Path(p) for p in glob.glob(pattern)) if GLOB_CHARS.search(pattern) else [path]
        if not paths:
            raise ShardError(f"shard pattern {item!r} matches no file ({pattern} has no match)")
        for p in paths:
            if not p.is_file():
                raise ShardError(f"shard pattern {item!r} matches no file: {p} does not exist")
            shards.append(_local_shard(p, _manifest_counts(p.parent, manifests).get(p.name)))
    return shards


def _split_dir(path: Path, manifests: dict[Path, dict[str, int]]) -> list[Shard]:
    counts = _manifest_counts(path, manifests)
    if (path / MANIFEST).is_file():
        names = list(counts)
    else:
        names = sorted(p.name for p in path.glob("*.tar"))
    if not names:
        raise ShardError(f"{path}: no {MANIFEST} and no .tar shards in this directory")
    out = []
    for name in names:
        p = path / name
        if not p.is_file():
            raise ShardError(f"{path / MANIFEST} lists shard {name}, but {p} does not exist")
        out.append(_local_shard(p, counts.get(name)))
    return out


def _local_shard(path: Path, num_samples: int | None) -> Shard:
    if path.stat().st_size == 0:
        raise ShardError(f"empty shard: {path} has 0 bytes")
    if num_samples == 0:
        raise ShardError(f"empty shard: {path} holds 0 samples ({path.parent / MANIFEST})")
    return Shard(str(path), num_samples)


def _manifest_counts(folder: Path, cache: dict[Path, dict[str, int]]) -> dict[str, int]:
    """{shard file name: num_samples} from folder/manifest.json, in manifest order ({} when absent)."""
    if folder not in cache:
        path = folder / MANIFEST
        cache[folder] = _read_manifest(path) if path.is_file() else {}
    return cache[folder]


def _read_manifest(path: Path) -> dict[str, int]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: unreadable manifest: {e}") from None
    entries = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise ShardError(f"{path}: expected an object with a 'shards' list")
    counts: dict[str, int] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        count = entry.get("num_samples") if isinstance(entry, dict) else None
        if not isinstance(name, str) or os.sep in name or name in ("", ".", ".."):
            raise ShardError(f"{path}: shards[{i}].name must be a file name, got {name!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ShardError(f"{path}: shards[{i}].num_samples must be an int >= 0, got {count!r}")
        counts[name] = count
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Splitting shards over workers. A "part" is (shard index, start, stop, stride, offset): the worker reads that shard
# and keeps the sample at position i when start <= i < stop and i % stride == offset. Over all workers every sample
# of every shard is kept exactly once.
# ---------------------------------------------------------------------------------------------------------------------

Part = tuple[int, int, int | None, int, int]


def train_parts(num_shards: int, total_workers: int, worker: int) -> list[Part]:
    """Disjoint training subsets: whole shards round-robin, or a 1/k slice of one shard when shards are few.

    With at least as many shards as workers, worker t owns shards t, t+T, ... . With fewer, each shard is
    shared by the k workers t with t % S == s and each keeps every k-th sample, so a worker reads one shard
    instead of all of them.
    """
    if not 0 <= worker < total_workers:
        raise ValueError(f"worker {worker} out of range for {total_workers} workers")
    if num_shards >= total_workers:
        return [(s, 0, None, 1, 0) for s in range(worker, num_shards, total_workers)]
    shard = worker % num_shards
    sharing = len(range(shard, total_workers, num_shards))
    return [(shard, 0, None, sharing, worker // num_shards)]


def eval_parts(counts: Sequence[int | None], total_workers: int, worker: int) -> list[Part]:
    """Exactly-once evaluation subsets: with known counts a contiguous, balanced range of the concatenated samples."""
    if any(c is None for c in counts):
        return train_parts(len(counts), total_workers, worker)
    total = sum(counts)  # type: ignore[arg-type]
    lo, hi = worker * total // total_workers, (worker + 1) * total // total_workers
    parts: list[Part] = []
    first = 0
    for s, count in enumerate(counts):
        start, stop = max(lo, first) - first, min(hi, first + count) - first  # type: ignore[operator]
        if start < stop:
            parts.append((s, start, stop, 1, 0))
        first += count  # type: ignore[operator]
    return parts
