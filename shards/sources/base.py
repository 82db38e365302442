"""What every raw-dataset reader yields, and the CSV/path helpers they share.

A source lists a split as a deterministic stream of entries: an :class:`Item` (one clip to convert) or a
:class:`Skip` (a row that cannot become a sample, with the reason). Listing reads only metadata files;
audio is found (:func:`resolve_audio`) and decoded later, in the conversion workers.

An item carries its audio as candidates: every (folder, naming) pair a release or a common download tool
uses for that clip, in order of preference. The first candidate that exists is the clip's audio, and the
naming it matched is counted, so a summary says how the audio was found.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, NamedTuple

from shards.schema import Region

AUDIO_EXTENSIONS = ("flac", "wav", "mp3")
"""Extensions tried, in this order, where a layout allows any of them."""
MAX_CSV_FIELD = 1 << 24
"""Characters a CSV field may have (Python's default, 128 Ki, is too small for some Q&A answers); a row
with a longer field is skipped and listed, the rest of the file is read."""
DEFAULT_ENCODING = "utf-8-sig"
"""Metadata files are UTF-8 unless --encoding says otherwise (a byte-order mark is dropped)."""


class SourceError(ValueError):
    """The raw dataset is not where or what it should be (wrong --src, missing CSV); names the path."""


class Candidate(NamedTuple):
    """One place a clip's audio may be: the path and the naming rule that produced it."""

    path: Path
    naming: str
    """The rule, e.g. ``{youtube_id}_{start_time}.flac`` or ``Y{youtube_id}.wav``; counted when it matches."""


@dataclass(frozen=True)
class Item:
    """One clip of a raw dataset: where its audio may be and what describes it."""

    source_id: str
    audio: tuple[Candidate, ...]
    """Candidate audio files in order of preference; the first that exists is used."""
    captions: tuple[str, ...] = ()
    strong: tuple[Region, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """A listing entry that cannot become a sample (bad row, blacklisted id); kept for the manifest."""

    source_id: str
    reason: str


Entry = Item | Skip


@dataclass(frozen=True)
class BadRow:
    """A CSV row that cannot be read (a field over MAX_CSV_FIELD characters, broken quoting)."""

    reason: str


@dataclass(frozen=True)
class Layout:
    """What a source recognised for one split: the files it reads and the folders it searches for audio."""

    files: dict[str, Path]
    """Role (``captions``, ``metadata``...) -> the file read."""
    audio: tuple[Path, ...]
    """Audio folders searched, in order (only existing ones; the documented one if none exists)."""
    notes: tuple[str, ...] = ()
    """Anything else the listing depends on (which split file, which CSV version)."""


class Source:
    """A raw dataset in its official layout; subclasses read one dataset."""

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]]

    def __init__(self, src: Path, *, audio_dir: Path | None = None, encoding: str | None = None) -> None:
        self.src = Path(src)
        self.audio_dir = Path(audio_dir) if audio_dir is not None else None
        self.encoding = check_encoding(encoding)
        self.warnings: list[str] = []
        """Things the user should know that are not errors (an option that has no effect); printed once."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this dataset's own command-line flags (none by default)."""

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> Source:
        """Build the source from `--src` and the parsed flags."""
        return cls(src, audio_dir=args.audio_dir, encoding=args.encoding)

    def entries(self, split: str) -> Iterator[Entry]:
        """Check the layout (raising SourceError now, not on first use) and return the split's entries."""
        raise NotImplementedError

    def layout(self, split: str) -> Layout:
        """The files and audio folders `entries(split)` uses; SourceError if a required file is missing."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The options that change the output; a resumed run must use the same."""
        return {"encoding": self.encoding} if self.encoding else {}

    def manifest_extra(self, split: str, keys: dict[str, str]) -> dict[str, Any]:
        """Extra manifest fields for `split`; `keys` maps listed source ids to their sample keys."""
        return {}

    # -- shared helpers --------------------------------------------------------------------------------

    def audio_folders(self, split: str, defaults: Sequence[Path]) -> tuple[Path, ...]:
        """Folders to search for a split's audio: DIR/SPLIT and DIR under --audio-dir DIR, else the layout's
        `defaults`; the existing ones in order, else the first (the documented place, for the error message)."""
        candidates = (
            [self.audio_dir / split, self.audio_dir] if self.audio_dir is not None else list(defaults)
        )
        found = tuple(dict.fromkeys(p for p in candidates if p.is_dir()))
        return found or (candidates[0],)

    def csv_encoding(self, default: str = DEFAULT_ENCODING) -> str:
        """The encoding to read a metadata CSV with: --encoding if given, else the file's documented one."""
        return self.encoding or default


def check_encoding(name: str | None) -> str | None:
    """`name` if Python knows it and it keeps ASCII bytes as they are (so lines split on b"\\n"), else SourceError."""
    if name is None:
        return None
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise SourceError(
            f"--encoding {name!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)"
        ) from None
    if '\n,\t"'.encode(info.name, errors="replace") != b'\n,\t"':
        raise SourceError(f"--encoding {name!r} is not ASCII-compatible; convert the file to UTF-8 first")
    return name


def plain_file_name(name: str) -> bool:
    """True if `name` is one file name (no folder part, not '.'/'..', no NUL), so it stays inside its folder."""
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name and os.sep not in name
    )


def audio_item(
    source_id: str,
    folders: Sequence[Path],
    names: Sequence[tuple[str, str]],
    captions: tuple[str, ...] = (),
    strong: tuple[Region, ...] = (),
    meta: dict[str, Any] | None = None,
) -> Item | Skip:
    """An Item whose candidates are every folder x every (naming, file name); a Skip if a file name taken
    from the metadata is not a plain file name (``../x.wav``, an absolute path): ids never leave the folder."""
    for _, file_name in names:
        if not plain_file_name(file_name):
            return Skip(
                source_id, f"unsafe file name: {file_name!r} is not a plain file name inside the audio folder"
            )
    audio = tuple(Candidate(folder / file_name, naming) for folder in folders for naming, file_name in names)
    return Item(source_id, audio, captions, strong, meta or {})


def with_extensions(
    naming: str, stem: str, extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> list[tuple[str, str]]:
    """[(naming + '.ext', stem + '.ext')] for each extension: the (naming, file name) pairs of one rule."""
    return [(f"{naming}.{ext}", f"{stem}.{ext}") for ext in extensions]


def resolve_audio(item: Item) -> Candidate | None:
    """The first candidate of `item` that is an existing file (conversion and --check use this same rule)."""
    return next((c for c in item.audio if c.path.is_file()), None)


def describe_candidates(candidates: Sequence[Candidate], root: Path | None = None, limit: int = 4) -> str:
    """'dir/x.flac', 'dir/x.{flac,wav,mp3}' for extensions of one stem, the first `limit` stems, relative to root."""
    groups: dict[Path, list[str]] = {}
    for c in candidates:
        path = c.path
        if root is not None and path.is_relative_to(root):
            path = path.relative_to(root)
        stem, ext = (path.with_suffix(""), path.suffix[1:]) if path.suffix else (path, "")
        groups.setdefault(stem, []).append(ext)
    parts = []
    for stem, exts in list(groups.items())[:limit]:
        if len(exts) == 1:
            parts.append(f"{stem}.{exts[0]}" if exts[0] else str(stem))
        else:
            parts.append(f"{stem}.{{{','.join(exts)}}}")
    more = len(groups) - limit
    return ", ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def find_file(candidates: Sequence[Path], what: str) -> Path:
    """The first existing file among layout variants; the error names the documented one."""
    for p in candidates:
        if p.is_file():
            return p
    others = "".join(f", {p}" for p in candidates[1:])
    hint = f" (also looked for{others[1:]})" if others else ""
    raise SourceError(f"{what} not found: {candidates[0]}{hint}; is --src the dataset's root folder?")


def decode_error(path: Path, line: int, encoding: str, text: bytes, error: UnicodeDecodeError) -> SourceError:
    """A one-line error for undecodable bytes in `text` (line `line` of `path`): where, and what to do."""
    bad = text[error.start : error.start + 4]
    name = codecs.lookup(encoding).name.removesuffix("-sig")
    return SourceError(
        f"{path}: line {line} is not valid {name} (bytes {bad!r} at column "
        f"{error.start + 1}); pass --encoding with the file's encoding (e.g. --encoding latin-1)"
    )


def read_text(path: Path, encodings: Sequence[str] = (DEFAULT_ENCODING,)) -> tuple[str, str]:
    """(whole small text file, the encoding that decoded it), trying `encodings` in order; strict."""
    data = path.read_bytes()
    for enc in encodings:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError as e:
            error, failed = e, enc
    start = data.rfind(b"\n", 0, error.start) + 1
    end = data.find(b"\n", error.start)
    line_bytes = data[start : end if end >= 0 else len(data)]
    try:
        line_bytes.decode(failed)
    except UnicodeDecodeError as e:
        error = e
    raise decode_error(path, data[:start].count(b"\n") + 1, failed, line_bytes, error)


class _Lines:
    """Lines of a binary file decoded one by one (so a bad byte is reported at its line), NULs dropped,
    counting lines and the parity of '"' characters since `mark()` (to resynchronise after a bad row)."""

    def __init__(self, f: BinaryIO, path: Path, encoding: str) -> None:
        self.f, self.path, self.encoding = f, path, encoding
        self.line = 0
        self.open_quote = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = next(self.f)
        self.line += 1
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            raise decode_error(self.path, self.line, self.encoding, raw, e) from None
        if text.count('"') % 2:
            self.open_quote = not self.open_quote
        return text.replace("\0", "")


def csv_rows(
    path: Path, required: Sequence[str], encoding: str = DEFAULT_ENCODING, delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str] | BadRow]]:
    """Stream (first line number, row) of a CSV with a header, checking `required` columns up front.

    A row is a dict of the cells exactly as written (nothing is stripped: file names may begin with a
    space); missing trailing fields are "". A row that cannot be read (a field over MAX_CSV_FIELD
    characters, broken quoting) comes as a BadRow and the rest of the file is read. Undecodable bytes
    raise SourceError naming the line (pass --encoding); NULs are dropped. The header is line 1.
    """
    csv.field_size_limit(MAX_CSV_FIELD)
    with path.open("rb") as f:
        lines = _Lines(f, path, encoding)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"{path}: empty file, expected a header with {', '.join(required)}") from None
        except csv.Error as e:
            raise SourceError(f"{path}: cannot read the header: {e}") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
        while True:
            start = lines.line + 1
            lines.open_quote = False
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                # Finish the broken record: if it stopped inside a quoted field, the record goes on to the
                # line where that quote closes. Then read on with a fresh reader.
                while lines.open_quote:
                    if next(lines, None) is None:
                        break
                yield start, BadRow(f"unreadable CSV row: {e}")
                reader = csv.reader(lines, delimiter=delimiter)
                continue
            if not any(v.strip() for v in row):
                continue
            values = row + [""] * max(0, len(header) - len(row))
            yield start, dict(zip(header, values))


def csv_header(path: Path, encoding: str = DEFAULT_ENCODING, delimiter: str = ",") -> list[str]:
    """The column names of a CSV (first line), stripped; [] for an empty file."""
    with path.open("rb") as f:
        first = next(_Lines(f, path, encoding), "")
    row = next(csv.reader([first], delimiter=delimiter), [])
    return [h.strip().lstrip("\ufeff") for h in row]


def bad_row_skip(path: Path, line: int, row: BadRow) -> Skip:
    """The listing entry of an unreadable row."""
    return Skip(f"{path.name}:{line}", f"bad row: {row.reason} ({path.name}:{line})")


def parse_float(value: str, name: str) -> float:
    """A finite float from a CSV cell; ValueError names the column and the value."""
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a number") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} {value!r} is not finite")
    return x


def file_digest(path: Path) -> str:
    """Short sha256 of a small file, so settings change when an options file changes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def clean_texts(values: Iterable[str]) -> tuple[str, ...]:
    """Captions as given, without surrounding whitespace; empty ones dropped."""
    return tuple(v.strip() for v in values if v and v.strip())


def merge_regions(regions: Sequence[Region], touching: bool) -> list[Region]:
    """Merge regions of identical text whose times overlap (or also touch, if `touching`); sorted by onset.

    Merged regions keep the first region's meta.
    """
    by_text: dict[str, list[Region]] = {}
    for r in regions:
        by_text.setdefault(r.text, []).append(r)
    out: list[Region] = []
    for group in by_text.values():
        group = sorted(group, key=lambda r: (r.onset, r.offset))
        cur = group[0]
        for r in group[1:]:
            joins = r.onset <= cur.offset if touching else r.onset < cur.offset
            if joins:
                cur = Region(cur.text, cur.onset, max(cur.offset, r.offset), cur.meta)
            else:
                out.append(cur)
                cur = r
        out.append(cur)
    out.sort(key=lambda r: (r.onset, r.offset, r.text))
    return out
