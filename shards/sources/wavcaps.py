"""WavCaps: four subsets (the split is the subset name), with the release's blacklists.

The Hugging Face release (cvssp/WavCaps), as downloaded and unzipped:

    SRC/json_files/{AudioSet_SL/as_final.json, BBC_Sound_Effects/bbc_final.json,
                    FreeSound/fsd_final.json, SoundBible/sb_final.json}
        {"num_captions_per_audio": 1, "data": [{"id", "caption", "duration", "audio", ...}]}
    SRC/json_files/blacklist/blacklist_exclude_{all_ac,test_ac,ub8k_esc50_vggsound}.json
        {"AudioSet": ["Y<ytid>.wav", ...], "FreeSound": ["<id>", ...]}
    SRC/Zip_files/{subset}/... unzipped: .../mnt/fast/nobackup/.../waveforms/{subset}_flac/{id}.flac   32 kHz FLAC

The json_files may also sit under SRC/data/ (a clone of the GitHub repository). Audio folders, in order:
SRC/Audio/{subset}/, SRC/Audio/{subset}_flac/, SRC/audio/{subset}/, SRC/waveforms/{subset}_flac/ (those
that hold audio files), else the first folder named ``{subset}_flac`` anywhere under SRC (the zips unpack
under a deep prefix); with --audio-dir DIR: DIR/{subset}_flac/, DIR/{subset}/, DIR, else a
``{subset}_flac`` folder under DIR. Audio
naming: ``{id}.{flac,wav,mp3}`` with the id's own ``.wav`` dropped (AudioSet_SL ids are "Yb0RFKhbpFJA.wav").
Fields other than id/caption/audio/duration go to meta; BBC's ``category``, a stringified list
("['Machines']"), becomes a list.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.schema import AUDIO_EXTENSION
from shards.sources.base import (
    Entry,
    Layout,
    Skip,
    Source,
    SourceError,
    audio_item,
    file_digest,
    find_file,
    with_extensions,
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
MAX_SEARCH_DEPTH = 12
"""How deep under SRC (or --audio-dir) a ``{subset}_flac`` folder is looked for."""


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

    def __init__(
        self,
        src: Path,
        blacklists: tuple[str, ...] = (DEFAULT_BLACKLIST,),
        *,
        audio_dir: Path | None = None,
        encoding: str | None = None,
    ) -> None:
        super().__init__(src, audio_dir=audio_dir, encoding=encoding)
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
        return cls(
            src,
            tuple(args.blacklist or (DEFAULT_BLACKLIST,)),
            audio_dir=args.audio_dir,
            encoding=args.encoding,
        )

    def _json_root(self) -> Path:
        nested = self.src / "data" / "json_files"
        return (
            nested if nested.is_dir() and not (self.src / "json_files").is_dir() else self.src / "json_files"
        )

    def _blacklist_paths(self) -> list[Path]:
        folder = self._json_root() / "blacklist"
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

    def _folders(self, split: str) -> tuple[Path, ...]:
        base = self.audio_dir if self.audio_dir is not None else self.src
        if self.audio_dir is not None:
            named = [base / f"{split}_flac", base / split, base]
        else:
            named = [
                base / "Audio" / split,
                base / "Audio" / f"{split}_flac",
                base / "audio" / split,
                base / "waveforms" / f"{split}_flac",
            ]
        found = [p for p in named if holds_audio(p)]
        if not found:
            deep = find_folder(base, f"{split}_flac")
            found = [deep] if deep else []
        return tuple(found) or (named[0],)

    def layout(self, split: str) -> Layout:
        json_path = find_file([self._json_root() / SUBSET_JSON[split]], f"WavCaps {split} JSON")
        files = {"captions": json_path, **{p.stem: p for p in self._blacklist_paths()}}
        return Layout(files, self._folders(split))

    def entries(self, split: str) -> Iterator[Entry]:
        layout = self.layout(split)
        blacklisted = self._blacklisted(split)
        return _entries(layout.files["captions"], layout.audio, blacklisted)

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


def find_folder(base: Path, name: str, max_depth: int = MAX_SEARCH_DEPTH) -> Path | None:
    """The first folder called `name` under `base` (sorted walk, at most `max_depth` levels), else None.

    Folders of audio (``*_flac``) are not descended into, so the walk stays cheap beside 100k-file folders.
    """
    base_depth = len(base.parts)
    for folder, dirs, _ in os.walk(base):
        dirs.sort()
        if name in dirs:
            return Path(folder) / name
        if len(Path(folder).parts) - base_depth >= max_depth:
            dirs.clear()
        else:
            dirs[:] = [d for d in dirs if not d.endswith("_flac")]
    return None


def holds_audio(folder: Path, look_at: int = 1000) -> bool:
    """True if `folder` is a folder with an audio file among its first `look_at` entries (a zip's folder is not)."""
    if not folder.is_dir():
        return False
    with os.scandir(folder) as it:
        for i, entry in enumerate(it):
            if i >= look_at:
                break
            if AUDIO_EXTENSION.search(entry.name) and entry.is_file():
                return True
    return False


def parse_listing(value: Any) -> Any:
    """A stringified Python list of strings ("['Machines', 'Tools']") as a list; anything else unchanged."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
    return value


def _entries(json_path: Path, folders: tuple[Path, ...], blacklisted: dict[str, str]) -> Iterator[Entry]:
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
        meta = {
            k: parse_listing(v) for k, v in entry.items() if k not in NOT_META and v not in (None, "", [])
        }
        yield audio_item(source_id, folders, with_extensions("{id}", stem), captions, meta=meta)
