"""AudioSet strongly-labelled subset (research.google.com/audioset/download_strong.html; evaluation of
temporal alignment).

    SRC/audioset_{train,eval}_strong.tsv   segment_id,start_time_seconds,end_time_seconds,label (MID); header
    SRC/mid_to_display_name.tsv            mid<TAB>display_name, no header
    SRC/audio/...                          the 10 s clip of segment_id = {ytid}_{start_ms} (not in the release)

Audio folders: SRC/audio/{split}/, SRC/audio/, or --audio-dir DIR (DIR/{split}/ or DIR). Audio namings,
tried in this order: ``Y{segment_id}.{wav,flac,mp3}`` (e.g. Yb0RFKhbpFJA_30000.wav),
``{segment_id}.{flac,wav,mp3}`` and ``Y{ytid}.{flac,wav,mp3}`` (one clip per YouTube id, as AudioSet
downloaders name them). Times are seconds within the 10 s clip. The TSVs list one segment's rows together, so they are
streamed; a segment whose rows reappear later is reported as a duplicate id. Regions get the label's
display name as text and the MID in ``meta.mid``; overlapping or adjacent events of one label merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

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
    csv_rows,
    find_file,
    merge_regions,
    parse_float,
    read_text,
    with_extensions,
)

COLUMNS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")


class AudioSetStrong(Source):
    name = "audioset-strong"
    splits = ("train", "eval")

    def layout(self, split: str) -> Layout:
        files = {
            "labels": find_file([self.src / f"audioset_{split}_strong.tsv"], f"AudioSet-strong {split} TSV"),
            "names": find_file([self.src / "mid_to_display_name.tsv"], "mid_to_display_name.tsv"),
        }
        return Layout(files, self.audio_folders(split, [self.src / "audio" / split, self.src / "audio"]))

    def entries(self, split: str) -> Iterator[Entry]:
        layout = self.layout(split)
        names = read_display_names(layout.files["names"], self.csv_encoding())
        return _entries(layout.files["labels"], self.csv_encoding(), names, layout.audio)


def read_display_names(path: Path, encoding: str = "utf-8-sig") -> dict[str, str]:
    """mid -> display name (two tab-separated columns, no header)."""
    out = {}
    text, _ = read_text(path, (encoding,))
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            raise SourceError(f"{path}:{i}: expected 'mid<TAB>display_name', got {line!r}")
        out[parts[0].strip()] = parts[1].strip()
    return out


def split_segment_id(segment_id: str) -> tuple[str, int]:
    """'{ytid}_{start_ms}' -> (ytid, start_ms); the ytid itself may contain '_'."""
    ytid, sep, start = segment_id.rpartition("_")
    if not sep or not ytid or not start.isdigit():
        raise ValueError(f"segment_id {segment_id!r} is not '<ytid>_<start_ms>'")
    return ytid, int(start)


def regions_of(rows: list[tuple[int, dict[str, str]]], names: dict[str, str], path: Path) -> list[Region]:
    """Events of one segment as regions, merged per label; ValueError names the bad row."""
    regions = []
    for line, row in rows:
        where = f"{path.name}:{line}"
        onset = parse_float(row["start_time_seconds"], "start_time_seconds")
        offset = parse_float(row["end_time_seconds"], "end_time_seconds")
        mid = row["label"].strip()
        if mid not in names:
            raise ValueError(f"label {mid!r} is not in mid_to_display_name.tsv ({where})")
        if onset < 0:
            raise ValueError(f"onset {onset} < 0 ({where})")
        if onset > offset:
            raise ValueError(f"onset {onset} > offset {offset} ({where})")
        if onset < offset:  # zero-length events carry no time information
            regions.append(Region(names[mid], onset, offset, {"mid": mid}))
    return merge_regions(regions, touching=True)


def _entries(tsv: Path, encoding: str, names: dict[str, str], folders: tuple[Path, ...]) -> Iterator[Entry]:
    rows = csv_rows(tsv, COLUMNS, encoding, delimiter="\t")

    def key(line_row: tuple[int, dict[str, str] | BadRow]) -> tuple[bool, str]:
        row = line_row[1]
        return (True, row.reason) if isinstance(row, BadRow) else (False, row["segment_id"])

    for (_, segment_id), group in groupby(rows, key=key):
        group = list(group)
        where = f"{tsv.name}:{group[0][0]}"
        if isinstance(group[0][1], BadRow):
            yield from (bad_row_skip(tsv, line, row) for line, row in group)
            continue
        try:
            ytid, start_ms = split_segment_id(segment_id)
        except ValueError as e:
            yield Skip(segment_id or where, f"bad row: {e} ({where})")
            continue
        try:
            regions = regions_of(group, names, tsv)
        except ValueError as e:
            yield Skip(segment_id, f"bad region: {e}")
            continue
        if not regions:
            yield Skip(segment_id, f"bad row: no event with onset < offset ({where})")
            continue
        meta = {"ytid": ytid, "start_ms": start_ms}
        files = with_extensions("Y{segment_id}", f"Y{segment_id}", ("wav", "flac", "mp3"))
        files += with_extensions("{segment_id}", segment_id)
        files += with_extensions("Y{ytid}", f"Y{ytid}")
        yield audio_item(segment_id, folders, files, strong=tuple(regions), meta=meta)
