"""Synthetic dataset: event vocabulary, clip composition, captions and the three official layouts."""

from __future__ import annotations

import ast
import csv
import io
import itertools
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from synthetic.captions import clip_captions, region_caption
from synthetic.events import (
    CLASSES,
    EDGE_SECONDS,
    EVENT_CLASSES,
    EVENT_PEAK,
    GAP_SECONDS,
    compose_clip,
    synthesize_event,
)
from synthetic.layouts import (
    AUDIOSET_STRONG_FIELDS,
    CLOTHO_CAPTION_FIELDS,
    CLOTHO_METADATA_FIELDS,
    CLOTHO_RELEVANCE_FIELDS,
    TACOS_METADATA_FIELDS,
    TACOS_STRONG_FIELDS,
    TACOS_WEAK_FIELDS,
    clip_rng,
    generate,
    split_counts,
)

SR = 16000
SECONDS = 4.0
CLIPS = 12


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def read_csv(path: Path, encoding: str = "utf-8", delimiter: str = ",") -> list[list[str]]:
    """Parse as the converters do: the csv module, newline='' so quoted fields keep their contents."""
    with open(path, encoding=encoding, newline="") as f:
        return list(csv.reader(f, delimiter=delimiter))


def check_regions(x: np.ndarray, sr: int, regions: list[tuple[float, float]], guard: float) -> None:
    """Labelled regions are loud inside, and the audio just outside them is background."""
    outside = np.ones(len(x), bool)
    for onset, offset in regions:
        outside[max(0, round((onset - guard) * sr)) : round((offset + guard) * sr)] = False
    background = rms(x[outside])
    for onset, offset in regions:
        a, b = round(onset * sr), round(offset * sr)
        assert rms(x[a:b]) > 5 * background, (onset, offset)
        assert rms(x[a : a + round(0.02 * sr)]) > 2 * background, f"no sound right after onset {onset}"
        assert rms(x[b - round(0.02 * sr) : b]) > 2 * background, f"no sound right before offset {offset}"
        before = x[max(0, a - round((guard + 0.025) * sr)) : a - round(guard * sr)]
        after = x[b + round(guard * sr) : b + round((guard + 0.025) * sr)]
        for window in (before, after):
            if len(window):
                assert rms(window) < 2 * background, f"sound outside [{onset}, {offset}]"


# ---------------------------------------------------------------------------------------------------------------------
# Events and clips
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", sorted(CLASSES))
def test_event_is_audible_from_first_to_last_sample(label):
    rng = np.random.default_rng(0)
    x = synthesize_event(rng, label, 1.5, SR)
    assert 0.5 * SR < len(x) <= 1.5 * SR
    assert np.abs(x).max() <= EVENT_PEAK + 1e-9
    assert 10 ** (-30 / 20) < rms(x) < 10 ** (-11 / 20)
    edge = round(0.01 * SR)
    assert rms(x[:edge]) > 0.05 * rms(x) and rms(x[-edge:]) > 0.05 * rms(x)


def test_unknown_label_is_named():
    with pytest.raises(ValueError, match="'meow'"):
        synthesize_event(np.random.default_rng(0), "meow", 1.0, SR)


def test_event_classes_are_separable_by_simple_spectral_statistics():
    """A nearest-centroid classifier on band energies (first/second half) and their spread gets them right."""

    def features(x):
        f, _, spec = signal.stft(x, SR, nperseg=1024, noverlap=1024 - 160)
        power = np.abs(spec) ** 2 + 1e-10
        edges = np.geomspace(80, 8000, 20)
        bands = 10 * np.log10(
            np.stack([power[(f >= a) & (f < b)].mean(0) for a, b in itertools.pairwise(edges)])
        )
        bands -= bands.mean()
        h = bands.shape[1] // 2
        return np.concatenate([bands[:, :h].mean(1), bands[:, h:].mean(1), bands.std(1)])

    rng = np.random.default_rng(1)

    def example(c):
        x = synthesize_event(rng, c.label, rng.uniform(*c.seconds), SR)
        noise = rng.standard_normal(len(x)) * 10 ** (-45 / 20)
        return features(x + noise)

    train = {c.label: np.stack([example(c) for _ in range(8)]) for c in EVENT_CLASSES}
    stacked = np.concatenate(list(train.values()))
    mu, sd = stacked.mean(0), stacked.std(0) + 1e-6
    centroids = np.stack([((v - mu) / sd).mean(0) for v in train.values()])
    labels = list(train)
    hits = total = 0
    for i, c in enumerate(EVENT_CLASSES):
        for _ in range(8):
            v = (example(c) - mu) / sd
            hits += int(np.argmin(np.linalg.norm(centroids - v, axis=1)) == i)
            total += 1
    assert labels == [c.label for c in EVENT_CLASSES]
    assert hits / total >= 0.95


@pytest.mark.parametrize("index", range(8))
def test_compose_clip_places_distinct_events_with_exact_times(index):
    clip = compose_clip(clip_rng(3, "tacos", index), 10.0, SR)
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (10 * SR,)
    labels = [e.label for e in clip.events]
    assert 1 <= len(labels) <= 3 and len(set(labels)) == len(labels)
    assert (
        clip.events[0].onset >= EDGE_SECONDS - 1e-3 and clip.events[-1].offset <= 10.0 - EDGE_SECONDS + 1e-3
    )
    for a, b in zip(clip.events, clip.events[1:]):
        assert b.onset - a.offset >= GAP_SECONDS - 2e-3
    check_regions(clip.audio, SR, [(e.onset, e.offset) for e in clip.events], guard=0.005)


def test_given_labels_keep_their_order_and_short_clips_shrink_events():
    labels = ["hum", "rumble", "siren"]  # 3 long events: more than a 3 s clip holds
    clip = compose_clip(np.random.default_rng(0), 3.0, SR, labels)
    assert [e.label for e in clip.events] == labels
    assert clip.events[-1].offset <= 3.0 - EDGE_SECONDS + 1e-3
    check_regions(clip.audio, SR, [(e.onset, e.offset) for e in clip.events], guard=0.005)


def test_same_generator_state_gives_same_clip():
    a = compose_clip(clip_rng(0, "clotho", 5), 5.0, SR)
    b = compose_clip(clip_rng(0, "clotho", 5), 5.0, SR)
    c = compose_clip(clip_rng(0, "clotho", 6), 5.0, SR)
    assert np.array_equal(a.audio, b.audio) and a.events == b.events
    assert not np.array_equal(a.audio, c.audio)


def test_captions_name_every_event_with_distinct_wordings():
    rng = np.random.default_rng(0)
    for labels in (["beep"], ["beep", "rumble"], ["clicks", "chirp_up", "siren"]):
        captions = clip_captions(rng, labels, 5)
        assert len(set(captions)) == 5
        for caption in captions:
            assert caption[0].isupper() and caption.endswith(".")
            for label in labels:
                assert any(p in caption.lower() for p in CLASSES[label].phrases), (label, caption)
    assert region_caption(rng, "hum") in CLASSES["hum"].phrases
    with pytest.raises(ValueError, match="4 events"):
        clip_captions(rng, ["beep", "hum", "buzz", "siren"], 1)


def test_phrases_name_exactly_one_class():
    phrases = [p for c in EVENT_CLASSES for p in c.phrases]
    assert len(phrases) == len(set(phrases))
    assert (
        len({c.mid for c in EVENT_CLASSES})
        == len({c.display_name for c in EVENT_CLASSES})
        == len(EVENT_CLASSES)
    )


def test_two_event_captions_state_the_order():
    rng = np.random.default_rng(0)
    order_words = ("followed by", "then", "comes after", "after", "before")
    for caption in clip_captions(rng, ["beep", "hum"], 5):
        assert any(w in caption.lower() for w in order_words), caption


def test_split_counts_are_proportional_and_complete():
    assert split_counts(300, [0.7, 0.15, 0.15]) == [210, 45, 45]
    assert split_counts(12, [0.7, 0.15, 0.15]) == [8, 2, 2]
    assert split_counts(1, [0.7, 0.3]) == [1, 0]
    assert sum(split_counts(17, [0.7, 0.15, 0.15])) == 17


# ---------------------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    summary = generate(out, CLIPS, seed=3, seconds=SECONDS, sample_rate=SR)
    assert summary == {
        "clotho": {"development": 8, "validation": 2, "evaluation": 2},
        "tacos": {"release": CLIPS},
        "audioset_strong": {"train": 8, "eval": 4},
    }
    return out


def test_clotho_layout(raw):
    root = raw / "clotho"
    names = {}
    for split, count in (("development", 8), ("validation", 2), ("evaluation", 2)):
        rows = read_csv(root / "clotho_csv_files" / f"clotho_captions_{split}.csv")
        assert tuple(rows[0]) == CLOTHO_CAPTION_FIELDS
        assert len(rows) == count + 1
        for name, *captions in rows[1:]:
            assert len(captions) == 5 and len(set(captions)) == 5 and all(captions)
            info = sf.info(str(root / "clotho_audio_files" / split / name))
            assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, SR)
            assert info.frames == SECONDS * SR
        names[split] = [r[0] for r in rows[1:]]

        meta_path = root / "clotho_csv_files" / f"clotho_metadata_{split}.csv"
        meta = read_csv(meta_path, encoding="iso-8859-1")
        assert tuple(meta[0]) == CLOTHO_METADATA_FIELDS
        assert [r[0] for r in meta[1:]] == names[split]
        assert all(r[2].isdigit() and r[3].endswith(r[2]) for r in meta[1:])
    every = [n for split in names.values() for n in split]
    assert any(" " in n for n in every) and any("," in n for n in every)
    assert any(not n.isascii() for n in every)
    dev_meta = (root / "clotho_csv_files" / "clotho_metadata_development.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):  # accented names are Latin-1 bytes, as in the real files
        dev_meta.decode("utf-8")


def test_clotho_relevance_lists_clips_with_the_same_events(raw):
    root = raw / "clotho" / "clotho_csv_files"
    captions = {r[0]: r[1:] for r in read_csv(root / "clotho_captions_evaluation.csv")[1:]}
    keywords = {r[0]: r[1] for r in read_csv(root / "clotho_metadata_evaluation.csv", "iso-8859-1")[1:]}
    rows = read_csv(root / "metadata_eval.csv")
    assert tuple(rows[0]) == CLOTHO_RELEVANCE_FIELDS
    queries = {q: ast.literal_eval(files) for q, files in rows[1:]}
    assert set(queries) == {c for cs in captions.values() for c in cs}
    assert max(len(files) for files in queries.values()) >= 2
    for query, files in queries.items():
        assert isinstance(files, list) and set(files) <= set(captions)
        assert any(query in captions[f] for f in files)
        assert len({keywords[f] for f in files}) == 1  # same event sequence
    described = {f for files in queries.values() for f in files}
    assert described == set(captions)


def test_tacos_layout(raw):
    root = raw / "tacos"
    meta = read_csv(root / "metadata.csv")
    assert tuple(meta[0]) == TACOS_METADATA_FIELDS and len(meta) == CLIPS + 1
    meta = [dict(zip(meta[0], r)) for r in meta[1:]]
    filenames = [m["filename"] for m in meta]
    assert len(set(filenames)) == CLIPS
    phrases = {p: c.label for c in EVENT_CLASSES for p in c.phrases}
    for m in meta:
        assert m["filename"] == f"{m['freesound_id']}.mp3"
        assert m["subclass"] in {c.display_name for c in EVENT_CLASSES}
        assert all(k == k.strip() and k for k in m["keywords"].split(", "))
        assert float(m["end_time_s"]) - float(m["start_time_s"]) == pytest.approx(SECONDS)

    strong = read_csv(root / "annotations_strong.csv")
    assert tuple(strong[0]) == TACOS_STRONG_FIELDS
    regions = defaultdict(list)
    for filename, text, onset, offset in strong[1:]:
        assert text in phrases, f"region text {text!r} is not a class phrase"
        assert 0 <= float(onset) < float(offset) <= SECONDS
        regions[filename].append((float(onset), float(offset)))
    assert set(regions) == set(filenames)

    weak = read_csv(root / "annotations_weak.csv")
    assert tuple(weak[0]) == TACOS_WEAK_FIELDS
    assert weak[0] == ["filename", "text"]  # the release's header
    assert [r[0] for r in weak[1:]] == filenames
    dev, test = read_csv(root / "development_split.csv"), read_csv(root / "test_split.csv")
    assert dev[0] == test[0] == ["filename"]
    assert sorted(r[0] for r in dev[1:] + test[1:]) == sorted(filenames)
    assert len(test) - 1 == max(4, CLIPS // 5)

    for filename, spans in regions.items():
        x, sr = sf.read(root / "audio" / filename, dtype="float32")
        assert sr == SR and x.ndim == 1 and abs(len(x) - SECONDS * SR) < 0.01 * SR
        check_regions(x, sr, spans, guard=0.04)  # MP3 smears transients by up to one granule (36 ms)


def test_audioset_strong_layout(raw):
    root = raw / "audioset_strong"
    names = read_csv(root / "mid_to_display_name.tsv", delimiter="\t")
    assert names == [[c.mid, c.display_name] for c in EVENT_CLASSES]  # no header row
    regions = defaultdict(list)
    ytids = []
    for split, count in (("train", 8), ("eval", 4)):
        rows = read_csv(root / f"audioset_{split}_strong.tsv", delimiter="\t")
        assert tuple(rows[0]) == AUDIOSET_STRONG_FIELDS
        segments = list(dict.fromkeys(r[0] for r in rows[1:]))
        assert len(segments) == count
        for segment, start, end, mid in rows[1:]:
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}_\d+000", segment), segment
            assert mid in {c.mid for c in EVENT_CLASSES}
            assert 0 <= float(start) < float(end) <= SECONDS
            regions[segment].append((float(start), float(end)))
        ytids += [s.rsplit("_", 1)[0] for s in segments]
    assert any("_" in y for y in ytids) and any("-" in y for y in ytids)
    assert sorted(p.name for p in (root / "audio").iterdir()) == sorted(f"Y{y}.flac" for y in ytids)
    for segment, spans in regions.items():
        x, sr = sf.read(root / "audio" / f"Y{segment.rsplit('_', 1)[0]}.flac", dtype="float32")
        assert sr == SR and x.shape == (SECONDS * SR, 2)
        merged = []
        for onset, offset in sorted(spans):  # adjacent rows of one event, as the converter merges them
            if merged and onset == merged[-1][1]:
                merged[-1] = (merged[-1][0], offset)
            else:
                merged.append((onset, offset))
        check_regions(x.mean(1), sr, merged, guard=0.005)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    generate(tmp_path / "a", 4, seed=11, seconds=3.0, sample_rate=SR)
    generate(tmp_path / "b", 4, seed=11, seconds=3.0, sample_rate=SR, workers=2)
    generate(tmp_path / "c", 4, seed=12, seconds=3.0, sample_rate=SR)
    a, b, c = tree(tmp_path / "a"), tree(tmp_path / "b"), tree(tmp_path / "c")
    assert a == b
    assert a.keys() != c.keys()  # TACOS and AudioSet names come from the seed
    shared = [k for k in a if k in c and k.endswith(".wav")]
    assert shared and all(a[k] != c[k] for k in shared)


def test_existing_layout_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "tacos").mkdir()
    (tmp_path / "tacos" / "metadata.csv").write_text("mine")
    with pytest.raises(FileExistsError, match="tacos"):
        generate(tmp_path, 1, seed=0, seconds=3.0)
    assert (tmp_path / "tacos" / "metadata.csv").read_text() == "mine"
    generate(tmp_path, 1, seed=0, seconds=3.0, overwrite=True)
    assert read_csv(tmp_path / "tacos" / "metadata.csv")[0][0] == "filename"
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clips": 0}, "clips must be a positive integer"),
        ({"clips": 2, "seconds": 1.0}, "seconds must be in"),
        ({"clips": 2, "sample_rate": 12345}, "sample_rate must be one of"),
        ({"clips": 2, "seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    args = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(tmp_path, **args)


def test_mp3_round_trip_keeps_event_times():
    """The TACOS audio goes through MP3: decoding must not shift it (encoder delay is compensated)."""
    clip = compose_clip(clip_rng(0, "tacos", 1), 4.0, SR)
    buf = io.BytesIO()
    sf.write(buf, clip.audio, SR, format="MP3")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    lag = np.argmax(signal.correlate(y, clip.audio, mode="full", method="fft")) - (len(clip.audio) - 1)
    assert abs(lag) <= 2
