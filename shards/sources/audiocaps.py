"""AudioCaps v1 and 2.0 (the CSVs of github.com/cdjkim/audiocaps; the audio is the user's own download).

    SRC/dataset/{split}.csv       audiocap_id,youtube_id,start_time,caption   (v1; one row per caption)
    SRC/dataset2.0/{split}.csv    the same columns, AudioCaps 2.0 (--version v2)
    SRC/audio_32000Hz/{split}/{youtube_id}_{start_time}.{flac,wav,mp3}

CSV variants: aac-datasets' SRC/csv_files_v1/ and SRC/csv_files_v2/, SRC/{split}.csv, the whole tree under
SRC/AUDIOCAPS/. Audio folders: SRC/audio_32000Hz/{split}/, SRC/audio/{split}/, SRC/{split}/, or
--audio-dir DIR (DIR/{split}/ or DIR itself). Audio namings, tried in this order:
``{youtube_id}_{start_time}.{flac,wav,mp3}`` (aac-datasets, most downloaders) and
``Y{youtube_id}.{wav,flac,mp3}`` (WavCaps' AudioCaps audio, AudioSet-style downloaders; a YouTube id has one
clip per split). Rows of one clip (same youtube_id and start_time) become one sample with all its captions,
in the order the clip first appears.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from shards.sources.base import (
    BadRow,
    Entry,
    Layout,
    Skip,
    Source,
    audio_item,
    bad_row_skip,
    csv_rows,
    find_file,
    with_extensions,
)

CSV_FOLDERS = {"v1": ("csv_files_v1", "dataset"), "v2": ("csv_files_v2", "dataset2.0")}


class AudioCaps(Source):
    name = "audiocaps"
    splits = ("train", "val", "test")

    def __init__(
        self,
        src: Path,
        version: str = "v1",
        *,
        audio_dir: Path | None = None,
        encoding: str | None = None,
    ) -> None:
        super().__init__(src, audio_dir=audio_dir, encoding=encoding)
        if version not in CSV_FOLDERS:
            raise ValueError(f"version must be one of {', '.join(CSV_FOLDERS)}, got {version!r}")
        self.version = version

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--version",
            choices=tuple(CSV_FOLDERS),
            default="v1",
            help="which CSVs: v1 (dataset/ or csv_files_v1/) or v2 (dataset2.0/ or csv_files_v2/); "
            "default %(default)s",
        )

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> AudioCaps:
        return cls(src, args.version, audio_dir=args.audio_dir, encoding=args.encoding)

    def settings(self) -> dict:
        return {**super().settings(), "version": self.version}

    def _root(self) -> Path:
        nested = self.src / "AUDIOCAPS"
        return nested if nested.is_dir() else self.src

    def layout(self, split: str) -> Layout:
        root = self._root()
        candidates = [root / folder / f"{split}.csv" for folder in CSV_FOLDERS[self.version]]
        csv_path = find_file([*candidates, root / f"{split}.csv"], f"AudioCaps {self.version} {split} CSV")
        defaults = [root / "audio_32000Hz" / split, root / "audio" / split, root / split]
        return Layout(
            {"captions": csv_path}, self.audio_folders(split, defaults), (f"AudioCaps {self.version}",)
        )

    def entries(self, split: str) -> Iterator[Entry]:
        layout = self.layout(split)
        return _entries(layout.files["captions"], self.csv_encoding(), layout.audio)


def start_seconds(value: str) -> str:
    """start_time as written in file names: '30', also from '30.0'; ValueError if not a whole number."""
    x = float(value)
    if x < 0 or x != int(x):
        raise ValueError(value)
    return str(int(x))


def _entries(csv_path: Path, encoding: str, folders: tuple[Path, ...]) -> Iterator[Entry]:
    # One clip's rows need not be adjacent (they are not in the release), so group the file (~50k rows) first.
    clips: dict[str, dict] = {}
    bad: list[Skip] = []
    for line, row in csv_rows(csv_path, ("youtube_id", "start_time", "caption"), encoding):
        where = f"{csv_path.name}:{line}"
        if isinstance(row, BadRow):
            bad.append(bad_row_skip(csv_path, line, row))
            continue
        ytid, caption = row["youtube_id"], row["caption"].strip()
        try:
            start = start_seconds(row["start_time"])
        except ValueError:
            bad.append(Skip(f"{ytid or where}", f"bad row: start_time {row['start_time']!r} ({where})"))
            continue
        if not ytid.strip() or not caption:
            bad.append(Skip(f"{ytid or where}", f"bad row: empty youtube_id or caption ({where})"))
            continue
        clip = clips.setdefault(
            f"{ytid}_{start}", {"ytid": ytid, "start": int(start), "captions": [], "ids": []}
        )
        clip["captions"].append(caption)
        if row.get("audiocap_id", "").strip():
            clip["ids"].append(row["audiocap_id"].strip())
    for source_id, clip in clips.items():
        names = with_extensions("{youtube_id}_{start_time}", source_id)
        names += with_extensions("Y{youtube_id}", f"Y{clip['ytid']}", ("wav", "flac", "mp3"))
        meta = {"youtube_id": clip["ytid"], "start_time": clip["start"], "audiocap_ids": clip["ids"]}
        yield audio_item(source_id, folders, names, tuple(clip["captions"]), meta=meta)
    yield from bad
