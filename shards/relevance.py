"""Multi-relevance judgements of an evaluation split: query caption -> the clips it describes.

They come from a split's manifest.json (`relevance_keys`: query -> sample keys, written by the Clotho converter
from DCASE 2025's `metadata_eval.csv`; or `relevance`: query -> file names) or from such a CSV given directly.
`load_relevance` finds the manifests of shard urls with the url rules of `shards.shardlist` (a remote split's
manifest is fetched from beside its shards). Entries are returned as written (keys or file names); matching them
to evaluated clips is `trainer.metrics.judged_relevance`.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shards.remote import ReadPolicy, is_remote, read_bytes, url_name
from shards.shardlist import split_manifests


def parse_relevance(obj: Any, source: str = "relevance") -> dict[str, list[str]]:
    """Normalise relevance judgements: {query: [files]} or [{"query", "audio_filenames"|"files"|"keys"}, ...].

    A list given as a string (the `metadata_eval.csv` form, "['a.wav', 'b.wav']") is parsed as a Python literal.
    """

    def names(value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                value = [value]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{source}: {where}: expected a list of file names or keys, got {value!r}")
        return list(value)

    out: dict[str, list[str]] = {}
    if isinstance(obj, Mapping):
        for query, value in obj.items():
            out.setdefault(str(query), []).extend(names(value, f"query {query!r}"))
    elif isinstance(obj, list):
        for i, row in enumerate(obj):
            if not isinstance(row, Mapping) or "query" not in row:
                raise ValueError(f"{source}: entry {i}: expected an object with 'query', got {row!r}")
            field = next((f for f in ("audio_filenames", "files", "keys") if f in row), None)
            if field is None:
                raise ValueError(f"{source}: entry {i}: needs 'audio_filenames', 'files' or 'keys'")
            out.setdefault(str(row["query"]), []).extend(names(row[field], f"entry {i}"))
    else:
        raise ValueError(f"{source}: expected a mapping or a list, got {type(obj).__name__}")
    return out


def read_relevance(path: str | Path, policy: ReadPolicy | None = None) -> dict[str, list[str]] | None:
    """Relevance judgements from a split's manifest.json (None when it has none) or a metadata_eval.csv.

    `path` is a file or a url (http(s), s3, gs, hf), read with `policy`'s retries.
    """
    remote = isinstance(path, str) and is_remote(path)
    if not remote:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: relevance file not found")
    text = read_bytes(str(path), policy).decode("utf-8")
    if url_name(str(path)).lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"query", "audio_filenames"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns query,audio_filenames, got {reader.fieldnames}")
        return parse_relevance(list(reader), str(path))
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object")
    # `relevance_keys` (query -> sample keys, written by the converter) is exact; `relevance` names files.
    field = next((f for f in ("relevance_keys", "relevance") if manifest.get(f) is not None), None)
    if field is None:
        return None
    return parse_relevance(manifest[field], f"{path}: {field}")


def load_relevance(
    urls: str | Sequence[str], allow_pipe: bool = False, policy: ReadPolicy | None = None
) -> dict[str, list[str]] | None:
    """Merged judgements of the manifests of the splits `urls` expand into; None when no manifest has any."""
    merged: dict[str, list[str]] | None = None
    for path in split_manifests(urls, allow_pipe, policy):
        rel = read_relevance(path, policy)
        if rel is not None:
            merged = merged or {}
            for query, names in rel.items():
                merged.setdefault(query, []).extend(names)
    return merged
