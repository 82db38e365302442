"""AudioSetCaps: three subsets (the split is the subset name), captions streamed row by row.

    SRC/Dataset/{AudioSetCaps_caption.csv, VGGSound_AudioSetCaps_caption.csv,
                 YouTube-8M_AudioSetCaps_caption.csv}        id,caption
    SRC/Dataset/{prefix}_Qwen-Audio_Q&A.csv                  id,question_1,answer_1,...   (optional, --qa)
    SRC/audio/{subset}/{id}.{flac|wav|mp3}                   the clips the user downloaded

ids: AudioSet ``Y{ytid}``, VGGSound ``{ytid}_{start:06d}``, YouTube-8M ``{ytid}_{start}_{dur}``.
The caption CSVs have millions of rows and are never loaded whole. The Q&A files are as large and not
in a guaranteed order, so joining them (--qa) holds one subset's answers in memory.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.sources.base import Entry, Item, Skip, Source, audio_candidates, csv_rows, find_file, first_dir

PREFIX = {
    "audioset": "AudioSetCaps",
    "vggsound": "VGGSound_AudioSetCaps",
    "youtube8m": "YouTube-8M_AudioSetCaps",
}
QUESTION = re.compile(r"^question_(\d+)$")


class AudioSetCaps(Source):
    name = "audiosetcaps"
    splits = tuple(PREFIX)

    def __init__(self, src: Path, qa: bool = False) -> None:
        super().__init__(src)
        self.qa = qa

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--qa",
            action="store_true",
            help="add the Qwen-Audio Q&A answers to meta.qa (holds the subset's Q&A file in memory)",
        )

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> AudioSetCaps:
        return cls(src, qa=args.qa)

    def settings(self) -> dict[str, Any]:
        return {"qa": self.qa}

    def entries(self, split: str) -> Iterator[Entry]:
        folder = self.src / "Dataset"
        captions = find_file([folder / f"{PREFIX[split]}_caption.csv"], f"AudioSetCaps {split} caption CSV")
        qa = None
        if self.qa:
            qa = read_qa(find_file([folder / f"{PREFIX[split]}_Qwen-Audio_Q&A.csv"], f"{split} Q&A CSV"))
        audio_dir = first_dir([self.src / "audio" / split])
        return _entries(captions, audio_dir, qa)


def read_qa(path: Path) -> dict[str, list[dict[str, str]]]:
    """id -> [{"question", "answer"}, ...] for the rows with at least one answered question."""
    out: dict[str, list[dict[str, str]]] = {}
    for _, row in csv_rows(path, ("id",)):
        pairs = []
        for col, q in row.items():
            m = QUESTION.match(col)
            if m and q and row.get(f"answer_{m.group(1)}"):
                pairs.append({"question": q, "answer": row[f"answer_{m.group(1)}"]})
        if row["id"] and pairs:
            out[row["id"]] = pairs
    return out


def _entries(captions: Path, audio_dir: Path, qa: dict[str, list[dict[str, str]]] | None) -> Iterator[Entry]:
    for line, row in csv_rows(captions, ("id", "caption")):
        source_id, caption = row["id"], row["caption"]
        if not source_id or not caption:
            yield Skip(
                source_id or f"{captions.name}:{line}",
                f"bad row: empty id or caption ({captions.name}:{line})",
            )
            continue
        meta = {"qa": qa[source_id]} if qa and source_id in qa else {}
        yield Item(source_id, audio_candidates(audio_dir, source_id), (caption,), meta=meta)
