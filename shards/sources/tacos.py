"""TACOS (Zenodo record 15379789): strong region captions of trimmed Freesound clips, plus clip captions.

    SRC/metadata.csv             filename,keywords,freesound_id,...,subclass,...,start_time_s,end_time_s,...
                                 (20 columns; keywords ", "-joined; the clip is [start_time_s, end_time_s]
                                 of the Freesound recording)
    SRC/annotations_strong.csv   filename,text,onset,offset   one row per region caption, seconds in the clip
    SRC/annotations_weak.csv     filename,text                clip-level caption(s)
    SRC/development_split.csv    filename                     the official split: our "train" ...
    SRC/test_split.csv           filename                     ... and "test"
    SRC/audio.zip                {freesound_id}.mp3 at the archive root, unpacked into SRC/audio/ or SRC

Variants: the same files under SRC/tacos/ (the TACOS code's data/tacos/); a weak caption column named
``caption`` (what the TACOS code renames to ``text``); audio in --audio-dir DIR. Without the split files,
the test split is drawn as the TACOS code does: ``train_test_split(metadata, test_size=N / len(metadata),
stratify=subclass, random_state=42)`` (scikit-learn), N = --test-size (2000); where stratifying is
impossible (a subclass with one clip, fewer test clips than subclasses) the same call without stratify,
and the manifest says so. --exclude-ids drops clips after the split, as the TACOS code does.

Some strong rows of the release are invalid. A region with a negative onset starts at 0; one ending past
the clip (end_time_s - start_time_s) ends there; one with offset <= onset, an empty text or a time that is
not a number is dropped. Every such fix is listed in the manifest's ``region_fixes``; a clip keeps its
valid regions and its clip captions, and is skipped only if nothing is left.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.schema import Region
from shards.sources.base import (
    BadRow,
    Entry,
    Layout,
    Skip,
    Source,
    SourceError,
    audio_item,
    bad_row_skip,
    csv_header,
    csv_rows,
    file_digest,
    find_file,
    merge_regions,
    parse_float,
)

SEED = 42
DEFAULT_TEST_SIZE = 2000
STRONG_COLUMNS = ("filename", "text", "onset", "offset")
WEAK_TEXT_COLUMNS = ("text", "caption")
"""The release's weak caption column is ``text``; ``caption`` is accepted too."""
SPLIT_FILES = {"train": "development_split.csv", "test": "test_split.csv"}
END_TOLERANCE = 1e-4
"""Seconds a region may end past the clip before it is clipped (and listed)."""

Rows = dict[str, list[tuple[int, dict[str, str]]]]


class Tacos(Source):
    name = "tacos"
    splits = ("train", "test")

    def __init__(
        self,
        src: Path,
        test_size: int | None = None,
        exclude_ids: Path | None = None,
        *,
        audio_dir: Path | None = None,
        encoding: str | None = None,
    ) -> None:
        super().__init__(src, audio_dir=audio_dir, encoding=encoding)
        if test_size is not None and test_size < 0:
            raise SourceError(f"--test-size must be >= 0, got {test_size}")
        self.test_size_given = test_size is not None
        self.test_size = DEFAULT_TEST_SIZE if test_size is None else test_size
        self.exclude_ids = Path(exclude_ids) if exclude_ids else None
        self.split_method = ""
        self.region_fixes: dict[str, list[dict[str, str]]] = {}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--test-size",
            type=int,
            metavar="N",
            help=f"only without the release's split files: clips in the held-out test split, stratified by "
            f"subclass, seed {SEED} (default {DEFAULT_TEST_SIZE})",
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
        return cls(src, args.test_size, args.exclude_ids, audio_dir=args.audio_dir, encoding=args.encoding)

    def _root(self) -> Path:
        nested = self.src / "tacos"
        return nested if (nested / "metadata.csv").is_file() else self.src

    def _split_files(self) -> dict[str, Path]:
        root = self._root()
        return {s: root / name for s, name in SPLIT_FILES.items() if (root / name).is_file()}

    def settings(self) -> dict[str, Any]:
        excluded = None
        if self.exclude_ids is not None:
            path = find_file([self.exclude_ids], "--exclude-ids file")
            excluded = {"file": path.name, "sha256": file_digest(path)}
        split_files = self._split_files()
        split: Any = {p.name: file_digest(p) for p in split_files.values()} or {"test_size": self.test_size}
        return {**super().settings(), "split": split, "exclude_ids": excluded}

    def manifest_extra(self, split: str, keys: dict[str, str]) -> dict[str, Any]:
        extra: dict[str, Any] = {"split_method": self.split_method} if self.split_method else {}
        if self.region_fixes.get(split):
            extra["region_fixes"] = self.region_fixes[split]
        return extra

    def layout(self, split: str) -> Layout:
        root = self._root()
        files = {
            "metadata": find_file([root / "metadata.csv"], "TACOS metadata.csv"),
            "strong": find_file([root / "annotations_strong.csv"], "TACOS annotations_strong.csv"),
            "weak": find_file([root / "annotations_weak.csv"], "TACOS annotations_weak.csv"),
            **{f"{s} split": path for s, path in self._split_files().items()},
        }
        notes = (
            ("official split files",)
            if self._split_files()
            else (f"no split files: --test-size {self.test_size}",)
        )
        return Layout(files, self.audio_folders(split, [root / "audio", root]), notes)

    def entries(self, split: str) -> Iterator[Entry]:
        layout = self.layout(split)
        files, encoding = layout.files, self.csv_encoding()
        excluded = (
            read_sound_ids(find_file([self.exclude_ids], "--exclude-ids file"), encoding)
            if self.exclude_ids
            else set()
        )
        rows = [(line, row) for line, row in csv_rows(files["metadata"], ("filename", "subclass"), encoding)]
        bad = [bad_row_skip(files["metadata"], line, row) for line, row in rows if isinstance(row, BadRow)]
        good = [(line, row) for line, row in rows if not isinstance(row, BadRow)]
        chosen, unlisted = self._choose(split, good, files["metadata"])
        strong, strong_bad = group_rows(files["strong"], STRONG_COLUMNS, encoding)
        weak_column = next((c for c in WEAK_TEXT_COLUMNS if c in csv_header(files["weak"], encoding)), "text")
        weak, weak_bad = group_rows(files["weak"], ("filename", weak_column), encoding)
        self.region_fixes[split] = []
        return _entries(
            layout.audio,
            files["metadata"],
            chosen,
            strong,
            {f: [r[weak_column] for _, r in rs] for f, rs in weak.items()},
            excluded,
            self.region_fixes[split],
            [*bad, *unlisted, *strong_bad, *weak_bad] if split == "train" else [*unlisted],
        )

    def _choose(
        self, split: str, rows: list[tuple[int, dict[str, str]]], metadata: Path
    ) -> tuple[list[tuple[int, dict[str, str]]], list[Skip]]:
        """The metadata rows of `split`, in metadata.csv order, and split-file names metadata.csv lacks."""
        split_files = self._split_files()
        if not split_files:
            test, self.split_method = test_rows([r["subclass"] for _, r in rows], self.test_size, metadata)
            return [(line, row) for i, (line, row) in enumerate(rows) if (i in test) == (split == "test")], []
        if self.test_size_given:
            self.warnings.append("--test-size is ignored: the release's split files define the split")
        names = {s: read_names(p, self.csv_encoding()) for s, p in split_files.items()}
        in_metadata = {row["filename"] for _, row in rows}
        if split in names:
            mine = set(names[split])
            self.split_method = f"official: {split_files[split].name}"
        else:  # only the other split's file: this split is the rest
            other = next(iter(names))
            mine = in_metadata - set(names[other])
            self.split_method = f"official: all of metadata.csv but {split_files[other].name}"
        listed = set().union(*names.values())
        nowhere = sum(1 for f in in_metadata if f not in listed)
        if nowhere and len(names) == 2:
            self.warnings.append(f"{nowhere} clips of metadata.csv are in neither split file; not converted")
        unlisted = [
            Skip(f, f"bad row: listed in {split_files[split].name} but not in metadata.csv")
            for f in names.get(split, [])
            if f not in in_metadata
        ]
        return [(line, row) for line, row in rows if row["filename"] in mine], unlisted


def read_names(path: Path, encoding: str) -> list[str]:
    """The `filename` column of a split file, in order, duplicates dropped."""
    out = [
        row["filename"] for _, row in csv_rows(path, ("filename",), encoding) if not isinstance(row, BadRow)
    ]
    return list(dict.fromkeys(f for f in out if f.strip()))


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


def read_sound_ids(path: Path, encoding: str) -> set[str]:
    """The `sound_id` column of an exclusion CSV, as strings."""
    rows = csv_rows(path, ("sound_id",), encoding)
    return {
        row["sound_id"].strip() for _, row in rows if not isinstance(row, BadRow) and row["sound_id"].strip()
    }


def group_rows(path: Path, required: tuple[str, ...], encoding: str) -> tuple[Rows, list[Skip]]:
    """(filename -> its (line, row) pairs in file order, unreadable rows); one file's rows need not be adjacent."""
    out: Rows = {}
    bad: list[Skip] = []
    for line, row in csv_rows(path, required, encoding):
        if isinstance(row, BadRow):
            bad.append(bad_row_skip(path, line, row))
        else:
            out.setdefault(row["filename"], []).append((line, row))
    return out, bad


def clip_seconds(row: dict[str, str]) -> float | None:
    """end_time_s - start_time_s of a metadata row, if both are numbers and the difference is positive."""
    try:
        seconds = parse_float(row.get("end_time_s", ""), "end_time_s") - parse_float(
            row.get("start_time_s", ""), "start_time_s"
        )
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def regions_of(
    filename: str, rows: list[tuple[int, dict[str, str]]], path: Path, seconds: float | None
) -> tuple[list[Region], list[dict[str, str]]]:
    """(valid regions of one clip, merged where identical texts overlap; the fixes made on the way)."""
    regions, fixes = [], []

    def fix(where: str, action: str, reason: str) -> None:
        fixes.append({"source_id": filename, "row": where, "action": action, "reason": reason})

    for line, row in rows:
        where = f"{path.name}:{line}"
        text = row["text"].strip()
        try:
            onset = parse_float(row["onset"], "onset")
            offset = parse_float(row["offset"], "offset")
        except ValueError as e:
            fix(where, "dropped", str(e))
            continue
        if not text:
            fix(where, "dropped", "empty text")
            continue
        if offset <= onset or offset <= 0:
            fix(
                where,
                "dropped",
                f"offset {offset} <= onset {onset}" if offset <= onset else f"offset {offset} <= 0",
            )
            continue
        if seconds is not None and onset >= seconds:
            fix(where, "dropped", f"onset {onset} is past the clip end {seconds:g}")
            continue
        if onset < 0:
            fix(where, "clipped", f"onset {onset} < 0, set to 0")
            onset = 0.0
        if seconds is not None and offset > seconds + END_TOLERANCE:
            fix(where, "clipped", f"offset {offset} is past the clip end {seconds:g}, set to it")
            offset = seconds
        extra = {k: v for k, v in row.items() if k not in STRONG_COLUMNS and v}
        regions.append(Region(text, onset, offset, extra))
    return merge_regions(regions, touching=False), fixes


def _entries(
    folders: tuple[Path, ...],
    metadata_csv: Path,
    chosen: list[tuple[int, dict[str, str]]],
    strong: Rows,
    weak: dict[str, list[str]],
    excluded: set[str],
    fixes: list[dict[str, str]],
    problems: list[Skip],
) -> Iterator[Entry]:
    strong_csv = metadata_csv.with_name("annotations_strong.csv")
    yield from problems
    for line, row in chosen:
        filename = row["filename"]
        if not filename.strip():
            yield Skip(f"{metadata_csv.name}:{line}", "bad row: empty filename")
            continue
        if Path(filename).stem in excluded:
            yield Skip(filename, "excluded id: listed in --exclude-ids")
            continue
        regions, fixed = regions_of(filename, strong.get(filename, []), strong_csv, clip_seconds(row))
        fixes.extend(fixed)
        captions = tuple(c.strip() for c in weak.get(filename, []) if c.strip())
        if not regions and not captions:
            yield Skip(filename, "bad row: no valid region and no clip caption in the annotation files")
            continue
        meta: dict[str, Any] = {k: v.strip() for k, v in row.items() if k != "filename" and v.strip()}
        meta["keywords"] = [k.strip() for k in row.get("keywords", "").split(", ") if k.strip()]
        yield audio_item(filename, folders, [("{filename}", filename)], captions, tuple(regions), meta)
