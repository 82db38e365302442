"""Small raw datasets in the official download layouts (DESIGN.md "Raw layouts"), for converter tests.

Each ``write_*`` builder creates one dataset under `root` with a few good clips (44.1 kHz stereo WAV,
FLAC or MP3; names with spaces, commas and unicode) and a few bad ones (missing, empty, truncated,
undecodable audio, bad rows, duplicate ids, onset > offset), and returns what a correct converter must
make of it: ``{split: Expect}``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from tests.helpers import tone

RATE = 44100


@dataclass
class Expect:
    """What converting one split must give."""

    samples: dict[str, int] = field(default_factory=dict)
    """source_id -> number of samples (segments) it becomes."""
    skipped: dict[str, str] = field(default_factory=dict)
    """source_id -> reason category (the text before ':' in the manifest's reason)."""


def write_audio(path: Path, seconds: float, rate: int = RATE, freq: float = 440.0, channels: int = 2) -> Path:
    """A tone in the format the extension names (.wav 16-bit, .flac, .mp3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3"}[path.suffix.lower()]
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": None}[fmt]
    sf.write(path, tone(seconds, rate, freq, channels=channels), rate, format=fmt, subtype=subtype)
    return path


def write_bad(path: Path, kind: str) -> Path:
    """'empty' (0 bytes), 'garbage' (not audio) or 'truncated' (header promises more than is there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    elif kind == "truncated":
        write_audio(path, 2.0)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        raise ValueError(kind)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], encoding: str = "utf-8") -> Path:
    """RFC-4180 CSV as the releases write them (minimal quoting, CRLF line ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


# ---------------------------------------------------------------------------------------------------------
# Clotho
# ---------------------------------------------------------------------------------------------------------

CLOTHO_GOOD = ("Santa Motor.wav", "rain, heavy (2).wav", "café ambience ü.wav")


def write_clotho(root: Path) -> dict[str, Expect]:
    csv_dir, audio = root / "clotho_csv_files", root / "clotho_audio_files"
    dev = audio / "development"
    for i, name in enumerate(CLOTHO_GOOD):
        write_audio(dev / name, 1.0 + 0.25 * i, freq=300 + 100 * i)
    write_bad(dev / "empty.wav", "empty")
    write_bad(dev / "garbage.wav", "garbage")
    write_bad(dev / "truncated.wav", "truncated")
    caps = [f'caption {j}, with a comma and "quotes"' for j in range(1, 6)]
    rows = [[name, *[f"{c} for {name}" for c in caps]] for name in CLOTHO_GOOD]
    rows += [
        ["missing file.wav", *caps],
        ["empty.wav", *caps],
        ["garbage.wav", *caps],
        ["truncated.wav", *caps],
        ["", *caps],
        ["no captions.wav", "", "", "", "", ""],
        ["Santa Motor.wav", *caps],
    ]
    header = ["file_name"] + [f"caption_{j}" for j in range(1, 6)]
    write_csv(csv_dir / "clotho_captions_development.csv", header, rows)
    meta_header = [
        "file_name",
        "keywords",
        "sound_id",
        "sound_link",
        "start_end_samples",
        "manufacturer",
        "license",
    ]
    meta_rows = [
        [
            name,
            "engine;motor;café",
            1000 + i,
            f"https://freesound.org/s/{1000 + i}",
            "",
            "Jöhn Dóe",
            "CC-BY 4.0",
        ]
        for i, name in enumerate(CLOTHO_GOOD[:2])
    ]
    meta_rows.append([CLOTHO_GOOD[2], "café;rain", 1002, "https://freesound.org/s/1002", "", "Zoë", "CC0"])
    write_csv(csv_dir / "clotho_metadata_development.csv", meta_header, meta_rows, "iso-8859-1")

    write_audio(audio / "validation" / "valid one.wav", 1.0, channels=1)
    write_csv(csv_dir / "clotho_captions_validation.csv", header, [["valid one.wav", *caps]])

    evaluation = ("eval a.wav", "eval b.wav")
    for name in evaluation:
        write_audio(audio / "evaluation" / name, 1.0)
    write_csv(csv_dir / "clotho_captions_evaluation.csv", header, [[n, *caps] for n in evaluation])
    write_csv(
        csv_dir / "metadata_eval.csv",
        ["query", "audio_filenames"],
        [["a query", repr(list(evaluation))], ["another query", "['eval b.wav']"], ["broken", "[unclosed"]],
    )
    return {
        "development": Expect(
            samples=dict.fromkeys(CLOTHO_GOOD, 1),
            skipped={
                "missing file.wav": "missing audio",
                "empty.wav": "empty audio",
                "garbage.wav": "undecodable audio",
                "truncated.wav": "truncated audio",
                "clotho_captions_development.csv:9": "bad row",
                "no captions.wav": "bad row",
                "Santa Motor.wav": "duplicate id",
            },
        ),
        "validation": Expect(samples={"valid one.wav": 1}),
        "evaluation": Expect(samples=dict.fromkeys(evaluation, 1)),
    }


# ---------------------------------------------------------------------------------------------------------
# AudioCaps
# ---------------------------------------------------------------------------------------------------------


def write_audiocaps(root: Path) -> dict[str, Expect]:
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    audio = root / "audio_32000Hz"
    write_audio(audio / "train" / "-abc_DEF123_30.flac", 1.0, rate=32000)
    write_audio(audio / "train" / "xyz-9_8_7aa_0.wav", 1.0)
    write_audio(audio / "train" / "mp3clip-__1_120.mp3", 1.5)
    train = [
        [1, "-abc_DEF123", 30, "A car, then a horn"],
        [2, "xyz-9_8_7aa", "0.0", "Rain falls"],
        [3, "mp3clip-__1", 120, "Birds sing"],
        [4, "gone_from_yt", 10, "Never downloaded"],
        [5, "badstart", "ten", "Bad start time"],
        [6, "", 5, "No id"],
    ]
    write_csv(root / "csv_files_v1" / "train.csv", header, train)
    write_audio(audio / "val" / "valclip_A_0.flac", 1.0, rate=32000)
    write_audio(audio / "val" / "valclip_B_20.flac", 1.0, rate=32000)
    val = []
    for j in range(5):  # the two clips' rows interleave, as in the release
        val.append([10 + 2 * j, "valclip_A", 0, f"clip A caption {j}"])
        val.append([11 + 2 * j, "valclip_B", 20, f"clip B caption {j}"])
    write_csv(root / "csv_files_v1" / "val.csv", header, val)
    write_csv(root / "csv_files_v1" / "test.csv", header, [])
    return {
        "train": Expect(
            samples={"-abc_DEF123_30": 1, "xyz-9_8_7aa_0": 1, "mp3clip-__1_120": 1},
            skipped={"gone_from_yt_10": "missing audio", "badstart": "bad row", "train.csv:7": "bad row"},
        ),
        "val": Expect(samples={"valclip_A_0": 1, "valclip_B_20": 1}),
        "test": Expect(),
    }


# ---------------------------------------------------------------------------------------------------------
# WavCaps
# ---------------------------------------------------------------------------------------------------------


def write_wavcaps(root: Path, long_seconds: float = 3.3) -> dict[str, Expect]:
    """Expectations for --max-seconds 1: FreeSound's long clip "555" becomes 1 s segments (the tail goes)."""
    js = root / "json_files"
    audio = root / "Audio"
    fsd = [
        {
            "id": "180913",
            "caption": "A dog barks",
            "duration": 1.0,
            "audio": "x",
            "tags": ["dog"],
            "author": "Ann",
        },
        {"id": "555", "caption": "A long drone", "duration": long_seconds, "audio": "x", "href": "h"},
        {"id": "666", "caption": "Blacklisted (test)", "duration": 1.0, "audio": "x"},
        {"id": "777", "caption": "Blacklisted (all only)", "duration": 1.0, "audio": "x"},
        {"id": "888", "caption": "", "duration": 1.0, "audio": "x"},
        {"caption": "No id", "duration": 1.0},
        {"id": "180913", "caption": "Same id again", "duration": 1.0},
    ]
    write_audio(audio / "FreeSound" / "180913.flac", 1.0, rate=32000, channels=1)
    write_audio(audio / "FreeSound" / "555.flac", long_seconds, rate=32000, channels=1)
    for i in ("666", "777"):
        write_audio(audio / "FreeSound" / f"{i}.flac", 1.0, rate=32000, channels=1)
    asl = [
        {"id": "Yb0RFKhbpFJA.wav", "caption": "Speech and music", "duration": 10.0, "audio": "x"},
        {"id": "Y-black_1234.wav", "caption": "Blacklisted audioset", "duration": 10.0, "audio": "x"},
    ]
    write_audio(audio / "AudioSet_SL" / "Yb0RFKhbpFJA.flac", 1.0, rate=32000, channels=1)
    write_audio(audio / "AudioSet_SL" / "Y-black_1234.flac", 1.0, rate=32000, channels=1)
    bbc = [
        {"id": "07070001", "caption": "Thunder", "description": "Thunder, distant", "category": "['Weather']"}
    ]
    write_audio(audio / "BBC_Sound_Effects" / "07070001.flac", 1.0, rate=32000, channels=1)
    sb = [{"id": "1234", "caption": "A bell rings", "title": "Bell", "author": "Mike", "description": "bell"}]
    write_audio(audio / "SoundBible" / "1234.flac", 1.0, rate=32000, channels=1)
    for sub, name, data in (
        ("FreeSound", "fsd_final.json", fsd),
        ("AudioSet_SL", "as_final.json", asl),
        ("BBC_Sound_Effects", "bbc_final.json", bbc),
        ("SoundBible", "sb_final.json", sb),
    ):
        (js / sub).mkdir(parents=True, exist_ok=True)
        doc = {"num_captions_per_audio": 1, "data": data}
        (js / sub / name).write_text(json.dumps(doc), encoding="utf-8")
    (js / "blacklist").mkdir()
    lists = {
        "test_ac": {"AudioSet": ["Y-black_1234.wav"], "FreeSound": ["666"]},
        "all_ac": {"AudioSet": ["Y-black_1234.wav"], "FreeSound": ["666", "777"]},
        "ub8k_esc50_vggsound": {"AudioSet": [], "FreeSound": []},
    }
    for name, content in lists.items():
        (js / "blacklist" / f"blacklist_exclude_{name}.json").write_text(
            json.dumps(content), encoding="utf-8"
        )
    return {
        "FreeSound": Expect(
            samples={"180913": 1, "555": int(long_seconds), "777": 1},
            skipped={
                "666": "blacklisted",
                "888": "bad row",
                "fsd_final.json:data[5]": "bad row",
                "180913": "duplicate id",
            },
        ),
        "AudioSet_SL": Expect(samples={"Yb0RFKhbpFJA.wav": 1}, skipped={"Y-black_1234.wav": "blacklisted"}),
        "BBC_Sound_Effects": Expect(samples={"07070001": 1}),
        "SoundBible": Expect(samples={"1234": 1}),
    }


# ---------------------------------------------------------------------------------------------------------
# AudioSetCaps
# ---------------------------------------------------------------------------------------------------------


def write_audiosetcaps(root: Path) -> dict[str, Expect]:
    ds, audio = root / "Dataset", root / "audio"
    write_csv(
        ds / "AudioSetCaps_caption.csv",
        ["id", "caption"],
        [
            ["Y-a_b-c_d-ef", "A man speaks, then a door slams."],
            ["Ymissing_1", "Not downloaded"],
            ["", "no id"],
        ],
    )
    write_audio(audio / "audioset" / "Y-a_b-c_d-ef.mp3", 1.5)
    write_csv(
        ds / "AudioSetCaps_Qwen-Audio_Q&A.csv",
        ["id", "question_1", "answer_1", "question_2", "answer_2"],
        [["Y-a_b-c_d-ef", "What is heard?", "Speech.", "Is it loud?", "Yes."]],
    )
    write_csv(ds / "VGGSound_AudioSetCaps_caption.csv", ["id", "caption"], [["v_id-1_000030", "Engine hum"]])
    write_audio(audio / "vggsound" / "v_id-1_000030.wav", 1.0)
    write_csv(ds / "YouTube-8M_AudioSetCaps_caption.csv", ["id", "caption"], [["y8m_x-1_30_10", "Music"]])
    write_audio(audio / "youtube8m" / "y8m_x-1_30_10.flac", 1.0, rate=32000)
    return {
        "audioset": Expect(
            samples={"Y-a_b-c_d-ef": 1},
            skipped={"Ymissing_1": "missing audio", "AudioSetCaps_caption.csv:4": "bad row"},
        ),
        "vggsound": Expect(samples={"v_id-1_000030": 1}),
        "youtube8m": Expect(samples={"y8m_x-1_30_10": 1}),
    }


# ---------------------------------------------------------------------------------------------------------
# TACOS
# ---------------------------------------------------------------------------------------------------------

TACOS_SUBCLASSES = ("Dog", "Rain")


def write_tacos(root: Path, clips_per_subclass: int = 4) -> dict[str, list[str]]:
    """A TACOS release; returns {"good": [...], "bad": [...]} file names (the split is the converter's).

    Clip 0 of every subclass has a region offset past the audio end (it is cut) and two overlapping
    regions with the same text (they merge); bad clips: onset > offset, missing audio, no annotations.
    """
    meta_rows, strong_rows, weak_rows = [], [], []
    good = []
    fid = 100000
    for sub in TACOS_SUBCLASSES:
        for i in range(clips_per_subclass):
            fid += 1
            name = f"{fid}.mp3"
            write_audio(root / "audio" / name, 1.5)
            meta_rows.append(
                [name, f"{sub.lower()}, field recording, ünï", sub, "Animals", "12.5", "14.0", "CC0"]
            )
            strong_rows += [
                [name, f"a {sub.lower()} sound", "0.1", "0.6", "ann1"],
                [name, f"a {sub.lower()} sound", "0.5", "0.9", "ann1"],
                [name, "background hum", "0.2", "2.5" if i == 0 else "1.4", "ann2"],
            ]
            weak_rows.append([name, f"Clip level caption of {sub}, number {i}"])
            good.append(name)
    bad = []
    for kind in ("onset_after_offset", "missing_audio", "no_annotations"):
        fid += 1
        name = f"{fid}.mp3"
        sub = TACOS_SUBCLASSES[len(bad) % 2]
        meta_rows.append([name, "x", sub, "Animals", "0", "1.5", "CC0"])
        if kind != "missing_audio":
            write_audio(root / "audio" / name, 1.5)
        if kind == "onset_after_offset":
            strong_rows.append([name, "reversed", "1.2", "0.3", "ann1"])
            weak_rows.append([name, "has a bad region"])
        elif kind == "missing_audio":
            strong_rows.append([name, "fine region", "0.1", "0.3", "ann1"])
        bad.append(name)
    meta_header = ["filename", "keywords", "subclass", "superclass", "start_time_s", "end_time_s", "license"]
    write_csv(root / "metadata.csv", meta_header, meta_rows)
    write_csv(
        root / "annotations_strong.csv", ["filename", "text", "onset", "offset", "annotator"], strong_rows
    )
    write_csv(root / "annotations_weak.csv", ["filename", "text"], weak_rows)
    return {"good": good, "bad": bad}


# ---------------------------------------------------------------------------------------------------------
# AudioSet strong
# ---------------------------------------------------------------------------------------------------------

AUDIOSET_NAMES = {"/m/09x0r": "Speech", "/m/0jbk": "Animal", "/m/04rlf": "Music"}


def write_audioset_strong(root: Path) -> dict[str, Expect]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mid_to_display_name.tsv").write_text(
        "".join(f"{m}\t{n}\n" for m, n in AUDIOSET_NAMES.items()), encoding="utf-8"
    )
    header = "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
    rows = [
        ("ab_cd-EF12g_30000", 0.0, 0.5, "/m/09x0r"),
        ("ab_cd-EF12g_30000", 0.5, 0.9, "/m/09x0r"),  # adjacent: merges with the previous
        ("ab_cd-EF12g_30000", 0.8, 1.2, "/m/09x0r"),  # overlapping: merges too
        ("ab_cd-EF12g_30000", 0.2, 1.8, "/m/0jbk"),
        ("Zz9-xyz_1ab_0", 0.1, 0.4, "/m/04rlf"),
        ("Zz9-xyz_1ab_0", 0.6, 0.8, "/m/04rlf"),  # a gap: stays two regions
        ("unknownlbl_1000", 0.1, 0.4, "/m/nope"),
        ("reversed_2000", 0.9, 0.4, "/m/09x0r"),
        ("nofile_3000", 0.1, 0.4, "/m/09x0r"),
    ]
    (root / "audioset_eval_strong.tsv").write_text(
        header + "".join(f"{s}\t{a:.3f}\t{b:.3f}\t{m}\n" for s, a, b, m in rows), encoding="utf-8"
    )
    (root / "audioset_train_strong.tsv").write_text(header + "trainclip_10000\t0.000\t1.000\t/m/0jbk\n")
    for ytid in ("ab_cd-EF12g", "Zz9-xyz_1ab", "unknownlbl", "reversed"):
        write_audio(root / "audio" / f"Y{ytid}.flac", 2.0)
    write_audio(root / "audio" / "Ytrainclip.wav", 1.0)
    return {
        "eval": Expect(
            samples={"ab_cd-EF12g_30000": 1, "Zz9-xyz_1ab_0": 1},
            skipped={
                "unknownlbl_1000": "bad region",
                "reversed_2000": "bad region",
                "nofile_3000": "missing audio",
            },
        ),
        "train": Expect(samples={"trainclip_10000": 1}),
    }
