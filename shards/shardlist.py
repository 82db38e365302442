"""Shard lists: urls from configs -> shard urls with sample counts, and how workers split them.

    shards = expand_urls("data/shards/clotho/development")           # split dir: every shard its manifest lists
    shards = expand_urls("x/train/x-train-{000000..000009}.tar")      # brace pattern (or a glob)
    shards = expand_urls("https://host/shards/clotho/development")   # remote split: its manifest.json, fetched
    shards = expand_urls("s3://bucket/x/train/x-train-{000000..000009}.tar")
    shards = expand_urls("pipe:curl -s https://host/x-{0..9}.tar", allow_pipe=True)

Sample counts come from the ``manifest.json`` beside the shards when there is one (None otherwise), read from
the same place as the shards (a file, or a GET of FOLDER/manifest.json); `split_manifests` names those manifests
(e.g. to read a split's relevance judgements). A remote url whose path ends in `.tar` is a shard; any other is a
split folder, whose manifest.json lists the shards (an object-store folder without one: its *.tar objects).
Globs work on local paths and object stores (they list), not on http(s) (no listing: use the folder or a brace
pattern). Remote shards are not checked for existence here (one request each): a missing one fails when read.
"""

from __future__ import annotations

import glob
import json
import os
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from shards.remote import (
    HTTP,
    ReadPolicy,
    check_url,
    is_remote,
    join_url,
    local_path,
    parent_url,
    read_bytes,
    scheme,
    store_glob,
    url_name,
)

MANIFEST = "manifest.json"
GLOB_CHARS = re.compile(r"[*?\[]")


class ShardError(ValueError):
    """Shard urls that cannot be used: no match, empty shard, a forbidden scheme; names the url."""


@dataclass(frozen=True)
class Shard:
    """One tar shard: where to read it and how many samples it holds (None: unknown)."""

    url: str
    num_samples: int | None = None


def expand_urls(
    urls: str | Sequence[str], allow_pipe: bool = False, policy: ReadPolicy | None = None
) -> list[Shard]:
    """Brace patterns, globs, split folders (via manifest.json), remote urls and `pipe:` urls -> shards, in order.

    `policy` governs the manifest reads of remote folders (retries, timeout).
    """
    return _Lister(allow_pipe, policy).expand(urls)


def split_manifests(
    urls: str | Sequence[str], allow_pipe: bool = False, policy: ReadPolicy | None = None
) -> list[str]:
    """The manifest.json (path or url) of each split folder that `urls` expand into, in order.

    Folders without a manifest and `pipe:` urls (nothing to read beside them) are left out.
    """
    lister = _Lister(allow_pipe, policy)
    folders: list[str] = []
    for shard in lister.expand(urls):
        if shard.url.startswith("pipe:"):
            continue
        folder = parent_url(shard.url)
        if folder not in folders:
            folders.append(folder)
    return [_manifest_url(f) for f in folders if lister.manifests.get(f) is not None]


class _Lister:
    """One expansion: the manifests read so far ({folder: {shard name: num_samples}}, None when it has none)."""

    def __init__(self, allow_pipe: bool, policy: ReadPolicy | None) -> None:
        self.allow_pipe, self.policy = allow_pipe, policy
        self.manifests: dict[str, dict[str, int] | None] = {}

    def expand(self, urls: str | Sequence[str]) -> list[Shard]:
        items = [urls] if isinstance(urls, str) else list(urls)
        if not items:
            raise ShardError("no shard urls given")
        shards: list[Shard] = []
        for item in items:
            if not isinstance(item, str) or not item.strip():
                raise ShardError(f"shard url must be a non-empty string, got {item!r}")
            shards.extend(self._one(item.strip()))
        seen: set[str] = set()
        for shard in shards:
            if shard.url in seen:
                raise ShardError(f"shard {shard.url} is listed twice in {urls!r}")
            seen.add(shard.url)
            if shard.num_samples == 0:
                raise ShardError(
                    f"empty shard: {shard.url} holds 0 samples ({_manifest_url(parent_url(shard.url))})"
                )
        return shards

    def _one(self, item: str) -> list[Shard]:
        if item.startswith("pipe:"):
            if not self.allow_pipe:
                raise ShardError(
                    f"{item}: pipe: urls run shell commands; set data.allow_pipe=true if you trust this config"
                )
            return [Shard(url) for url in braceexpand.braceexpand(item)]
        try:
            check_url(item)
        except ValueError as e:
            raise ShardError(str(e)) from None
        if is_remote(item):
            return [s for url in braceexpand.braceexpand(item) for s in self._remote(url)]
        return [
            s for pattern in braceexpand.braceexpand(local_path(item)) for s in self._local(item, pattern)
        ]

    # -- local paths ---------------------------------------------------------------------------------------------

    def _local(self, item: str, pattern: str) -> list[Shard]:
        path = Path(pattern)
        if path.is_dir():
            return self._local_dir(path)
        paths = sorted(Path(p) for p in glob.glob(pattern)) if GLOB_CHARS.search(pattern) else [path]
        if not paths:
            raise ShardError(f"shard pattern {item!r} matches no file ({pattern} has no match)")
        shards = []
        for p in paths:
            if not p.is_file():
                raise ShardError(f"shard pattern {item!r} matches no file: {p} does not exist")
            shards.append(_local_shard(p, (self._counts(str(p.parent)) or {}).get(p.name)))
        return shards

    def _local_dir(self, path: Path) -> list[Shard]:
        counts = self._counts(str(path))
        names = list(counts) if counts is not None else sorted(p.name for p in path.glob("*.tar"))
        if not names:
            raise ShardError(f"{path}: no {MANIFEST} and no .tar shards in this directory")
        out = []
        for name in names:
            p = path / name
            if not p.is_file():
                raise ShardError(f"{path / MANIFEST} lists shard {name}, but {p} does not exist")
            out.append(_local_shard(p, (counts or {}).get(name)))
        return out

    # -- remote urls ---------------------------------------------------------------------------------------------

    def _remote(self, url: str) -> list[Shard]:
        path = urllib.parse.urlsplit(url).path
        if GLOB_CHARS.search(path):
            if scheme(url) in HTTP:
                raise ShardError(
                    f"{url}: http(s) servers list no files, so globs cannot match; "
                    "use the split folder url (its manifest.json) or a brace pattern"
                )
            found = self._store_call(url, store_glob)
            if not found:
                raise ShardError(f"shard pattern {url!r} matches no object")
            return [Shard(u, (self._counts(parent_url(u)) or {}).get(url_name(u))) for u in found]
        if path.endswith(".tar"):
            return [Shard(url, (self._counts(parent_url(url)) or {}).get(url_name(url)))]
        folder = url.rstrip("/")
        counts = self._counts(folder)
        if counts is not None:
            names = list(counts)
        elif scheme(url) in HTTP:
            raise ShardError(
                f"{folder}: no {MANIFEST} at {_manifest_url(folder)}; a remote split folder needs its manifest "
                "(or give the shard urls, e.g. a brace pattern)"
            )
        else:
            names = [url_name(u) for u in self._store_call(f"{folder}/*.tar", store_glob)]
        if not names:
            raise ShardError(f"{folder}: no {MANIFEST} and no .tar shards in this folder")
        return [Shard(join_url(folder, name), (counts or {}).get(name)) for name in names]

    def _store_call(self, url: str, call):
        try:
            return call(url)
        except ImportError as e:
            raise ShardError(str(e)) from None
        except OSError as e:
            raise ShardError(f"{url}: cannot list: {type(e).__name__}: {e}") from None

    # -- manifests -----------------------------------------------------------------------------------------------

    def _counts(self, folder: str) -> dict[str, int] | None:
        """{shard file name: num_samples} of folder/manifest.json, in manifest order (None when there is none)."""
        if folder not in self.manifests:
            where = _manifest_url(folder)
            try:
                data = read_bytes(where, self.policy)
            except (FileNotFoundError, PermissionError, IsADirectoryError):
                # (a remote 403 too: stores that hide missing keys, and presigned shard urls, answer so)
                self.manifests[folder] = None
                return None
            except ImportError as e:
                raise ShardError(str(e)) from None
            except OSError as e:
                raise ShardError(f"{where}: cannot read the manifest: {e}") from None
            self.manifests[folder] = _parse_manifest(data, where)
        return self.manifests[folder]


def _manifest_url(folder: str) -> str:
    return join_url(folder, MANIFEST) if is_remote(folder) else str(Path(folder) / MANIFEST)


def _local_shard(path: Path, num_samples: int | None) -> Shard:
    if path.stat().st_size == 0:
        raise ShardError(f"empty shard: {path} has 0 bytes")
    return Shard(str(path), num_samples)


def _parse_manifest(data: bytes, where: str) -> dict[str, int]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{where}: unreadable manifest: {e}") from None
    entries = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise ShardError(f"{where}: expected an object with a 'shards' list")
    counts: dict[str, int] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        count = entry.get("num_samples") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name or os.sep in name or name in ("", ".", ".."):
            raise ShardError(f"{where}: shards[{i}].name must be a file name, got {name!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ShardError(f"{where}: shards[{i}].num_samples must be an int >= 0, got {count!r}")
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
