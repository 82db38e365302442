"""Raw-layout readers: what each lists from its release (metadata only, no audio decoding).

The `release` tests read rows of the public releases (tests/shards/releases/, sources in its README) and
compare each reader's listing with what the standard library reads from the same files.
"""

from __future__ import annotations

import json
import shutil

import pytest

from shards.schema import Region
from shards.sources import SOURCES, Item, Skip, SourceError, get_source
from shards.sources.audiocaps import AudioCaps
from shards.sources.audiosetcaps import AudioSetCaps
from shards.sources.base import MAX_CSV_FIELD, Candidate, csv_rows, resolve_audio
from shards.sources.tacos import Tacos
from shards.sources.wavcaps import WavCaps
from tests.shards.fixtures import (
    AUDIOSET_NAMES,
    write_audio,
    write_audioset_strong,
    write_audiosetcaps,
    write_clotho,
    write_csv,
    write_tacos,
    write_wavcaps,
)
from tests.shards.release_fixtures import LAYERS, RELEASES, lay_audiocaps, lay_tacos, tacos_fixes


def listing(source, split):
    entries = list(source.entries(split))
    items: dict[str, Item] = {}
    for e in entries:
        if isinstance(e, Item):
            items.setdefault(e.source_id, e)  # a repeated id is the engine's to skip
    skips = {e.source_id: e.reason.split(":", 1)[0] for e in entries if isinstance(e, Skip)}
    return items, skips


def paths(item):
    return tuple(c.path for c in item.audio)


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


# ---------------------------------------------------------------------------------------------------------
# The releases' own rows
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAYERS))
def test_release_rows_are_listed_exactly(tmp_path, name):
    """Every row of the release with audio is an item with the release's id, captions and regions, its
    audio resolves under the naming it was written with; the rest are missing audio, not bad rows."""
    release = LAYERS[name](tmp_path / "raw")
    for split, want in release.splits.items():
        items, skips = listing(release.source(name, split), split)
        assert skips == {}, skips  # real rows are never bad rows
        assert [i for i in items if i in want.clips] == list(want.clips)  # release order
        assert set(items) == set(want.clips) | set(want.skipped)
        for source_id, clip in want.clips.items():
            item = items[source_id]
            assert list(item.captions) == clip.captions
            assert [(r.text, r.onset, r.offset) for r in item.strong] == clip.strong
            assert {k: item.meta.get(k) for k in clip.meta} == clip.meta
            found = resolve_audio(item)
            assert found is not None and found.naming == clip.naming and found.path.is_file()
        for source_id in want.skipped:
            assert resolve_audio(items[source_id]) is None


def test_clotho_file_names_are_never_stripped(tmp_path):
    """' Ambience Birds.wav' (a leading space, as released) is found on disk; literal HTML entities too."""
    release = LAYERS["clotho"](tmp_path / "raw")
    items, _ = listing(get_source("clotho")(release.root), "development")
    birds = items[" Ambience Birds.wav"]
    assert birds.audio == (
        Candidate(release.root / "clotho_audio_files" / "development" / " Ambience Birds.wav", "{file_name}"),
    )
    assert birds.captions[3] == "An assortment of  wild birds are chirping and calling out in nature."
    assert birds.meta["sound_link"] == "https://freesound.org/people/Juan_Merie_Venter/sounds/327673"
    assert birds.meta["start_end_samples"] == "[11162624, 11932169]"
    assert resolve_audio(items["121006_rain&amp;storm.wav"]).path.name == "121006_rain&amp;storm.wav"
    items, _ = listing(get_source("clotho")(release.root), "validation")
    assert resolve_audio(items[" e ieio ieai.wav"]).path == release.root / "validation" / " e ieio ieai.wav"


@pytest.mark.parametrize(
    ("folder", "version"),
    [("dataset", "v1"), ("dataset2.0", "v2"), ("csv_files_v1", "v1"), ("csv_files_v2", "v2")],
)
def test_audiocaps_csv_folders_and_versions(tmp_path, folder, version):
    release = lay_audiocaps(tmp_path / "repo")
    src = tmp_path / "src"
    source_folder = {"csv_files_v1": "dataset", "csv_files_v2": "dataset2.0"}.get(folder, folder)
    shutil.copytree(release.root / source_folder, src / folder)
    items, _ = listing(AudioCaps(src, version), "test")
    first = "lower" if version == "v2" else "upper"
    caption = items["7fmOlUlwoNg_20"].captions[0]
    assert caption.startswith("constant" if first == "lower" else "Constant")
    assert AudioCaps(src, version).layout("test").files["captions"] == src / folder / "test.csv"


def test_audiocaps_repository_clone_uses_v1_unless_told(tmp_path):
    release = lay_audiocaps(tmp_path / "raw")  # dataset/ and dataset2.0/ side by side, as a clone has them
    items, _ = listing(AudioCaps(release.root), "val")
    assert items["vfY_TJq7n_U_130"].captions[0].startswith("Rustling occurs")
    items, _ = listing(AudioCaps(release.root, "v2"), "val")
    assert items["vfY_TJq7n_U_130"].captions[0].startswith("rustling occurs")
    with pytest.raises(SourceError, match=r"AudioCaps v2 train CSV not found: .*csv_files_v2/train\.csv"):
        AudioCaps(release.root, "v2").entries("train")


def test_audiocaps_tries_every_naming_in_every_folder(tmp_path):
    release = lay_audiocaps(tmp_path / "raw")
    items, _ = listing(AudioCaps(release.root, audio_dir=release.audio_dirs["val"]), "val")
    folder = release.audio_dirs["val"]
    assert [c.naming for c in items["vfY_TJq7n_U_130"].audio] == [
        "{youtube_id}_{start_time}.flac",
        "{youtube_id}_{start_time}.wav",
        "{youtube_id}_{start_time}.mp3",
        "Y{youtube_id}.wav",
        "Y{youtube_id}.flac",
        "Y{youtube_id}.mp3",
    ]
    assert resolve_audio(items["vfY_TJq7n_U_130"]).path == folder / "YvfY_TJq7n_U.wav"


def test_wavcaps_hugging_face_layout_and_blacklists(tmp_path):
    release = LAYERS["wavcaps"](tmp_path / "raw")
    source = WavCaps(release.root)
    deep = (
        release.root / "Zip_files/SoundBible/mnt/fast/nobackup/scratch4weeks/xm00178/WavCaps/data/waveforms"
    )
    assert source.layout("SoundBible").audio == (deep / "SoundBible_flac",)
    assert WavCaps(release.root, audio_dir=release.root / "Zip_files").layout("SoundBible").audio == (
        deep / "SoundBible_flac",
    )
    # the real blacklists: SoundBible has no list; AudioSet ids are 'Y<ytid>.wav', FreeSound ids are numbers
    test_ac = json.loads(
        (RELEASES / "wavcaps/json_files/blacklist/blacklist_exclude_test_ac.json").read_text()
    )
    assert source._blacklisted("SoundBible") == {}
    assert set(source._blacklisted("AudioSet_SL")) == {i.removesuffix(".wav") for i in test_ac["AudioSet"]}
    assert set(source._blacklisted("FreeSound")) == set(test_ac["FreeSound"])


def test_wavcaps_constructed_subsets_blacklists_and_meta(tmp_path):
    write_wavcaps(tmp_path)
    items, skips = listing(WavCaps(tmp_path), "FreeSound")
    assert set(items) == {"180913", "555", "777"}
    assert skips == {"666": "blacklisted", "888": "bad row", "fsd_final.json:data[5]": "bad row"}
    assert items["180913"].meta == {"tags": ["dog"], "author": "Ann"}
    assert paths(items["180913"])[0] == tmp_path / "Audio" / "FreeSound" / "180913.flac"
    items, skips = listing(WavCaps(tmp_path, ("all_ac", "blacklist_exclude_test_ac")), "FreeSound")
    assert set(items) == {"180913", "555"} and skips["777"] == "blacklisted"
    items, _ = listing(WavCaps(tmp_path, ("none",)), "FreeSound")
    assert set(items) == {"180913", "555", "666", "777"}
    items, skips = listing(WavCaps(tmp_path), "AudioSet_SL")
    assert paths(items["Yb0RFKhbpFJA.wav"])[0] == tmp_path / "Audio" / "AudioSet_SL" / "Yb0RFKhbpFJA.flac"
    assert skips == {"Y-black_1234.wav": "blacklisted"}
    items, _ = listing(WavCaps(tmp_path), "BBC_Sound_Effects")
    assert items["07070001"].meta == {"description": "Thunder, distant", "category": ["Weather"]}
    with pytest.raises(SourceError, match="available: blacklist_exclude_all_ac"):
        WavCaps(tmp_path, ("nope",)).settings()


def test_audiosetcaps_release_file_names_for_every_subset(tmp_path):
    write_audiosetcaps(tmp_path)
    assert (
        AudioSetCaps(tmp_path, qa=True).layout("audioset").files["qa"].name
        == "AudioSetCaps_Qwen-Audio_Q&A.csv"
    )
    for subset, qa in (("vggsound", "VGGSound"), ("youtube8m", "YouTube-8M")):
        with pytest.raises(
            SourceError, match=rf"{subset} Q&A CSV not found: .*Dataset/{qa}_Qwen-Audio_Q&A\.csv"
        ):
            AudioSetCaps(tmp_path, qa=True).entries(subset)
    release = LAYERS["audiosetcaps"](tmp_path / "release")
    items, _ = listing(AudioSetCaps(release.root, qa=True), "youtube8m")
    assert items["-TL8Mp3xcUM_0_10"].meta["qa"][2] == {
        "question": "Based on the QAs, give some information about the music, such as music genre and music "
        "instruments, only if music is present in this audio.",
        "answer": "There is no music in this audio.",
    }


def test_audiosetcaps_streams_rows_and_audioset_namings(tmp_path):
    write_audiosetcaps(tmp_path)
    entries = AudioSetCaps(tmp_path).entries("audioset")
    first = next(entries)  # a generator over the CSV, not a list of millions
    assert first.source_id == "Y-a_b-c_d-ef" and first.captions == ("A man speaks, then a door slams.",)
    assert paths(first)[2] == tmp_path / "audio" / "audioset" / "Y-a_b-c_d-ef.mp3"
    assert paths(first)[3] == tmp_path / "audio" / "audioset" / "-a_b-c_d-ef.flac"  # the id without its Y
    assert first.meta == {}
    items, _ = listing(AudioSetCaps(tmp_path, qa=True), "audioset")
    assert items["Y-a_b-c_d-ef"].meta["qa"] == [
        {"question": "What is heard?", "answer": "Speech."},
        {"question": "Is it loud?", "answer": "Yes."},
    ]


# ---------------------------------------------------------------------------------------------------------
# TACOS
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("audio_in_src", [False, True])
def test_tacos_release_split_files_text_column_and_audio_folder(tmp_path, audio_in_src):
    release = lay_tacos(tmp_path / "raw", audio_in_src=audio_in_src)
    source = Tacos(release.root)
    for split in ("train", "test"):
        items, _ = listing(source, split)
        want = release.splits[split]
        assert list(items) == sorted({*want.clips, *want.skipped})  # metadata.csv order (ids ascend there)
        assert source.split_method == f"official: {'development' if split == 'train' else 'test'}_split.csv"
        name = next(iter(release.splits[split].clips))
        expected = (release.root if audio_in_src else release.root / "audio") / name
        assert resolve_audio(items[name]).path == expected


def test_tacos_invalid_regions_are_clipped_or_dropped_and_listed(tmp_path):
    release = lay_tacos(tmp_path / "raw")
    source = Tacos(release.root)
    for split, want in tacos_fixes().items():
        listing(source, split)
        fixes = source.manifest_extra(split, {})["region_fixes"]
        assert [(f["source_id"], f["action"]) for f in fixes] == want
        assert all(f["row"].startswith("annotations_strong.csv:") for f in fixes)
    items, _ = listing(source, "train")
    only_invalid = items["100128.mp3"]  # clip 4: all its regions invalid, its clip caption stays
    assert only_invalid.strong == () and only_invalid.captions == ("Clip level caption 4, of a dog.",)
    assert items["100107.mp3"].strong[0] == Region("starts before the clip", 0.0, 0.4)
    assert items["100114.mp3"].strong[1] == Region("ends after the clip", 1.5, 2.0)


def test_tacos_test_size_is_ignored_with_split_files_and_one_file_is_enough(tmp_path):
    release = lay_tacos(tmp_path / "raw")
    source = Tacos(release.root, test_size=1)
    items, _ = listing(source, "test")
    assert len(items) == 4 and source.warnings == [
        "--test-size is ignored: the release's split files define the split"
    ]
    (release.root / "development_split.csv").unlink()
    source = Tacos(release.root)
    train, _ = listing(source, "train")
    assert set(train) == set(release.splits["train"].clips) | set(release.splits["train"].skipped)
    assert source.split_method == "official: all of metadata.csv but test_split.csv"


def test_tacos_split_without_split_files_is_the_tacos_code_split(tmp_path):
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
    assert source.manifest_extra("test", {})["split_method"] == "stratified by subclass, random_state=42"


def test_tacos_regions_meta_and_skips(tmp_path):
    files = write_tacos(tmp_path)
    source = Tacos(tmp_path, test_size=0)
    items, skips = listing(source, "train")
    # onset > offset no longer loses the clip: the region is dropped and listed, the clip keeps its caption
    assert set(items) == set(files["good"]) | set(files["bad"][:2])
    assert skips == {files["bad"][2]: "bad row"}
    assert items[files["bad"][0]].strong == () and items[files["bad"][0]].captions == ("has a bad region",)
    assert source.manifest_extra("train", {})["region_fixes"][-1]["action"] == "dropped"
    first = items[files["good"][0]]
    assert first.strong == (
        Region("a dog sound", 0.1, 0.9, {"annotator": "ann1"}),  # two overlapping rows, one region
        Region("background hum", 0.2, 1.5, {"annotator": "ann2"}),  # 2.5 is past the 1.5 s clip: clipped
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


# ---------------------------------------------------------------------------------------------------------
# AudioSet-strong
# ---------------------------------------------------------------------------------------------------------


def test_audioset_strong_merges_events_per_label(tmp_path):
    expect = write_audioset_strong(tmp_path)
    items, skips = listing(get_source("audioset-strong")(tmp_path), "eval")
    assert skips == {k: v for k, v in expect["eval"].skipped.items() if v != "missing audio"}
    clip = items["ab_cd-EF12g_30000"]
    assert resolve_audio(clip).path == tmp_path / "audio" / "Yab_cd-EF12g.flac"
    assert clip.captions == ()
    assert clip.strong == (
        Region("Speech", 0.0, 1.2, {"mid": "/m/09x0r"}),
        Region("Animal", 0.2, 1.8, {"mid": "/m/0jbk"}),
    )
    assert clip.meta == {"ytid": "ab_cd-EF12g", "start_ms": 30000}
    assert [r.text for r in items["Zz9-xyz_1ab_0"].strong] == [AUDIOSET_NAMES["/m/04rlf"]] * 2


def test_audioset_strong_segment_namings_come_first(tmp_path):
    release = LAYERS["audioset-strong"](tmp_path / "raw")
    items, _ = listing(get_source("audioset-strong")(release.root), "eval")
    assert [c.naming for c in items["06rCpqwkcDw_10000"].audio][:4] == [
        "Y{segment_id}.wav",
        "Y{segment_id}.flac",
        "Y{segment_id}.mp3",
        "{segment_id}.flac",
    ]
    assert paths(items["06rCpqwkcDw_10000"])[0] == release.root / "audio" / "Y06rCpqwkcDw_10000.wav"
    elsewhere = tmp_path / "elsewhere"
    shutil.move(release.root / "audio", elsewhere)
    items, _ = listing(get_source("audioset-strong")(release.root, audio_dir=elsewhere), "eval")
    assert resolve_audio(items["06rCpqwkcDw_10000"]).path == elsewhere / "Y06rCpqwkcDw_10000.wav"


# ---------------------------------------------------------------------------------------------------------
# Hostile and broken input
# ---------------------------------------------------------------------------------------------------------


def test_ids_never_leave_the_audio_folder(tmp_path):
    """A file name from the metadata is used only as a plain name inside the audio folder."""
    write_clotho(tmp_path)
    outside = write_audio(tmp_path / "outside.wav", 0.5)
    captions = tmp_path / "clotho_csv_files" / "clotho_captions_validation.csv"
    header = ["file_name"] + [f"caption_{j}" for j in range(1, 6)]
    write_csv(
        captions,
        header,
        [["../outside.wav", *"abcde"], [str(outside), *"abcde"], ["valid one.wav", *"abcde"]],
    )
    items, skips = listing(get_source("clotho")(tmp_path), "validation")
    assert list(items) == ["valid one.wav"]
    assert skips == {"../outside.wav": "unsafe file name", str(outside): "unsafe file name"}


def test_undecodable_bytes_are_a_clear_error_and_encoding_reads_them(tmp_path):
    """A Latin-1 CSV does not silently become U+FFFD: the error names the file and line; --encoding reads it."""
    write_audiosetcaps(tmp_path)
    csv_path = tmp_path / "Dataset" / "VGGSound_AudioSetCaps_caption.csv"
    csv_path.write_bytes(csv_path.read_bytes() + "caf\xe9_000001,Un caf\xe9 bruyant\r\n".encode("latin-1"))
    with pytest.raises(
        SourceError, match=r"VGGSound_AudioSetCaps_caption\.csv: line 3 is not valid utf-8 .*--encoding"
    ):
        list(AudioSetCaps(tmp_path).entries("vggsound"))
    items, _ = listing(AudioSetCaps(tmp_path, encoding="latin-1"), "vggsound")
    assert items["café_000001"].captions == ("Un café bruyant",)
    with pytest.raises(SourceError, match="--encoding 'klingon' is not an encoding Python knows"):
        AudioSetCaps(tmp_path, encoding="klingon")
    with pytest.raises(SourceError, match="not ASCII-compatible"):
        AudioSetCaps(tmp_path, encoding="utf-16")


def test_clotho_metadata_is_latin1_unless_told(tmp_path):
    write_clotho(tmp_path)  # its metadata CSV is ISO-8859-1, as the release's
    items, _ = listing(get_source("clotho")(tmp_path), "development")
    assert items["Santa Motor.wav"].meta["author"] == "Jöhn Dóe"
    cafe = items["café ambience ü.wav"]
    assert cafe.meta["tags"] == ["café", "rain"] and cafe.captions[0].endswith("for café ambience ü.wav")


def test_an_oversized_field_skips_its_row_not_the_split(tmp_path):
    """A field over the CSV limit (16 Mi characters) is one listed bad row; the rows after it are read."""
    write_audiosetcaps(tmp_path)
    csv_path = tmp_path / "Dataset" / "VGGSound_AudioSetCaps_caption.csv"
    huge = "x" * (MAX_CSV_FIELD + 1)
    with csv_path.open("a", encoding="utf-8", newline="") as f:
        f.write(
            f'big_000001,"{huge}\r\nstill, the same field\r\n"\r\nnext_000002,Fine\r\nbig_000003,{huge}\r\nlast_000004,Also fine\r\n'
        )
    items, skips = listing(AudioSetCaps(tmp_path), "vggsound")
    assert list(items) == ["v_id-1_000030", "next_000002", "last_000004"]
    assert skips == {
        "VGGSound_AudioSetCaps_caption.csv:3": "bad row",
        "VGGSound_AudioSetCaps_caption.csv:7": "bad row",
    }


def test_nul_bytes_are_dropped_and_values_kept_exactly(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"id,caption\r\n a,\x00 caption with a NUL \r\n")
    assert list(csv_rows(path, ("id",))) == [(2, {"id": " a", "caption": " caption with a NUL "})]
