"""The public releases' own rows (tests/shards/releases/, sources in its README) laid out as users download
them, with audio written by soundfile in each release's real format, and what a correct conversion makes of
them, computed here with the standard library only (csv, json), independently of the readers under test.

Each ``lay_*`` builder returns a :class:`Release`: the raw tree, the folder to pass as --audio-dir for
the splits whose audio is elsewhere, and, per split, every clip that has audio with its exact captions, regions and
the naming its audio file has, and every entry the conversion must skip with the reason category.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from synthetic.layouts import TACOS_METADATA_FIELDS  # the release's 20 columns, one list for both

RELEASES = Path(__file__).resolve().parent / "releases"
WAVCAPS_HF_PREFIX = Path(
    "Zip_files/SoundBible/mnt/fast/nobackup/scratch4weeks/xm00178/WavCaps/data/waveforms"
)
"""Where the Hugging Face release's SoundBible zip unpacks its FLACs (a deep prefix, then SoundBible_flac/)."""


@dataclass
class Clip:
    """What one clip of the release must become."""

    captions: list[str]
    strong: list[tuple[str, float, float]] = field(default_factory=list)
    naming: str = ""
    """The naming rule its audio file was written under (the summary counts these)."""
    meta: dict = field(default_factory=dict)
    """Meta fields the sample must carry (a subset of its meta)."""


@dataclass
class Split:
    clips: dict[str, Clip] = field(default_factory=dict)
    """source_id -> clip, for the clips with audio, in listing order."""
    skipped: dict[str, str] = field(default_factory=dict)
    """source_id -> reason category (the text before ':')."""

    def namings(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for clip in self.clips.values():
            out[clip.naming] = out.get(clip.naming, 0) + 1
        return dict(sorted(out.items()))


@dataclass
class Release:
    root: Path
    splits: dict[str, Split]
    audio_dirs: dict[str, Path] = field(default_factory=dict)
    """split -> the --audio-dir its audio needs (splits whose audio is in the layout's own folder: absent)."""
    options: dict = field(default_factory=dict)
    """Reader options the expectations assume (AudioSetCaps: qa=True)."""

    def source(self, name: str, split: str):
        """The reader of dataset `name` for `split` of this release."""
        from shards.sources import SOURCES

        return SOURCES[name](self.root, audio_dir=self.audio_dirs.get(split), **self.options)


def tone(seconds: float, rate: int, channels: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)


def write_audio(path: Path, seconds: float, rate: int, channels: int, freq: float = 440.0) -> Path:
    """A tone in the format the extension names: WAV 16-bit, FLAC 16-bit or MP3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3"}[path.suffix.lower()]
    subtype = None if fmt == "MP3" else "PCM_16"
    sf.write(path, tone(seconds, rate, channels, freq), rate, format=fmt, subtype=subtype)
    return path


def read_rows(path: Path, encoding: str = "utf-8-sig", delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def copy(name: str, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RELEASES / name, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------
# Clotho v2.1: 44.1 kHz mono WAV; development in clotho_audio_files/, validation as the 7z unpacks (SRC/validation/)
# ---------------------------------------------------------------------------------------------------------

CLOTHO_MISSING = "Paper_Parchment_Rustling.wav"


def lay_clotho(root: Path) -> Release:
    csv_dir = root / "clotho_csv_files"
    for name in (
        "captions_development",
        "captions_validation",
        "captions_evaluation",
        "metadata_development",
    ):
        copy(f"clotho/clotho_{name}.csv", csv_dir / f"clotho_{name}.csv")
    folders = {
        "development": root / "clotho_audio_files" / "development",
        "validation": root / "validation",
        "evaluation": root / "clotho_audio_files" / "evaluation",
    }
    metadata = {
        r["file_name"]: r for r in read_rows(csv_dir / "clotho_metadata_development.csv", "iso-8859-1")
    }
    splits = {}
    for split, folder in folders.items():
        out = Split()
        for i, row in enumerate(read_rows(csv_dir / f"clotho_captions_{split}.csv")):
            name = row["file_name"]
            if name == CLOTHO_MISSING:
                out.skipped[name] = "missing audio"
                continue
            write_audio(folder / name, 0.5 + 0.05 * (i % 4), 44100, 1, 300 + 20 * i)
            captions = [row[f"caption_{j}"].strip() for j in range(1, 6)]
            meta = {}
            if name in metadata:
                m = metadata[name]
                meta = {"license": m["license"], "author": m["manufacturer"], "sound_id": m["sound_id"]}
                meta["tags"] = m["keywords"].split(";")
            out.clips[name] = Clip(captions, naming="{file_name}", meta=meta)
        splits[split] = out
    return Release(root, splits)


# ---------------------------------------------------------------------------------------------------------
# AudioCaps: the AudioCaps repository's dataset/ and dataset2.0/; 48 kHz stereo audio under several namings
# ---------------------------------------------------------------------------------------------------------

AUDIOCAPS_GONE = {"UDGBjjwyaqE_20", "-65gZY_yF3o_17"}
"""Clips whose YouTube video is gone (no audio), as for a large share of the real downloads."""


def audiocaps_clips(path: Path) -> dict[str, dict]:
    """source id '{ytid}_{start}' -> its captions and audiocap ids, grouped in first-appearance order."""
    clips: dict[str, dict] = {}
    for row in read_rows(path):
        clip = clips.setdefault(
            f"{row['youtube_id']}_{int(row['start_time'])}", {"row": row, "captions": [], "ids": []}
        )
        clip["captions"].append(row["caption"].strip())
        clip["ids"].append(row["audiocap_id"])
    return clips


def lay_audiocaps(root: Path, version: str = "dataset") -> Release:
    """train: mixed namings in audio_32000Hz/train; test: FLAC in audio_32000Hz/test; val: a downloader's
    flat folder of Y{ytid}.wav outside SRC (--audio-dir)."""
    for rel in (
        "dataset/train.csv",
        "dataset/val.csv",
        "dataset/test.csv",
        "dataset2.0/val.csv",
        "dataset2.0/test.csv",
    ):
        copy(f"audiocaps/{rel}", root / rel)
    downloads = root.parent / f"{root.name}-downloads"
    splits = {}
    namings = ["{youtube_id}_{start_time}.flac", "Y{youtube_id}.wav", "{youtube_id}_{start_time}.mp3"]
    namings.append("{youtube_id}_{start_time}.wav")
    for split in ("train", "val", "test"):
        path = root / version / f"{split}.csv"
        if not path.is_file():
            continue
        out = Split()
        for i, (source_id, clip) in enumerate(audiocaps_clips(path).items()):
            ytid = clip["row"]["youtube_id"]
            if source_id in AUDIOCAPS_GONE:
                out.skipped[source_id] = "missing audio"
                continue
            naming = {"train": namings[i % 4], "val": "Y{youtube_id}.wav", "test": namings[0]}[split]
            file_name = naming.replace("{youtube_id}", ytid).replace(
                "{start_time}", source_id.rsplit("_", 1)[1]
            )
            folder = downloads if split == "val" else root / "audio_32000Hz" / split
            write_audio(folder / file_name, 0.5, 48000, 2, 200 + 30 * i)
            meta = {
                "youtube_id": ytid,
                "start_time": int(clip["row"]["start_time"]),
                "audiocap_ids": clip["ids"],
            }
            out.clips[source_id] = Clip(clip["captions"], naming=naming, meta=meta)
        splits[split] = out
    return Release(root, splits, {"val": downloads})


# ---------------------------------------------------------------------------------------------------------
# WavCaps SoundBible, as the Hugging Face release unzips: 32 kHz mono FLAC under a deep prefix
# ---------------------------------------------------------------------------------------------------------

WAVCAPS_MISSING = "2214"


def lay_wavcaps_soundbible(root: Path) -> Release:
    for rel in (
        "SoundBible/sb_final.json",
        *(f"blacklist/blacklist_exclude_{b}.json" for b in ("all_ac", "test_ac", "ub8k_esc50_vggsound")),
    ):
        copy(f"wavcaps/json_files/{rel}", root / "json_files" / rel)
    folder = root / WAVCAPS_HF_PREFIX / "SoundBible_flac"
    out = Split()
    data = json.loads((root / "json_files" / "SoundBible" / "sb_final.json").read_text(encoding="utf-8"))[
        "data"
    ]
    for i, entry in enumerate(data):
        if entry["id"] == WAVCAPS_MISSING:
            out.skipped[entry["id"]] = "missing audio"
            continue
        write_audio(folder / f"{entry['id']}.flac", 0.5, 32000, 1, 250 + 10 * i)
        meta = {k: entry[k] for k in ("title", "description", "author", "href")}
        out.clips[entry["id"]] = Clip([entry["caption"].strip()], naming="{id}.flac", meta=meta)
    return Release(root, {"SoundBible": out})


# ---------------------------------------------------------------------------------------------------------
# AudioSetCaps YouTube-8M: the release's file names; MP3 clips the user downloaded, 44.1 kHz stereo
# ---------------------------------------------------------------------------------------------------------


def lay_audiosetcaps(root: Path) -> Release:
    for name in ("YouTube-8M_AudioSetCaps_caption.csv", "YouTube-8M_Qwen-Audio_Q&A.csv"):
        copy(f"audiosetcaps/Dataset/{name}", root / "Dataset" / name)
    qa = {r["id"]: r for r in read_rows(root / "Dataset" / "YouTube-8M_Qwen-Audio_Q&A.csv")}
    out = Split()
    for i, row in enumerate(read_rows(root / "Dataset" / "YouTube-8M_AudioSetCaps_caption.csv")):
        write_audio(root / "audio" / "youtube8m" / f"{row['id']}.mp3", 1.0, 44100, 2, 330 + 40 * i)
        pairs = [
            {"question": qa[row["id"]][f"question_{j}"], "answer": qa[row["id"]][f"answer_{j}"]}
            for j in (1, 2, 3)
        ]
        out.clips[row["id"]] = Clip([row["caption"]], naming="{id}.mp3", meta={"qa": pairs})
    return Release(root, {"youtube8m": out}, options={"qa": True})


# ---------------------------------------------------------------------------------------------------------
# AudioSet-strong eval: 10 s clips, 32 kHz mono, under the three namings downloaders use
# ---------------------------------------------------------------------------------------------------------

AUDIOSET_MISSING = "vplrJtp3zB4_310000"


def lay_audioset_strong(root: Path) -> Release:
    for name in ("audioset_eval_strong.tsv", "mid_to_display_name.tsv"):
        copy(f"audioset_strong/{name}", root / name)
    with (root / "mid_to_display_name.tsv").open(encoding="utf-8") as f:
        names = dict(line.rstrip("\n").split("\t") for line in f)
    out = Split()
    segments: dict[str, list[tuple[str, float, float]]] = {}
    for row in read_rows(root / "audioset_eval_strong.tsv", delimiter="\t"):
        event = (names[row["label"]], float(row["start_time_seconds"]), float(row["end_time_seconds"]))
        segments.setdefault(row["segment_id"], []).append(event)
    namings = ["Y{segment_id}.wav", "{segment_id}.flac", "Y{ytid}.flac"]
    for i, (segment, events) in enumerate(segments.items()):
        if segment == AUDIOSET_MISSING:
            out.skipped[segment] = "missing audio"
            continue
        naming = namings[i % 3]
        file_name = naming.replace("{segment_id}", segment).replace("{ytid}", segment.rsplit("_", 1)[0])
        write_audio(root / "audio" / file_name, 10.0, 32000, 1, 200 + 25 * i)
        # In these rows no two events of one label overlap or touch, so every row is one region as written.
        strong = sorted(events, key=lambda e: (e[1], e[2], e[0]))
        ytid, start = segment.rsplit("_", 1)
        out.clips[segment] = Clip([], strong, naming, {"ytid": ytid, "start_ms": int(start)})
    return Release(root, {"eval": out})


# ---------------------------------------------------------------------------------------------------------
# TACOS: the release's schema (no public rows exist; see releases/README.md), MP3 clips at 32 kHz mono
# ---------------------------------------------------------------------------------------------------------

TACOS_SUBCLASSES = ("Dog", "Rain")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """RFC-4180 CSV, CRLF, UTF-8 (pandas' to_csv writes the same for these values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8"))
    return path


def lay_tacos(root: Path, audio_in_src: bool = False, clips: int = 10) -> Release:
    """`clips` clips of 2 s (test: every 3rd). Strong rows of clip i, seconds in the clip:
    a valid region; for i % 4 == 1 one with a negative onset (clipped to 0); i % 4 == 2 one ending past the
    clip (clipped to 2.0); i % 4 == 3 one with offset <= onset (dropped). Clip 4's only regions are invalid:
    it keeps its clip caption. Clip 5 has no audio. Audio in SRC/audio/, or SRC itself if `audio_in_src`."""
    meta_rows, strong_rows, weak_rows, dev, test = [], [], [], [], []
    splits = {"train": Split(), "test": Split()}
    for i in range(clips):
        fid = 100100 + 7 * i
        name = f"{fid}.mp3"
        sub = TACOS_SUBCLASSES[i % 2]
        start = 3.25 + i
        meta_rows.append([
            name, f"{sub.lower()}, field-recording, ünïcode", fid, f"https://freesound.org/people/someone/sounds/{fid}/",
            "someone", "http://creativecommons.org/publicdomain/zero/1.0/", "Animals", sub, f"Title {i}",
            "A description, with a comma.", 30.5, 44100, 16, "wav", 12, 4.5, "", f"{start:.3f}", f"{start + 2:.3f}",
            f"orig {i}.wav",
        ])  # fmt: skip
        regions = [(f"a {sub.lower()} sound number {i}", 0.2, 0.9)]
        rows = [[name, regions[0][0], "0.2", "0.9"]]
        fixed = []
        if i % 4 == 1:
            rows.append([name, "starts before the clip", "-0.05", "0.4"])
            fixed.append(("starts before the clip", 0.0, 0.4))
        elif i % 4 == 2:
            rows.append([name, "ends after the clip", "1.5", "2.3"])
            fixed.append(("ends after the clip", 1.5, 2.0))
        elif i % 4 == 3:
            rows.append([name, "ends before it starts", "1.2", "1.1"])
        if i == 4:
            rows = [[name, "zero length", "0.5", "0.5"], [name, "reversed", "1.5", "0.5"]]
            regions = []
        strong_rows += rows
        caption = f"Clip level caption {i}, of a {sub.lower()}."
        weak_rows.append([name, caption])
        (test if i % 3 == 0 else dev).append([name])
        split = splits["test" if i % 3 == 0 else "train"]
        if i == 5:
            split.skipped[name] = "missing audio"
            continue
        write_audio((root if audio_in_src else root / "audio") / name, 2.0, 32000, 1, 300 + 15 * i)
        strong = sorted(regions + fixed, key=lambda r: (r[1], r[2], r[0]))
        meta = {
            "subclass": sub,
            "keywords": [sub.lower(), "field-recording", "ünïcode"],
            "start_time_s": f"{start:.3f}",
        }
        split.clips[name] = Clip([caption], strong, "{filename}", meta)
    write_csv(root / "metadata.csv", TACOS_METADATA_FIELDS, meta_rows)
    write_csv(root / "annotations_strong.csv", ["filename", "text", "onset", "offset"], strong_rows)
    write_csv(root / "annotations_weak.csv", ["filename", "text"], weak_rows)
    write_csv(root / "development_split.csv", ["filename"], dev)
    write_csv(root / "test_split.csv", ["filename"], test)
    return Release(root, splits)


# The fixes lay_tacos makes the converter list: split -> [(source id, action)].
def tacos_fixes(clips: int = 10) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for i in range(clips):
        name = f"{100100 + 7 * i}.mp3"
        actions = {1: ["clipped"], 2: ["clipped"], 3: ["dropped"]}.get(i % 4, [])
        if i == 4:
            actions = ["dropped", "dropped"]
        out["test" if i % 3 == 0 else "train"] += [(name, a) for a in actions]
    return out


LAYERS = {
    "clotho": lay_clotho,
    "audiocaps": lay_audiocaps,
    "wavcaps": lay_wavcaps_soundbible,
    "audiosetcaps": lay_audiosetcaps,
    "audioset-strong": lay_audioset_strong,
    "tacos": lay_tacos,
}
"""Dataset name -> its builder."""
