"""Clotho v2.1 (Zenodo record 4783391; also as aac-datasets lays it out).

    SRC/clotho_csv_files/clotho_captions_{split}.csv   file_name,caption_1,...,caption_5 (UTF-8, CRLF)
    SRC/clotho_csv_files/clotho_metadata_{split}.csv   optional; ISO-8859-1 in the release (UTF-8 accepted)
    SRC/clotho_csv_files/metadata_eval.csv             optional: query,audio_filenames (Python list literal)
    SRC/clotho_audio_files/{split}/{file_name}         44.1 kHz mono WAV

Variants: the tree under SRC/CLOTHO_v2.1/; CSVs directly in SRC; audio in SRC/{split}/ (as the release's
7z archives unpack) or SRC/clotho_audio_{split}/; --audio-dir DIR (DIR/{split}/ or DIR itself).
File names are used exactly as the release writes them: three begin with a space (' Ambience Birds.wav'),
some carry literal HTML entities ('121006_rain&amp;storm.wav' is also the name on disk).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.sources.base import (
    BadRow,
    Entry,
    Layout,
    Skip,
    Source,
    audio_item,
    bad_row_skip,
    clean_texts,
    csv_rows,
    find_file,
    read_text,
)

METADATA_ENCODINGS = ("utf-8-sig", "iso-8859-1")
"""The release's metadata CSVs are ISO-8859-1 (bytes such as 0xC1); UTF-8 copies are read as UTF-8."""


class Clotho(Source):
    name = "clotho"
    splits = ("development", "validation", "evaluation")

    def _root(self) -> Path:
        nested = self.src / "CLOTHO_v2.1"
        return nested if (nested / "clotho_csv_files").is_dir() else self.src

    def _csv(self, name: str) -> list[Path]:
        root = self._root()
        return [root / "clotho_csv_files" / name, root / name]

    def _optional(self, name: str) -> Path | None:
        return next((p for p in self._csv(name) if p.is_file()), None)

    def _folders(self, split: str) -> tuple[Path, ...]:
        root = self._root()
        defaults = [root / "clotho_audio_files" / split, root / split, root / f"clotho_audio_{split}"]
        return self.audio_folders(split, defaults)

    def layout(self, split: str) -> Layout:
        files = {
            "captions": find_file(self._csv(f"clotho_captions_{split}.csv"), f"Clotho {split} captions CSV")
        }
        metadata = self._optional(f"clotho_metadata_{split}.csv")
        if metadata:
            files["metadata"] = metadata
        relevance = self._optional("metadata_eval.csv") if split == "evaluation" else None
        if relevance:
            files["relevance"] = relevance
        return Layout(files, self._folders(split))

    def entries(self, split: str) -> Iterator[Entry]:
        layout = self.layout(split)
        metadata: dict[str, dict[str, Any]] = {}
        problems: list[Skip] = []
        if "metadata" in layout.files:
            metadata, problems = read_metadata(layout.files["metadata"], self.encoding)
        return _entries(layout.files["captions"], self.csv_encoding(), layout.audio, metadata, problems)

    def manifest_extra(self, split: str, keys: dict[str, str]) -> dict[str, Any]:
        if split != "evaluation":
            return {}
        path = self._optional("metadata_eval.csv")
        if path is None:
            return {}
        relevance, problems = read_relevance(path, self.csv_encoding())
        return {
            "relevance": relevance,
            "relevance_keys": {q: [keys[f] for f in files if f in keys] for q, files in relevance.items()},
            **({"relevance_skipped": problems} if problems else {}),
        }


def _entries(
    captions_csv: Path,
    encoding: str,
    folders: tuple[Path, ...],
    metadata: dict[str, dict[str, Any]],
    problems: list[Skip],
) -> Iterator[Entry]:
    yield from problems
    for line, row in csv_rows(captions_csv, ("file_name", "caption_1"), encoding):
        if isinstance(row, BadRow):
            yield bad_row_skip(captions_csv, line, row)
            continue
        name = row["file_name"]  # exactly as written: ' Ambience Birds.wav' is a real name
        if not name.strip():
            yield Skip(f"{captions_csv.name}:{line}", "bad row: empty file_name")
            continue
        captions = clean_texts(v for k, v in row.items() if k.startswith("caption_"))
        if not captions:
            yield Skip(name, f"bad row: no captions ({captions_csv.name}:{line})")
            continue
        yield audio_item(name, folders, [("{file_name}", name)], captions, meta=metadata.get(name, {}))


def read_metadata(path: Path, encoding: str | None = None) -> tuple[dict[str, dict[str, Any]], list[Skip]]:
    """(file_name -> meta (license, author, tags, sound id/link, start_end_samples), unreadable rows).

    The release's metadata CSVs are ISO-8859-1; UTF-8 copies are accepted too; --encoding overrides both.
    An unreadable row is listed (the clip keeps its captions, without this metadata).
    """
    _, detected = read_text(path, (encoding,) if encoding else METADATA_ENCODINGS)
    out: dict[str, dict[str, Any]] = {}
    problems: list[Skip] = []
    for line, row in csv_rows(path, ("file_name",), detected):
        if isinstance(row, BadRow):
            problems.append(
                Skip(
                    f"{path.name}:{line}",
                    f"bad row: {row.reason}; metadata only, the clip is kept ({path.name}:{line})",
                )
            )
            continue
        name = row.pop("file_name")
        if not name.strip():
            continue
        row = {k: v.strip() for k, v in row.items() if k}
        meta: dict[str, Any] = {}
        if row.get("license"):
            meta["license"] = row.pop("license")
        if row.get("manufacturer"):
            meta["author"] = row.pop("manufacturer")
        keywords = row.pop("keywords", "")
        meta["tags"] = [k.strip() for k in keywords.split(";") if k.strip()]
        meta.update({k: v for k, v in row.items() if v})
        out[name] = meta
    return out, problems


def read_relevance(path: Path, encoding: str) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """metadata_eval.csv -> ({query: [file names]}, unreadable rows with the reason)."""
    relevance: dict[str, list[str]] = {}
    problems: list[dict[str, str]] = []
    for line, row in csv_rows(path, ("query", "audio_filenames"), encoding):
        where = f"{path.name}:{line}"
        files = None
        if not isinstance(row, BadRow):
            try:
                files = ast.literal_eval(row["audio_filenames"])
            except (ValueError, SyntaxError):
                files = None
        if (
            isinstance(row, BadRow)
            or not row["query"].strip()
            or not isinstance(files, (list, tuple))
            or not all(isinstance(f, str) for f in files)
        ):
            problems.append({"row": where, "reason": "bad row: needs a query and a list of file names"})
            continue
        query = row["query"].strip()
        relevance.setdefault(query, [])
        relevance[query] += [f for f in files if f not in relevance[query]]
    return relevance, problems
