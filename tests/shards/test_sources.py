"""Raw-layout readers: what each lists from the official layout (metadata only, no audio decoding)."""

from __future__ import annotations

import shutil

import pytest

from shards.schema import Region
from shards.sources import SOURCES, Item, Skip, SourceError, get_source
from shards.sources.audiosetcaps import AudioSetCaps
from shards.sources.tacos import Tacos
from shards.sources.wavcaps import WavCaps
from tests.shards.fixtures import (
    AUDIOSET_NAMES,
    write_audiocaps,
    write_audioset_strong,
    write_audiosetcaps,
    write_clotho,
    write_csv,
    write_tacos,
    write_wavcaps,
)


def listing(source, split):
    entries = list(source.entries(split))
    items: dict[str, Item] = {}
    for e in entries:
        if isinstance(e, Item):
            items.setdefault(e.source_id, e)  # a repeated id is the engine's to skip
    skips = {e.source_id: e.reason.split(":", 1)[0] for e in entries if isinstance(e, Skip)}
    return items, skips


def test_registry_names_the_six_datasets():
    assert list(SOURCES) == ["clotho", "audiocaps", "wavcaps", "audiosetcaps", "tacos", "audioset-strong"]
    with pytest.raises(SourceError, match="unknown dataset 'esc50'; expected one of clotho, audiocaps"):
        get_source("esc50")


@pytest.mark.parametrize("name", list(SOURCES))
def test_wrong_src_names_the_missing_file(tmp_path, name):
    source = SOURCES[name](tmp_path)
    with pytest.raises(SourceError, match=str(tmp_path)) as err:
        list(source.entries(source.splits[0]))
    assert "not found" in str(err.value)


def test_clotho_lists_captions_and_latin1_metadata(tmp_path):
    expect = write_clotho(tmp_path)
    source = get_source("clotho")(tmp_path)
    items, skips = listing(source, "development")
    assert skips == {k: v for k, v in expect["development"].skipped.items() if v == "bad row"}
    cafe = items["café ambience ü.wav"]
    assert cafe.audio == (tmp_path / "clotho_audio_files" / "development" / "café ambience ü.wav",)
    assert cafe.captions[0] == 'caption 1, with a comma and "quotes" for café ambience ü.wav'
    assert len(cafe.captions) == 5
    assert cafe.meta == {
        "license": "CC0",
        "author": "Zoë",
        "tags": ["café", "rain"],
        "sound_id": "1002",
        "sound_link": "https://freesound.org/s/1002",
    }
    assert items["Santa Motor.wav"].meta["author"] == "Jöhn Dóe"
    assert items["missing file.wav"].meta == {}  # listed; the missing audio is found at conversion


def test_clotho_relevance_and_flat_variant(tmp_path):
    write_clotho(tmp_path / "aac")
    flat = tmp_path / "flat"
    shutil.copytree(tmp_path / "aac" / "clotho_csv_files", flat)
    shutil.copytree(tmp_path / "aac" / "clotho_audio_files" / "evaluation", flat / "evaluation")
    source = get_source("clotho")(flat)
    items, _ = listing(source, "evaluation")
    assert items["eval a.wav"].audio == (flat / "evaluation" / "eval a.wav",)
    extra = source.manifest_extra(
        "evaluation", {"eval a.wav": "clotho-eval_a", "eval b.wav": "clotho-eval_b"}
    )
    assert extra["relevance"] == {"a query": ["eval a.wav", "eval b.wav"], "another query": ["eval b.wav"]}
    assert extra["relevance_keys"] == {
        "a query": ["clotho-eval_a", "clotho-eval_b"],
        "another query": ["clotho-eval_b"],
    }
    assert extra["relevance_skipped"][0]["row"] == "metadata_eval.csv:4"
    assert source.manifest_extra("development", {}) == {}


def test_audiocaps_groups_interleaved_rows_per_clip(tmp_path):
    expect = write_audiocaps(tmp_path)
    source = get_source("audiocaps")(tmp_path)
    items, skips = listing(source, "val")
    assert list(items) == ["valclip_A_0", "valclip_B_20"]
    assert items["valclip_B_20"].captions == tuple(f"clip B caption {j}" for j in range(5))
    assert items["valclip_B_20"].meta == {
        "youtube_id": "valclip_B",
        "start_time": 20,
        "audiocap_ids": ["11", "13", "15", "17", "19"],
    }
    items, skips = listing(source, "train")
    assert skips == {k: v for k, v in expect["train"].skipped.items() if v == "bad row"}
    folder = tmp_path / "audio_32000Hz" / "train"
    assert items["xyz-9_8_7aa_0"].audio == tuple(
        folder / f"xyz-9_8_7aa_0.{e}" for e in ("flac", "wav", "mp3")
    )


def test_wavcaps_blacklists_and_meta(tmp_path):
    write_wavcaps(tmp_path)
    items, skips = listing(WavCaps(tmp_path), "FreeSound")
    assert set(items) == {"180913", "555", "777"}
    assert skips == {"666": "blacklisted", "888": "bad row", "fsd_final.json:data[5]": "bad row"}
    assert items["180913"].meta == {"tags": ["dog"], "author": "Ann"}
    assert items["180913"].audio[0] == tmp_path / "Audio" / "FreeSound" / "180913.flac"
    items, skips = listing(WavCaps(tmp_path, ("all_ac", "blacklist_exclude_test_ac")), "FreeSound")
    assert set(items) == {"180913", "555"} and skips["777"] == "blacklisted"
    items, _ = listing(WavCaps(tmp_path, ("none",)), "FreeSound")
    assert set(items) == {"180913", "555", "666", "777"}
    items, skips = listing(WavCaps(tmp_path), "AudioSet_SL")
    assert items["Yb0RFKhbpFJA.wav"].audio[0] == tmp_path / "Audio" / "AudioSet_SL" / "Yb0RFKhbpFJA.flac"
    assert skips == {"Y-black_1234.wav": "blacklisted"}
    items, _ = listing(WavCaps(tmp_path), "BBC_Sound_Effects")
    assert items["07070001"].meta == {"description": "Thunder, distant", "category": "['Weather']"}
    with pytest.raises(SourceError, match="available: blacklist_exclude_all_ac"):
        WavCaps(tmp_path, ("nope",)).settings()


def test_audiosetcaps_streams_rows_and_joins_qa(tmp_path):
    write_audiosetcaps(tmp_path)
    entries = AudioSetCaps(tmp_path).entries("audioset")
    first = next(entries)  # a generator over the CSV, not a list of millions
    assert first.source_id == "Y-a_b-c_d-ef" and first.captions == ("A man speaks, then a door slams.",)
    assert first.audio[2] == tmp_path / "audio" / "audioset" / "Y-a_b-c_d-ef.mp3"
    assert first.meta == {}
    items, _ = listing(AudioSetCaps(tmp_path, qa=True), "audioset")
    assert items["Y-a_b-c_d-ef"].meta["qa"] == [
        {"question": "What is heard?", "answer": "Speech."},
        {"question": "Is it loud?", "answer": "Yes."},
    ]
    with pytest.raises(SourceError, match=r"Q&A CSV not found: .*VGGSound_AudioSetCaps_Qwen-Audio_Q&A\.csv"):
        AudioSetCaps(tmp_path, qa=True).entries("vggsound")


def test_tacos_split_is_the_tacos_code_split(tmp_path):
    """Same test clips as TACOS' own `train_test_split(metadata, stratify=subclass, random_state=42)`."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    write_tacos(tmp_path, clips_per_subclass=6)
    metadata = pd.read_csv(tmp_path / "metadata.csv").set_index("filename")
    _, test_df = train_test_split(
        metadata, test_size=4 / len(metadata), stratify=metadata["subclass"], random_state=42
    )
    source = Tacos(tmp_path, test_size=4)
    test = [e.source_id for e in source.entries("test")]
    train = [e.source_id for e in source.entries("train")]
    assert sorted(test) == sorted(test_df.index) and len(test) == 4
    assert set(test).isdisjoint(train) and len(test) + len(train) == len(metadata)
    assert source.manifest_extra("test", {}) == {"split_method": "stratified by subclass, random_state=42"}


def test_tacos_regions_meta_and_skips(tmp_path):
    files = write_tacos(tmp_path)
    items, skips = listing(Tacos(tmp_path, test_size=0), "train")
    assert set(items) == set(files["good"]) | {files["bad"][1]}  # the missing audio is found at conversion
    assert skips == {files["bad"][0]: "bad region", files["bad"][2]: "bad row"}
    first = items[files["good"][0]]
    assert first.strong == (
        Region("a dog sound", 0.1, 0.9, {"annotator": "ann1"}),  # two overlapping rows, one region
        Region("background hum", 0.2, 2.5, {"annotator": "ann2"}),
    )
    assert first.captions == ("Clip level caption of Dog, number 0",)
    assert first.meta["keywords"] == ["dog", "field recording", "ünï"]
    assert first.meta["subclass"] == "Dog" and first.meta["start_time_s"] == "12.5"


def test_tacos_exclusion_and_impossible_split(tmp_path):
    files = write_tacos(tmp_path, clips_per_subclass=2)
    excluded = write_csv(tmp_path / "excluded.csv", ["sound_id"], [[files["good"][1].removesuffix(".mp3")]])
    items, skips = listing(Tacos(tmp_path, test_size=0, exclude_ids=excluded), "train")
    assert skips[files["good"][1]] == "excluded id" and files["good"][1] not in items
    source = Tacos(tmp_path, test_size=1)  # one test clip cannot hold both subclasses
    assert len(list(source.entries("test"))) == 1
    assert source.split_method.startswith("random, random_state=42 (cannot stratify")
    with pytest.raises(SourceError, match="--test-size 99 must be smaller than the 7 clips"):
        Tacos(tmp_path, test_size=99).entries("test")


def test_audioset_strong_merges_events_per_label(tmp_path):
    expect = write_audioset_strong(tmp_path)
    items, skips = listing(get_source("audioset-strong")(tmp_path), "eval")
    assert skips == {k: v for k, v in expect["eval"].skipped.items() if v != "missing audio"}
    clip = items["ab_cd-EF12g_30000"]
    assert clip.audio[0] == tmp_path / "audio" / "Yab_cd-EF12g.flac"
    assert clip.captions == ()
    assert clip.strong == (
        Region("Speech", 0.0, 1.2, {"mid": "/m/09x0r"}),
        Region("Animal", 0.2, 1.8, {"mid": "/m/0jbk"}),
    )
    assert clip.meta == {"ytid": "ab_cd-EF12g", "start_ms": 30000}
    assert [r.text for r in items["Zz9-xyz_1ab_0"].strong] == [AUDIOSET_NAMES["/m/04rlf"]] * 2


def test_a_bad_byte_or_nul_does_not_stop_a_streamed_csv(tmp_path):
    write_audiosetcaps(tmp_path)
    csv_path = tmp_path / "Dataset" / "VGGSound_AudioSetCaps_caption.csv"
    csv_path.write_bytes(
        csv_path.read_bytes() + b"bad\xff_000001,A caption\x00 with a NUL\r\nlast_000002,Fine\r\n"
    )
    items, _ = listing(AudioSetCaps(tmp_path), "vggsound")
    assert list(items) == ["v_id-1_000030", "bad\ufffd_000001", "last_000002"]
    assert items["bad\ufffd_000001"].captions == ("A caption with a NUL",)
