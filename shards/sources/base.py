"""What every raw-dataset reader yields, and the CSV/path helpers they share.

A source lists a split as a deterministic stream of entries: an :class:`Item` (one clip to convert) or a
:class:`Skip` (a row that cannot become a sample, with the reason). Listing reads only metadata files;
audio is decoded later, in the conversion workers.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from shards.schema import Region

AUDIO_EXTENSIONS = ("flac", "wav", "mp3")
"""Extensions tried, in this order, where a layout allows any of them."""
MAX_CSV_FIELD = 1 << 24  # characters; Python's default (128 Ki) is too small for some Q&A answers


class SourceError(ValueError):
    """The raw dataset is not where or what it should be (wrong --src, missing CSV); names the path."""


@dataclass(frozen=True)
class Item:
    """One clip of a raw dataset: where its audio may be and what describes it."""

    source_id: str
    audio: tuple[Path, ...]
    """Candidate audio paths; the first that exists is used."""
    captions: tuple[str, ...] = ()
    strong: tuple[Region, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """A listing entry that cannot become a sample (bad row, blacklisted id); kept for the manifest."""

    source_id: str
    reason: str


Entry = Item | Skip


class Source:
    """A raw dataset in its official layout; subclasses read one dataset."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]

    def __init__(self, src: Path) -> None:
        self.src = Path(src)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this dataset's own command-line flags (none by default)."""

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> Source:
        """Build the source from `--src` and the parsed flags."""
        return cls(src)

    def entries(self, split: str) -> Iterator[Entry]:
        """Check the layout (raising SourceError now, not on first use) and return the split's entries."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The options that change the output; a resumed run must use the same."""
        return {}

    def manifest_extra(self, split: str, keys: dict[str, str]) -> dict[str, Any]:
        """Extra manifest fields for `split`; `keys` maps listed source ids to their sample keys."""
        return {}


def audio_candidates(
    folder: Path, stem: str, extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> tuple[Path, ...]:
    """``folder/stem.ext`` for each allowed extension."""
    return tuple(folder / f"{stem}.{ext}" for ext in extensions)


def first_dir(candidates: Sequence[Path]) -> Path:
    """The first existing folder among layout variants, else the first (the documented one)."""
    return next((p for p in candidates if p.is_dir()), candidates[0])


def find_file(candidates: Sequence[Path], what: str) -> Path:
    """The first existing file among layout variants; the error names the documented one."""
    for p in candidates:
        if p.is_file():
            return p
    others = "".join(f", {p}" for p in candidates[1:])
    hint = f" (also looked for{others[1:]})" if others else ""
    raise SourceError(f"{what} not found: {candidates[0]}{hint}; is --src the dataset's root folder?")


def read_text(path: Path, encodings: Sequence[str] = ("utf-8-sig",)) -> str:
    """Whole small text file, trying `encodings` in order (the last one should not fail)."""
    data = path.read_bytes()
    for enc in encodings[:-1]:
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode(encodings[-1])


def csv_rows(
    path: Path, required: Sequence[str], encoding: str = "utf-8-sig", delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream (line number, row dict) of a CSV with a header, checking `required` columns up front.

    Values are stripped; missing trailing fields become "". Line numbers count the header as line 1.
    One bad byte or NUL in a file of millions of rows must not stop a conversion: undecodable bytes
    become U+FFFD and NULs are dropped.
    """
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_FIELD))
    f = path.open(encoding=encoding, errors="replace", newline="")
    with f:
        reader = csv.reader((text.replace("\0", "") for text in f), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"{path}: empty file, expected a header with {', '.join(required)}") from None
        except csv.Error as e:
            raise SourceError(f"{path}: cannot read the header: {e}") from None
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise SourceError(f"{path}: unreadable near line {line + 1}: {e}") from None
            line = reader.line_num
            if not any(v.strip() for v in row):
                continue
            values = [v.strip() for v in row] + [""] * max(0, len(header) - len(row))
            yield line, dict(zip(header, values))


def parse_float(value: str, name: str) -> float:
    """A finite float from a CSV cell; ValueError names the column and the value."""
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} {value!r} is not finite")
    return x


def file_digest(path: Path) -> str:
    """Short sha256 of a small file, so settings change when an options file changes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def merge_regions(regions: Sequence[Region], touching: bool) -> list[Region]:
    """Merge regions of identical text whose times overlap (or also touch, if `touching`); sorted by onset.

    Merged regions keep the first region's meta.
    """
    by_text: dict[str, list[Region]] = {}
    for r in regions:
        by_text.setdefault(r.text, []).append(r)
    out: list[Region] = []
    for group in by_text.values():
        group = sorted(group, key=lambda r: (r.onset, r.offset))
        cur = group[0]
        for r in group[1:]:
            joins = r.onset <= cur.offset if touching else r.onset < cur.offset
            if joins:
                cur = Region(cur.text, cur.onset, max(cur.offset, r.offset), cur.meta)
            else:
                out.append(cur)
                cur = r
        out.append(cur)
    out.sort(key=lambda r: (r.onset, r.offset, r.text))
    return out
