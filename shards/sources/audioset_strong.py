"""AudioSet strongly-labelled subset (temporal alignment evaluation).

    SRC/audioset_{train,eval}_strong.tsv   segment_id,start_time_seconds,end_time_seconds,label (MID); header
    SRC/mid_to_display_name.tsv            mid<TAB>display_name, no header
    SRC/audio/Y{ytid}.{flac|wav|mp3}       the 10 s clip of segment_id = {ytid}_{start_ms}

Times are seconds within the 10 s clip. The TSVs list one segment's rows together, so they are
streamed; a segment whose rows reappear later is reported as a duplicate id. Regions get the label's
display name as text and the MID in ``meta.mid``; overlapping or adjacent events of one label merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

from shards.schema import Region
from shards.sources.base import (
    Entry,
    Item,
    Skip,
    Source,
    SourceError,
    audio_candidates,
    csv_rows,
    find_file,
    first_dir,
    merge_regions,
    parse_float,
)

COLUMNS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")


class AudioSetStrong(Source):
    name = "audioset-strong"
    splits = ("train", "eval")

    def entries(self, split: str) -> Iterator[Entry]:
        tsv = find_file([self.src / f"audioset_{split}_strong.tsv"], f"AudioSet-strong {split} TSV")
        names = read_display_names(
            find_file([self.src / "mid_to_display_name.tsv"], "mid_to_display_name.tsv")
        )
        audio_dir = first_dir([self.src / "audio"])
        return _entries(tsv, names, audio_dir)


def read_display_names(path: Path) -> dict[str, str]:
    """mid -> display name (two tab-separated columns, no header)."""
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
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
        mid = row["label"]
        if mid not in names:
            raise ValueError(f"label {mid!r} is not in mid_to_display_name.tsv ({where})")
        if onset < 0:
            raise ValueError(f"onset {onset} < 0 ({where})")
        if onset > offset:
            raise ValueError(f"onset {onset} > offset {offset} ({where})")
        if onset < offset:  # zero-length events carry no time information
            regions.append(Region(names[mid], onset, offset, {"mid": mid}))
    return merge_regions(regions, touching=True)


def _entries(tsv: Path, names: dict[str, str], audio_dir: Path) -> Iterator[Entry]:
    rows = csv_rows(tsv, COLUMNS, delimiter="\t")
    for segment_id, group in groupby(rows, key=lambda lr: lr[1]["segment_id"]):
        group = list(group)
        where = f"{tsv.name}:{group[0][0]}"
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
        yield Item(segment_id, audio_candidates(audio_dir, f"Y{ytid}"), strong=tuple(regions), meta=meta)
