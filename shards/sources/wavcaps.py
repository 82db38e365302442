"""WavCaps: four subsets (the split is the subset name), with the release's blacklists.

    SRC/json_files/{AudioSet_SL/as_final.json, BBC_Sound_Effects/bbc_final.json,
                    FreeSound/fsd_final.json, SoundBible/sb_final.json}
        {"num_captions_per_audio": 1, "data": [{"id", "caption", "duration", "audio", ...}]}
    SRC/json_files/blacklist/blacklist_exclude_{all_ac,test_ac,ub8k_esc50_vggsound}.json
        {"AudioSet": ["Y<ytid>.wav", ...], "FreeSound": ["<id>", ...]}
    SRC/Audio/{subset}/{id without .wav}.flac

Variants: audio in SRC/Audio/{subset}_flac/ (as the release's zip files unpack) or SRC/audio/{subset}/.
Fields other than id/caption/audio/duration (description, tags, author, category, href, title...) go to meta.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.schema import AUDIO_EXTENSION
from shards.sources.base import (
    Entry,
    Item,
    Skip,
    Source,
    SourceError,
    audio_candidates,
    file_digest,
    find_file,
    first_dir,
)

SUBSET_JSON = {
    "FreeSound": "FreeSound/fsd_final.json",
    "BBC_Sound_Effects": "BBC_Sound_Effects/bbc_final.json",
    "SoundBible": "SoundBible/sb_final.json",
    "AudioSet_SL": "AudioSet_SL/as_final.json",
}
BLACKLIST_KEY = {"FreeSound": "FreeSound", "AudioSet_SL": "AudioSet"}
"""Which list of a blacklist file applies to a subset (the other subsets have none)."""
DEFAULT_BLACKLIST = "blacklist_exclude_test_ac"
NOT_META = ("id", "caption", "audio", "duration", "download_link")


def blacklist_file_name(name: str) -> str:
    """'test_ac', 'blacklist_exclude_test_ac' or 'blacklist_exclude_test_ac.json' -> the file name."""
    stem = name.removesuffix(".json")
    return f"{stem if stem.startswith('blacklist_') else 'blacklist_exclude_' + stem}.json"


def normalise_id(value: Any) -> str:
    """Ids compare without an audio extension: 'Yb0RFKhbpFJA.wav' ~ 'Yb0RFKhbpFJA', 17 ~ '17'."""
    return AUDIO_EXTENSION.sub("", str(value).strip())


class WavCaps(Source):
    name = "wavcaps"
    splits = tuple(SUBSET_JSON)

    def __init__(self, src: Path, blacklists: tuple[str, ...] = (DEFAULT_BLACKLIST,)) -> None:
        super().__init__(src)
        self.blacklists = tuple(b for b in blacklists if b.lower() != "none")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--blacklist",
            action="append",
            metavar="NAME",
            help=f"exclude the ids of json_files/blacklist/NAME.json (repeatable; 'none' for no blacklist; "
            f"default {DEFAULT_BLACKLIST})",
        )

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> WavCaps:
        return cls(src, tuple(args.blacklist or (DEFAULT_BLACKLIST,)))

    def _blacklist_paths(self) -> list[Path]:
        folder = self.src / "json_files" / "blacklist"
        paths = [folder / blacklist_file_name(b) for b in self.blacklists]
        for b, p in zip(self.blacklists, paths):
            if not p.is_file():
                known = sorted(q.stem for q in folder.glob("*.json")) if folder.is_dir() else []
                raise SourceError(
                    f"WavCaps blacklist {b!r} not found: {p}"
                    + (f"; available: {', '.join(known)}" if known else "; is --src the WavCaps root folder?")
                )
        return paths

    def settings(self) -> dict[str, Any]:
        paths = self._blacklist_paths()
        return {"blacklist": {p.stem: file_digest(p) for p in paths}}

    def entries(self, split: str) -> Iterator[Entry]:
        json_path = find_file([self.src / "json_files" / SUBSET_JSON[split]], f"WavCaps {split} JSON")
        audio_dir = first_dir(
            [self.src / "Audio" / split, self.src / "Audio" / f"{split}_flac", self.src / "audio" / split]
        )
        blacklisted = self._blacklisted(split)
        return _entries(json_path, audio_dir, blacklisted)

    def _blacklisted(self, split: str) -> dict[str, str]:
        """Normalised id -> name of the blacklist that excludes it."""
        out: dict[str, str] = {}
        key = BLACKLIST_KEY.get(split)
        for path in self._blacklist_paths():
            try:
                lists = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SourceError(f"{path}: not valid JSON: {e}") from None
            if not isinstance(lists, dict):
                raise SourceError(f"{path}: expected an object of id lists, got {type(lists).__name__}")
            for i in lists.get(key, []) if key else []:
                out.setdefault(normalise_id(i), path.stem)
        return out


def _entries(json_path: Path, audio_dir: Path, blacklisted: dict[str, str]) -> Iterator[Entry]:
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{json_path}: not valid JSON: {e}") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise SourceError(f'{json_path}: expected {{"data": [...]}} with one object per clip')
    for i, entry in enumerate(data):
        where = f"{json_path.name}:data[{i}]"
        if not isinstance(entry, dict) or entry.get("id") in (None, ""):
            yield Skip(where, "bad row: entry without an id")
            continue
        source_id = str(entry["id"])
        captions = entry.get("caption")
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            yield Skip(source_id, f"bad row: caption must be a string ({where})")
            continue
        captions = tuple(c.strip() for c in captions if c.strip())
        if not captions:
            yield Skip(source_id, f"bad row: empty caption ({where})")
            continue
        stem = normalise_id(source_id)
        if stem in blacklisted:
            yield Skip(source_id, f"blacklisted: {blacklisted[stem]}")
            continue
        meta = {k: v for k, v in entry.items() if k not in NOT_META and v not in (None, "", [])}
        yield Item(source_id, audio_candidates(audio_dir, stem), captions, meta=meta)
