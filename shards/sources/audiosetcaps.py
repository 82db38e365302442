"""AudioSetCaps (Hugging Face baijs/AudioSetCaps): three subsets (the split is the subset name).

    SRC/Dataset/AudioSetCaps_caption.csv              id,caption   AudioSet ids  Y{ytid}
    SRC/Dataset/VGGSound_AudioSetCaps_caption.csv     id,caption   VGGSound ids  {ytid}_{start:06d}
    SRC/Dataset/YouTube-8M_AudioSetCaps_caption.csv   id,caption   YouTube-8M ids {ytid}_{start}_{dur}
    SRC/Dataset/{AudioSetCaps,VGGSound,YouTube-8M}_Qwen-Audio_Q&A.csv   id,question_1,answer_1,...  (--qa)
    SRC/audio/{subset}/{id}.{flac,wav,mp3}            the 10 s clips the user downloaded (not in the release)

Variants: the CSVs directly in SRC; audio in SRC/{subset}/ or --audio-dir DIR (DIR/{subset}/ or DIR).
Audio namings: ``{id}.{flac,wav,mp3}``, and for AudioSet also ``{ytid}.{flac,wav,mp3}`` (the id without its
Y). ytids contain ``_`` and ``-``. The caption CSVs have millions of rows and are never loaded whole; the
Q&A files are as large and not in a guaranteed order, so joining them (--qa) holds one subset's answers in
memory.
"""

from __future__ import annotations

import argparse
import re
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
    csv_rows,
    find_file,
    with_extensions,
)

CAPTIONS = {
    "audioset": "AudioSetCaps_caption.csv",
    "vggsound": "VGGSound_AudioSetCaps_caption.csv",
    "youtube8m": "YouTube-8M_AudioSetCaps_caption.csv",
}
QA = {
    "audioset": "AudioSetCaps_Qwen-Audio_Q&A.csv",
    "vggsound": "VGGSound_Qwen-Audio_Q&A.csv",
    "youtube8m": "YouTube-8M_Qwen-Audio_Q&A.csv",
}
QUESTION = re.compile(r"^question_(\d+)$")


class AudioSetCaps(Source):
    name = "audiosetcaps"
    splits = tuple(CAPTIONS)

    def __init__(
        self, src: Path, qa: bool = False, *, audio_dir: Path | None = None, encoding: str | None = None
    ) -> None:
        super().__init__(src, audio_dir=audio_dir, encoding=encoding)
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
        return cls(src, qa=args.qa, audio_dir=args.audio_dir, encoding=args.encoding)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "qa": self.qa}

    def _file(self, name: str, what: str) -> Path:
        return find_file([self.src / "Dataset" / name, self.src / name], what)

    def layout(self, split: str) -> Layout:
        files = {"captions": self._file(CAPTIONS[split], f"AudioSetCaps {split} caption CSV")}
        if self.qa:
            files["qa"] = self._file(QA[split], f"AudioSetCaps {split} Q&A CSV")
        defaults = [self.src / "audio" / split, self.src / split]
        return Layout(files, self.audio_folders(split, defaults))

    def entries(self, split: str) -> Iterator[Entry]:
        layout = self.layout(split)
        qa, problems = read_qa(layout.files["qa"], self.csv_encoding()) if self.qa else (None, [])
        captions = layout.files["captions"]
        return _entries(captions, self.csv_encoding(), layout.audio, qa, split == "audioset", problems)


def read_qa(path: Path, encoding: str) -> tuple[dict[str, list[dict[str, str]]], list[Skip]]:
    """(id -> [{"question", "answer"}, ...] for the rows with at least one answer, unreadable rows)."""
    out: dict[str, list[dict[str, str]]] = {}
    problems: list[Skip] = []
    for line, row in csv_rows(path, ("id",), encoding):
        if isinstance(row, BadRow):
            where = f"{path.name}:{line}"
            problems.append(Skip(where, f"bad row: {row.reason}; Q&A only, captions are kept ({where})"))
            continue
        pairs = []
        for col, q in row.items():
            m = QUESTION.match(col)
            answer = row.get(f"answer_{m.group(1)}", "").strip() if m else ""
            if m and q.strip() and answer:
                pairs.append({"question": q.strip(), "answer": answer})
        if row["id"] and pairs:
            out[row["id"]] = pairs
    return out, problems


def _entries(
    captions: Path,
    encoding: str,
    folders: tuple[Path, ...],
    qa: dict[str, list[dict[str, str]]] | None,
    audioset: bool,
    problems: list[Skip],
) -> Iterator[Entry]:
    yield from problems
    for line, row in csv_rows(captions, ("id", "caption"), encoding):
        if isinstance(row, BadRow):
            yield bad_row_skip(captions, line, row)
            continue
        source_id, caption = row["id"], row["caption"].strip()
        if not source_id.strip() or not caption:
            yield Skip(
                source_id or f"{captions.name}:{line}",
                f"bad row: empty id or caption ({captions.name}:{line})",
            )
            continue
        names = with_extensions("{id}", source_id)
        if audioset and source_id.startswith("Y"):
            names += with_extensions("{id without Y}", source_id[1:])
        meta = {"qa": qa[source_id]} if qa and source_id in qa else {}
        yield audio_item(source_id, folders, names, (caption,), meta=meta)
