"""Clotho v2.1 (aac-datasets layout; also the flat Zenodo layout).

    SRC/clotho_csv_files/clotho_captions_{split}.csv   file_name,caption_1..caption_5 (UTF-8)
    SRC/clotho_csv_files/clotho_metadata_{split}.csv   optional, ISO-8859-1
    SRC/clotho_csv_files/metadata_eval.csv             optional: query,audio_filenames (Python list literal)
    SRC/clotho_audio_files/{split}/{file_name}

Variants: the same tree under SRC/CLOTHO_v2.1/, CSVs directly in SRC, audio in SRC/{split}/.
"""

from __future__ import annotations

import ast
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.sources.base import (
    Entry,
    Item,
    Skip,
    Source,
    SourceError,
    csv_rows,
    find_file,
    first_dir,
    read_text,
)


class Clotho(Source):
    name = "clotho"
    splits = ("development", "validation", "evaluation")

    def _root(self) -> Path:
        nested = self.src / "CLOTHO_v2.1"
        return nested if (nested / "clotho_csv_files").is_dir() else self.src

    def _csv(self, name: str) -> list[Path]:
        root = self._root()
        return [root / "clotho_csv_files" / name, root / name]

    def entries(self, split: str) -> Iterator[Entry]:
        captions_csv = find_file(self._csv(f"clotho_captions_{split}.csv"), f"Clotho {split} captions CSV")
        root = self._root()
        audio_dir = first_dir([root / "clotho_audio_files" / split, root / split])
        metadata_csv = next((p for p in self._csv(f"clotho_metadata_{split}.csv") if p.is_file()), None)
        metadata = read_metadata(metadata_csv) if metadata_csv else {}
        required = ("file_name", "caption_1")
        return _entries(captions_csv, required, audio_dir, metadata)

    def manifest_extra(self, split: str, keys: dict[str, str]) -> dict[str, Any]:
        if split != "evaluation":
            return {}
        path = next((p for p in self._csv("metadata_eval.csv") if p.is_file()), None)
        if path is None:
            return {}
        relevance, problems = read_relevance(path)
        return {
            "relevance": relevance,
            "relevance_keys": {q: [keys[f] for f in files if f in keys] for q, files in relevance.items()},
            **({"relevance_skipped": problems} if problems else {}),
        }


def _entries(
    captions_csv: Path, required: tuple[str, ...], audio_dir: Path, metadata: dict[str, dict[str, Any]]
) -> Iterator[Entry]:
    for line, row in csv_rows(captions_csv, required):
        name = row["file_name"]
        if not name:
            yield Skip(f"{captions_csv.name}:{line}", "bad row: empty file_name")
            continue
        captions = tuple(v for k, v in row.items() if k.startswith("caption_") and v)
        if not captions:
            yield Skip(name, f"bad row: no captions ({captions_csv.name}:{line})")
            continue
        yield Item(name, (audio_dir / name,), captions=captions, meta=metadata.get(name, {}))


def read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """file_name -> meta (license, author, tags, sound id/link, start_end_samples). Small file: read whole.

    The release's metadata CSVs are ISO-8859-1; UTF-8 copies are accepted too.
    """
    text = read_text(path, ("utf-8-sig", "iso-8859-1"))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "file_name" not in [h.strip() for h in reader.fieldnames]:
        raise SourceError(f"{path}: missing column file_name; header is {reader.fieldnames}")
    out: dict[str, dict[str, Any]] = {}
    for row in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        name = row.pop("file_name", "")
        if not name:
            continue
        meta: dict[str, Any] = {}
        if row.get("license"):
            meta["license"] = row.pop("license")
        if row.get("manufacturer"):
            meta["author"] = row.pop("manufacturer")
        keywords = row.pop("keywords", "")
        meta["tags"] = [k.strip() for k in keywords.split(";") if k.strip()]
        meta.update({k: v for k, v in row.items() if k and v})
        out[name] = meta
    return out


def read_relevance(path: Path) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """metadata_eval.csv -> ({query: [file names]}, unreadable rows with the reason)."""
    relevance: dict[str, list[str]] = {}
    problems: list[dict[str, str]] = []
    for line, row in csv_rows(path, ("query", "audio_filenames")):
        where = f"{path.name}:{line}"
        try:
            files = ast.literal_eval(row["audio_filenames"])
        except (ValueError, SyntaxError):
            files = None
        if (
            not row["query"]
            or not isinstance(files, (list, tuple))
            or not all(isinstance(f, str) for f in files)
        ):
            problems.append({"row": where, "reason": "bad row: needs a query and a list of file names"})
            continue
        relevance.setdefault(row["query"], [])
        relevance[row["query"]] += [f for f in files if f not in relevance[row["query"]]]
    return relevance, problems
