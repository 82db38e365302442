"""TACOS (Zenodo release): strong region captions of trimmed Freesound clips, plus clip captions.

    SRC/metadata.csv             filename,subclass,keywords,start_time_s,end_time_s,... (keywords ", "-joined)
    SRC/annotations_strong.csv   filename,text,onset,offset,...   one row per region caption (seconds)
    SRC/annotations_weak.csv     filename,caption,...             clip-level caption(s)
    SRC/audio/{filename}         "{freesound_id}.mp3"

Variant: the same files under SRC/tacos/. The release has no test split; as the TACOS code does, the
test split is ``train_test_split(metadata, test_size=N / len(metadata), stratify=subclass,
random_state=42)`` (scikit-learn), N = --test-size (2000). Where stratifying is impossible (a subclass
with one clip, or fewer test clips than subclasses) the split is the same call without stratify, and the
manifest says so. --exclude-ids drops clips after the split, as the TACOS code does, so the split
does not depend on the exclusion list.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.schema import Region
from shards.sources.base import (
    Entry,
    Item,
    Skip,
    Source,
    SourceError,
    csv_rows,
    file_digest,
    find_file,
    merge_regions,
    parse_float,
)

SEED = 42
DEFAULT_TEST_SIZE = 2000
STRONG_COLUMNS = ("filename", "text", "onset", "offset")
WEAK_COLUMNS = ("filename", "caption")


class Tacos(Source):
    name = "tacos"
    splits = ("train", "test")

    def __init__(
        self, src: Path, test_size: int = DEFAULT_TEST_SIZE, exclude_ids: Path | None = None
    ) -> None:
        super().__init__(src)
        if test_size < 0:
            raise SourceError(f"--test-size must be >= 0, got {test_size}")
        self.test_size = test_size
        self.exclude_ids = Path(exclude_ids) if exclude_ids else None
        self.split_method = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--test-size",
            type=int,
            default=DEFAULT_TEST_SIZE,
            metavar="N",
            help=f"clips in the held-out test split, stratified by subclass, seed {SEED} "
            "(default %(default)s)",
        )
        parser.add_argument(
            "--exclude-ids",
            type=Path,
            metavar="FILE",
            help="CSV with a sound_id column (e.g. DCASE 2025's excluded Freesound ids); "
            "those clips are dropped",
        )

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> Tacos:
        return cls(src, args.test_size, args.exclude_ids)

    def _root(self) -> Path:
        nested = self.src / "tacos"
        return nested if (nested / "metadata.csv").is_file() else self.src

    def settings(self) -> dict[str, Any]:
        excluded = None
        if self.exclude_ids is not None:
            path = find_file([self.exclude_ids], "--exclude-ids file")
            excluded = {"file": path.name, "sha256": file_digest(path)}
        return {"test_size": self.test_size, "exclude_ids": excluded}

    def manifest_extra(self, split: str, keys: dict[str, str]) -> dict[str, Any]:
        return {"split_method": self.split_method} if self.split_method else {}

    def entries(self, split: str) -> Iterator[Entry]:
        root = self._root()
        metadata_csv = find_file([root / "metadata.csv"], "TACOS metadata.csv")
        strong_csv = find_file([root / "annotations_strong.csv"], "TACOS annotations_strong.csv")
        weak_csv = find_file([root / "annotations_weak.csv"], "TACOS annotations_weak.csv")
        excluded = (
            read_sound_ids(find_file([self.exclude_ids], "--exclude-ids file")) if self.exclude_ids else set()
        )
        rows = list(csv_rows(metadata_csv, ("filename", "subclass")))
        test, self.split_method = test_rows([r["subclass"] for _, r in rows], self.test_size, metadata_csv)
        chosen = [(line, row) for i, (line, row) in enumerate(rows) if (i in test) == (split == "test")]
        strong = group_rows(strong_csv, STRONG_COLUMNS)
        weak = group_rows(weak_csv, WEAK_COLUMNS)
        return _entries(root / "audio", metadata_csv, chosen, strong, weak, excluded)


def test_rows(subclasses: list[str], test_size: int, path: Path) -> tuple[set[int], str]:
    """Row indices of the test split and how it was drawn (see the module docstring)."""
    n = len(subclasses)
    if test_size == 0:
        return set(), "none (--test-size 0)"
    if test_size >= n:
        raise SourceError(f"--test-size {test_size} must be smaller than the {n} clips listed in {path}")
    import numpy as np
    from sklearn.model_selection import train_test_split  # heavy import, only TACOS needs it

    index = np.arange(n)
    try:
        _, test = train_test_split(index, test_size=test_size / n, stratify=subclasses, random_state=SEED)
        method = f"stratified by subclass, random_state={SEED}"
    except ValueError as e:
        _, test = train_test_split(index, test_size=test_size / n, random_state=SEED)
        method = f"random, random_state={SEED} (cannot stratify: {e})"
    return {int(i) for i in test}, method


def read_sound_ids(path: Path) -> set[str]:
    """The `sound_id` column of an exclusion CSV, as strings."""
    return {row["sound_id"] for _, row in csv_rows(path, ("sound_id",)) if row["sound_id"]}


def group_rows(path: Path, required: tuple[str, ...]) -> dict[str, list[tuple[int, dict[str, str]]]]:
    """filename -> its (line, row) pairs, in file order (one file's rows need not be adjacent)."""
    out: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in csv_rows(path, required):
        out.setdefault(row["filename"], []).append((line, row))
    return out


def regions_of(filename: str, rows: list[tuple[int, dict[str, str]]], path: Path) -> list[Region]:
    """Region captions of one file, merged where identical texts overlap; ValueError names the bad row."""
    regions = []
    for line, row in rows:
        where = f"{path.name}:{line}"
        onset = parse_float(row["onset"], "onset")
        offset = parse_float(row["offset"], "offset")
        if not row["text"]:
            raise ValueError(f"empty text ({where})")
        if onset < 0:
            raise ValueError(f"onset {onset} < 0 ({where})")
        if onset > offset:
            raise ValueError(f"onset {onset} > offset {offset} ({where})")
        if onset == offset:
            continue  # a zero-length region carries no time information
        extra = {k: v for k, v in row.items() if k not in STRONG_COLUMNS and v}
        regions.append(Region(row["text"], onset, offset, extra))
    return merge_regions(regions, touching=False)


def _entries(
    audio_dir: Path,
    metadata_csv: Path,
    chosen: list[tuple[int, dict[str, str]]],
    strong: dict[str, list[tuple[int, dict[str, str]]]],
    weak: dict[str, list[tuple[int, dict[str, str]]]],
    excluded: set[str],
) -> Iterator[Entry]:
    strong_csv = metadata_csv.with_name("annotations_strong.csv")
    for line, row in chosen:
        filename = row["filename"]
        if not filename:
            yield Skip(f"{metadata_csv.name}:{line}", "bad row: empty filename")
            continue
        if Path(filename).stem in excluded:
            yield Skip(filename, "excluded id: listed in --exclude-ids")
            continue
        try:
            regions = regions_of(filename, strong.get(filename, []), strong_csv)
        except ValueError as e:
            yield Skip(filename, f"bad region: {e}")
            continue
        weak_rows = [r for _, r in weak.get(filename, [])]
        captions = tuple(r["caption"] for r in weak_rows if r["caption"])
        if not regions and not captions:
            yield Skip(filename, "bad row: no region or clip captions in the annotation files")
            continue
        meta: dict[str, Any] = {k: v for k, v in row.items() if k != "filename" and v}
        meta["keywords"] = [k.strip() for k in row.get("keywords", "").split(", ") if k.strip()]
        weak_extra = [{k: v for k, v in r.items() if k not in WEAK_COLUMNS and v} for r in weak_rows]
        if any(weak_extra):
            meta["caption_meta"] = weak_extra
        yield Item(filename, (audio_dir / filename,), captions, tuple(regions), meta)
