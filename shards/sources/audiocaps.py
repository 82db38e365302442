"""AudioCaps (v1 CSVs; v2 has the same columns).

    SRC/csv_files_v1/{split}.csv    audiocap_id,youtube_id,start_time,caption   (one row per caption)
    SRC/audio_32000Hz/{split}/{youtube_id}_{start_time}.{flac|wav|mp3}

Variants: CSVs in SRC/dataset/ or SRC/, audio in SRC/audio/{split}/, the whole tree under SRC/AUDIOCAPS/.
Rows of one clip (same youtube_id and start_time) become one sample with all its captions, in the
order the clip first appears.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from shards.sources.base import Entry, Item, Skip, Source, audio_candidates, csv_rows, find_file, first_dir


class AudioCaps(Source):
    name = "audiocaps"
    splits = ("train", "val", "test")

    def _root(self) -> Path:
        nested = self.src / "AUDIOCAPS"
        return nested if nested.is_dir() else self.src

    def entries(self, split: str) -> Iterator[Entry]:
        root = self._root()
        csv_path = find_file(
            [
                root / "csv_files_v1" / f"{split}.csv",
                root / "dataset" / f"{split}.csv",
                root / f"{split}.csv",
            ],
            f"AudioCaps {split} CSV",
        )
        audio_dir = first_dir([root / "audio_32000Hz" / split, root / "audio" / split])
        return _entries(csv_path, audio_dir)


def start_seconds(value: str) -> str:
    """start_time as written in file names: '30', also from '30.0'; ValueError if not a whole number."""
    x = float(value)
    if x < 0 or x != int(x):
        raise ValueError(value)
    return str(int(x))


def _entries(csv_path: Path, audio_dir: Path) -> Iterator[Entry]:
    # One clip's rows need not be adjacent, so group the (small: ~50k rows) file before yielding.
    clips: dict[str, dict] = {}
    bad: list[Skip] = []
    for line, row in csv_rows(csv_path, ("youtube_id", "start_time", "caption")):
        where = f"{csv_path.name}:{line}"
        ytid, caption = row["youtube_id"], row["caption"]
        try:
            start = start_seconds(row["start_time"])
        except ValueError:
            bad.append(Skip(f"{ytid or where}", f"bad row: start_time {row['start_time']!r} ({where})"))
            continue
        if not ytid or not caption:
            bad.append(Skip(f"{ytid or where}", f"bad row: empty youtube_id or caption ({where})"))
            continue
        clip = clips.setdefault(
            f"{ytid}_{start}", {"ytid": ytid, "start": int(start), "captions": [], "ids": []}
        )
        clip["captions"].append(caption)
        if row.get("audiocap_id"):
            clip["ids"].append(row["audiocap_id"])
    for source_id, clip in clips.items():
        meta = {"youtube_id": clip["ytid"], "start_time": clip["start"], "audiocap_ids": clip["ids"]}
        yield Item(source_id, audio_candidates(audio_dir, source_id), tuple(clip["captions"]), meta=meta)
    yield from bad
