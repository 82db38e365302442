"""The synthetic dataset written in the official raw layouts of Clotho, TACOS and AudioSet-strong.

`generate` writes three datasets under one folder, each in the layout its real converter reads
(DESIGN.md "Raw layouts"), with ``clips`` clips per layout; the clips come from `synthetic.events` (sounds
with known event times) and `synthetic.captions` (order-aware captions):

- ``clotho/``: 70/15/15 development/validation/evaluation, WAV, five order-aware captions per clip,
  ISO-8859-1 metadata, file names with spaces, commas, apostrophes and accents, and
  ``metadata_eval.csv`` whose queries (the evaluation captions) list every evaluation clip they
  truthfully describe: some evaluation clips share their event sequence, so some queries have several.
- ``tacos/``: one release with its split files (a fifth of the clips, at least 4, in test_split.csv, drawn
  as the TACOS code draws its split), MP3, one region caption per event and one clip-level caption per
  file; ``subclass`` is the clip's longest event, for stratification.
- ``audioset_strong/``: 70/30 train/eval, stereo FLAC named ``Y{ytid}.flac``, one TSV row per event
  with a made-up MID (``/m/0syn01``...); about one long event in ten is annotated as two adjacent
  rows of the same label, as in the real annotations, which the converter merges.

Every clip draws from its own generator, seeded by ``(seed, layout, clip index)``: the same arguments give
byte-identical files, however many worker processes render them.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from shards.sources.tacos import test_rows as tacos_test_rows
from synthetic.captions import clip_captions, region_caption
from synthetic.events import CLASSES, EVENT_CLASSES, EVENTS_PER_CLIP, EVENTS_PER_CLIP_P, compose_clip

SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)
"""Rates every output format (WAV, FLAC and MP3) can be written at; all leave room for a 4 kHz chirp."""
MIN_SECONDS, MAX_SECONDS = 3.0, 30.0
LAYOUTS = ("clotho", "tacos", "audioset_strong")
CLOTHO_SPLITS = (("development", 0.70), ("validation", 0.15), ("evaluation", 0.15))
AUDIOSET_SPLITS = (("train", 0.70), ("eval", 0.30))

# ---------------------------------------------------------------------------------------------------------------------
# Writers for the official layouts
# ---------------------------------------------------------------------------------------------------------------------

_LAYOUT_CODE = {"clotho": 1, "tacos": 2, "audioset_strong": 3}
_CLOTHO_STEMS = (
    "synth take {i}",
    "room tone, take {i}",
    "Prüfsignal {i}",
    "Maria's bench test {i}",
    "lab_session-{i}",
    "señal de prueba {i} (mono)",
    "field test {i}",
    "Tonaufnahme, Studio {i}",
)
_AUTHORS = ("José_Núñez", "Zoë.K", "jmartin", "Ana_Bärtschi", "soundlab42")
_LICENSES = (
    "http://creativecommons.org/publicdomain/zero/1.0/",
    "http://creativecommons.org/licenses/by/3.0/",
    "http://creativecommons.org/licenses/by/4.0/",
)
_YTID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
CLOTHO_CAPTION_FIELDS = ("file_name", "caption_1", "caption_2", "caption_3", "caption_4", "caption_5")
CLOTHO_METADATA_FIELDS = (
    "file_name",
    "keywords",
    "sound_id",
    "sound_link",
    "start_end_samples",
    "manufacturer",
    "license",
)
TACOS_METADATA_FIELDS = (
    "filename",
    "keywords",
    "freesound_id",
    "sound_link",
    "manufacturer",
    "license",
    "superclass",
    "subclass",
    "title",
    "description",
    "duration",
    "original_samplerate",
    "original_bitdepth",
    "original_file_type",
    "num_downloads",
    "avg_rating",
    "geotag",
    "start_time_s",
    "end_time_s",
    "original_filename",
)
CLOTHO_RELEVANCE_FIELDS = ("query", "audio_filenames")
TACOS_STRONG_FIELDS = ("filename", "text", "onset", "offset")
TACOS_WEAK_FIELDS = ("filename", "text")  # the release header (the TACOS code renames caption -> text)
AUDIOSET_STRONG_FIELDS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")

Progress = Callable[[int], None]


def _no_progress(n: int) -> None:
    pass


def clip_rng(seed: int, layout: str, index: int) -> np.random.Generator:
    """The generator of one clip: depends only on the seed, the layout and the clip's index."""
    return np.random.default_rng([seed, _LAYOUT_CODE[layout], index])


def split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer counts proportional to `fractions` summing to `total` (largest remainder, ties to the first)."""
    raw = [total * f / sum(fractions) for f in fractions]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _seconds(x: float) -> str:
    return f"{x:.3f}"


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]], encoding: str = "utf-8"):
    """RFC-4180 CSV (minimal quoting, CRLF line ends) in `encoding`."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))


def _map(
    fn: Callable[[Any], Any], jobs: Sequence[Any], executor: Executor | None, progress: Progress
) -> list:
    """fn over jobs, in order, in `executor`'s processes if given."""
    results = executor.map(fn, jobs, chunksize=8) if executor is not None else map(fn, jobs)
    out = []
    for r in results:
        out.append(r)
        progress(1)
    return out


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _keywords(labels: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(k for lab in labels for k in (CLASSES[lab].family, lab.replace("_", " "))))


# Clotho ---------------------------------------------------------------------------------------------------------------


def _evaluation_sequences(seed: int, count: int) -> list[tuple[str, ...]]:
    """Event-label sequences for the Clotho evaluation clips; runs of 1-3 clips (the first: 2) share one."""
    rng = np.random.default_rng([seed, _LAYOUT_CODE["clotho"], 1_000_000])
    out: list[tuple[str, ...]] = []
    while len(out) < count:
        k = int(rng.choice(EVENTS_PER_CLIP, p=EVENTS_PER_CLIP_P))
        labels = tuple(EVENT_CLASSES[i].label for i in rng.choice(len(EVENT_CLASSES), size=k, replace=False))
        size = 2 if not out else int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
        out.extend([labels] * min(size, count - len(out)))
    return out


def _clotho_clip(
    root: Path, seed: int, seconds: float, sample_rate: int, job: tuple[int, str, tuple[str, ...] | None]
) -> tuple[list[object], list[object]]:
    """Write one Clotho WAV; return its captions row and metadata row."""
    index, split, labels = job
    rng = clip_rng(seed, "clotho", index)
    clip = compose_clip(rng, seconds, sample_rate, labels)
    name = _CLOTHO_STEMS[index % len(_CLOTHO_STEMS)].format(i=f"{index:04d}") + ".wav"
    sf.write(root / "clotho_audio_files" / split / name, clip.audio, sample_rate, subtype="PCM_16")
    captions = clip_captions(rng, [e.label for e in clip.events], 5)
    author = _pick(rng, _AUTHORS)
    sound_id = 100_000 + index * 7 + int(rng.integers(7))
    meta = [
        name,
        ";".join(_keywords([e.label for e in clip.events])),
        sound_id,
        f"https://freesound.org/people/{author}/sounds/{sound_id}",
        f"[0, {len(clip.audio)}]",
        author,
        _pick(rng, _LICENSES),
    ]
    return [name, *captions], meta


def write_clotho(
    root: Path,
    clips: int,
    seed: int,
    seconds: float,
    sample_rate: int,
    executor: Executor | None = None,
    progress: Progress = _no_progress,
) -> dict[str, int]:
    """The Clotho v2.1 layout under `root`; returns clips per split."""
    counts = dict(zip((s for s, _ in CLOTHO_SPLITS), split_counts(clips, [f for _, f in CLOTHO_SPLITS])))
    jobs: list[tuple[int, str, tuple[str, ...] | None]] = []
    for split, count in counts.items():
        (root / "clotho_audio_files" / split).mkdir(parents=True)
        labels = _evaluation_sequences(seed, count) if split == "evaluation" else [None] * count
        jobs.extend((len(jobs), split, lab) for lab in labels)
    rows = _map(partial(_clotho_clip, root, seed, seconds, sample_rate), jobs, executor, progress)
    csv_dir = root / "clotho_csv_files"
    csv_dir.mkdir()
    for split in counts:
        mine = [r for job, r in zip(jobs, rows) if job[1] == split]
        _write_csv(csv_dir / f"clotho_captions_{split}.csv", CLOTHO_CAPTION_FIELDS, [c for c, _ in mine])
        _write_csv(
            csv_dir / f"clotho_metadata_{split}.csv",
            CLOTHO_METADATA_FIELDS,
            [m for _, m in mine],
            "iso-8859-1",
        )
    # Every evaluation caption is a query; the clips it truthfully describes are those with its event sequence.
    groups: dict[tuple[str, ...], list[str]] = {}
    for (_, split, labels), (caption_row, _) in zip(jobs, rows):
        if split == "evaluation":
            groups.setdefault(labels, []).append(caption_row[0])
    queries: dict[str, list[object]] = {}
    for (_, split, labels), (caption_row, _) in zip(jobs, rows):
        if split == "evaluation":
            queries.update((c, [c, repr(groups[labels])]) for c in caption_row[1:])
    _write_csv(csv_dir / "metadata_eval.csv", CLOTHO_RELEVANCE_FIELDS, queries.values())
    return counts


# TACOS ----------------------------------------------------------------------------------------------------------------


def _tacos_clip(
    root: Path, seed: int, seconds: float, sample_rate: int, job: tuple[int, int]
) -> tuple[list[object], list[list[object]], list[object]]:
    """Write one TACOS MP3; return its metadata row, region rows and clip-caption row."""
    index, fid = job
    rng = clip_rng(seed, "tacos", index)
    clip = compose_clip(rng, seconds, sample_rate)
    filename = f"{fid}.mp3"
    sf.write(root / "audio" / filename, clip.audio, sample_rate, format="MP3")
    labels = [e.label for e in clip.events]
    regions = [
        [filename, region_caption(rng, e.label), _seconds(e.onset), _seconds(e.offset)] for e in clip.events
    ]
    weak = [filename, clip_captions(rng, labels, 1)[0]]
    main = max(clip.events, key=lambda e: e.offset - e.onset)
    author = _pick(rng, _AUTHORS)
    start = round(float(rng.uniform(0, 60)), 3)
    title = f"synthetic {main.label.replace('_', ' ')} {fid}"
    meta = [
        filename,
        ", ".join(_keywords(labels)),
        fid,
        f"https://freesound.org/people/{author}/sounds/{fid}/",
        author,
        _pick(rng, _LICENSES),
        CLASSES[main.label].family,
        CLASSES[main.label].display_name,
        title,
        "Synthetic test recording.",
        _seconds(seconds),
        sample_rate,
        16,
        "wav",
        int(rng.integers(0, 5000)),
        round(float(rng.uniform(3, 5)), 2),
        "",
        _seconds(start),
        _seconds(start + seconds),
        f"{title}.wav",
    ]
    return meta, regions, weak


def write_tacos(
    root: Path,
    clips: int,
    seed: int,
    seconds: float,
    sample_rate: int,
    executor: Executor | None = None,
    progress: Progress = _no_progress,
) -> dict[str, int]:
    """The TACOS Zenodo layout under `root` (one release: the converter draws its own test split)."""
    (root / "audio").mkdir(parents=True)
    ids = np.random.default_rng([seed, _LAYOUT_CODE["tacos"], 1_000_000]).choice(
        900_000, clips, replace=False
    )
    jobs = [(index, int(i) + 10_000) for index, i in enumerate(ids)]
    rows = _map(partial(_tacos_clip, root, seed, seconds, sample_rate), jobs, executor, progress)
    _write_csv(root / "metadata.csv", TACOS_METADATA_FIELDS, [m for m, _, _ in rows])
    _write_csv(
        root / "annotations_strong.csv",
        TACOS_STRONG_FIELDS,
        [r for _, rs, _ in rows for r in rs],
    )
    _write_csv(root / "annotations_weak.csv", TACOS_WEAK_FIELDS, [w for _, _, w in rows])
    subclass = TACOS_METADATA_FIELDS.index("subclass")
    names, subclasses = [m[0] for m, _, _ in rows], [m[subclass] for m, _, _ in rows]
    test, _ = tacos_test_rows(subclasses, min(max(4, clips // 5), clips - 1), root / "metadata.csv")
    _write_csv(
        root / "development_split.csv", ("filename",), [[n] for i, n in enumerate(names) if i not in test]
    )
    _write_csv(root / "test_split.csv", ("filename",), [[n] for i, n in enumerate(names) if i in test])
    return {"release": clips}


# AudioSet-strong ------------------------------------------------------------------------------------------------------


def _ytids(seed: int, count: int) -> list[str]:
    """Distinct 11-character YouTube-style ids; every third has a '_', every fourth a '-' (the first: leading)."""
    rng = np.random.default_rng([seed, _LAYOUT_CODE["audioset_strong"], 1_000_000])
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        chars = [_YTID_CHARS[i] for i in rng.integers(0, 62, size=11)]
        i = len(out)
        if i % 3 == 0:
            chars[int(rng.integers(1, 10))] = "_"
        if i % 4 == 1:
            chars[0 if i == 1 else int(rng.integers(1, 10))] = "-"
        ytid = "".join(chars)
        if ytid not in seen:
            seen.add(ytid)
            out.append(ytid)
    return out


def _audioset_clip(
    root: Path, seed: int, seconds: float, sample_rate: int, job: tuple[int, str]
) -> list[str]:
    """Write one AudioSet FLAC (stereo, as downloads often are); return its TSV lines."""
    index, ytid = job
    rng = clip_rng(seed, "audioset_strong", index)
    clip = compose_clip(rng, seconds, sample_rate)
    segment = f"{ytid}_{int(rng.integers(0, 300)) * 1000}"
    sf.write(root / "audio" / f"Y{ytid}.flac", np.stack([clip.audio] * 2, 1), sample_rate, subtype="PCM_16")
    lines = []
    for e in clip.events:
        bounds = [(e.onset, e.offset)]
        if e.offset - e.onset >= 1.0 and rng.random() < 0.1:  # annotated as two adjacent rows, as happens
            cut = round(float(rng.uniform(e.onset + 0.3, e.offset - 0.3)), 3)
            bounds = [(e.onset, cut), (cut, e.offset)]
        lines.extend(f"{segment}\t{_seconds(a)}\t{_seconds(b)}\t{CLASSES[e.label].mid}\n" for a, b in bounds)
    return lines


def write_audioset_strong(
    root: Path,
    clips: int,
    seed: int,
    seconds: float,
    sample_rate: int,
    executor: Executor | None = None,
    progress: Progress = _no_progress,
) -> dict[str, int]:
    """The AudioSet-strong layout under `root`: TSVs with a header, label names and ``audio/Y{ytid}.flac``."""
    (root / "audio").mkdir(parents=True)
    names = "".join(f"{c.mid}\t{c.display_name}\n" for c in EVENT_CLASSES)
    (root / "mid_to_display_name.tsv").write_text(names, encoding="utf-8")
    counts = dict(zip((s for s, _ in AUDIOSET_SPLITS), split_counts(clips, [f for _, f in AUDIOSET_SPLITS])))
    jobs = list(enumerate(_ytids(seed, clips)))
    lines = _map(partial(_audioset_clip, root, seed, seconds, sample_rate), jobs, executor, progress)
    start = 0
    for split, count in counts.items():
        body = "".join(line for clip_lines in lines[start : start + count] for line in clip_lines)
        header = "\t".join(AUDIOSET_STRONG_FIELDS) + "\n"
        (root / f"audioset_{split}_strong.tsv").write_text(header + body, encoding="utf-8")
        start += count
    return counts


WRITERS = {"clotho": write_clotho, "tacos": write_tacos, "audioset_strong": write_audioset_strong}


def generate(
    out: str | os.PathLike,
    clips: int,
    seed: int,
    seconds: float = 10.0,
    sample_rate: int = 16000,
    workers: int = 1,
    overwrite: bool = False,
    progress: Progress = _no_progress,
) -> dict[str, dict[str, int]]:
    """Write `clips` clips in each layout under `out`/{clotho,tacos,audioset_strong}; returns clips per split.

    Each layout is written to a hidden temporary folder and renamed into place, so an interrupted run
    never leaves a layout that looks complete. Existing layout folders are an error unless `overwrite`.
    `workers` > 1 renders clips in that many processes; the files are the same either way.
    """
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 1:
        raise ValueError(f"clips must be a positive integer, got {clips!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in [{MIN_SECONDS}, {MAX_SECONDS}], got {seconds!r}")
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}, got {sample_rate!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    out = Path(out)
    for layout in LAYOUTS:
        target = out / layout
        if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} already exists; remove it or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    executor = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
    summary = {}
    try:
        for layout in LAYOUTS:
            tmp, target = out / f".{layout}.partial", out / layout
            shutil.rmtree(tmp, ignore_errors=True)
            summary[layout] = WRITERS[layout](tmp, clips, seed, seconds, sample_rate, executor, progress)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            tmp.rename(target)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return summary
