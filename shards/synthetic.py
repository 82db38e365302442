"""A synthetic audio-text dataset with known event times, written in the official raw layouts.

Clips are composed from a vocabulary of synthetic sound events (tones at clearly separated pitches,
up/down chirps, noise bursts of two colours, click and knock trains, FM and buzz textures) placed at
random, non-overlapping times over faint pink background noise. Every event's onset/offset is the
exact audible extent of the samples written, so converters, losses and temporal metrics can be
checked against ground truth.

`generate` writes three datasets under one folder, each in the layout its real converter reads
(DESIGN.md "Raw layouts"), with ``clips`` clips per layout:

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
from dataclasses import dataclass, field
from functools import lru_cache, partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import soundfile as sf

from shards.sources.tacos import test_rows as tacos_test_rows

SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000)
"""Rates every output format (WAV, FLAC and MP3) can be written at; all leave room for a 4 kHz chirp."""
MIN_SECONDS, MAX_SECONDS = 3.0, 30.0
LAYOUTS = ("clotho", "tacos", "audioset_strong")
CLOTHO_SPLITS = (("development", 0.70), ("validation", 0.15), ("evaluation", 0.15))
AUDIOSET_SPLITS = (("train", 0.70), ("eval", 0.30))

EDGE_SECONDS = 0.2  # no event closer than this to the clip ends
GAP_SECONDS = 0.3  # minimum silence between two events
FADE_SECONDS = 0.005  # raised-cosine ramp at both ends of tonal/noise events
EVENT_DB = (-24.0, -12.0)  # event RMS level range, dBFS
BACKGROUND_DB = (-52.0, -40.0)  # background noise RMS level range, dBFS
EVENT_PEAK = 0.9
EVENTS_PER_CLIP = (1, 2, 3)
EVENTS_PER_CLIP_P = (0.3, 0.45, 0.25)

Synth = Callable[[np.random.Generator, int, int], np.ndarray]


# ---------------------------------------------------------------------------------------------------------------------
# Event vocabulary: each synth takes (rng, n samples, rate) and returns at most n samples, audible from first to last.
# ---------------------------------------------------------------------------------------------------------------------


def _fade(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Raised-cosine fade-in/out so the event starts and ends without a click."""
    n = min(len(x) // 2, max(1, round(FADE_SECONDS * sample_rate)))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    x[:n] *= ramp
    x[len(x) - n :] *= ramp[::-1]
    return x


@lru_cache(maxsize=16)
def _spectral_gain(n: int, sample_rate: int, exponent: float, lo: float, hi: float) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    gain = np.zeros(len(f), np.float32)
    band = (f >= lo) & (f <= hi)
    gain[band] = f[band] ** (-exponent / 2)
    return gain


def _shaped_noise(
    rng: np.random.Generator, n: int, sample_rate: int, exponent: float, lo: float, hi: float
) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent inside [lo, hi] Hz and nothing outside."""
    spec = scipy.fft.rfft(rng.standard_normal(n, dtype=np.float32))
    return scipy.fft.irfft(spec * _spectral_gain(n, sample_rate, exponent, lo, hi), n)


def _tone_beep(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    t = np.arange(n) / sample_rate
    return _fade(np.sin(2 * np.pi * rng.uniform(2600, 3400) * t + rng.uniform(0, 2 * np.pi)), sample_rate)


def _tone_hum(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(100, 150)
    x = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in ((1, 1.0), (2, 0.5), (3, 0.25), (4, 0.12)))
    wobble = 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t)
    return _fade(x * wobble, sample_rate)


def _chirp(rng: np.random.Generator, n: int, sample_rate: int, rising: bool) -> np.ndarray:
    lo, hi = rng.uniform(300, 500), rng.uniform(2500, 4000)
    f1, f2 = (lo, hi) if rising else (hi, lo)
    duration = n / sample_rate
    t = np.arange(n) / sample_rate
    k = math.log(f2 / f1)
    phase = 2 * np.pi * f1 * duration / k * (np.exp(k * t / duration) - 1)
    return _fade(np.sin(phase), sample_rate)


def _chirp_up(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    return _chirp(rng, n, sample_rate, rising=True)


def _chirp_down(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    return _chirp(rng, n, sample_rate, rising=False)


def _white_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    return _fade(rng.standard_normal(n), sample_rate)


def _rumble(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    return _fade(_shaped_noise(rng, n, sample_rate, 2.0, 25.0, round(rng.uniform(100, 200))), sample_rate)


def _pulse_train(
    rng: np.random.Generator, n: int, sample_rate: int, rate: float, pulse: Callable[[], np.ndarray]
) -> np.ndarray:
    """Pulses every ~1/rate s (10% jitter) starting at sample 0; cut after the last pulse that fits."""
    x = np.zeros(n)
    pos, end = 0, 0
    while True:
        p = pulse() * rng.uniform(0.8, 1.0)
        if pos + len(p) > n:
            break
        x[pos : pos + len(p)] += p
        end = pos + len(p)
        pos += max(1, round(sample_rate / rate * rng.uniform(0.9, 1.1)))
    if end == 0:  # even one pulse does not fit: keep a truncated one so the event is never empty
        p = pulse()[:n]
        x[: len(p)] = p
        end = len(p)
    return x[:end]


def _decaying_pulse(sample_rate: int, freq: float, tau: float, seconds: float) -> np.ndarray:
    """A sine at `freq` decaying with time constant `tau`, cut after `seconds` with a 2 ms fade."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    x = np.sin(2 * np.pi * freq * t) * np.exp(-t / tau)
    fade = min(len(x), round(0.002 * sample_rate))
    x[len(x) - fade :] *= np.linspace(1, 0, fade)
    return x


def _clicks(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    tick = _decaying_pulse(sample_rate, rng.uniform(2000, 4000), 0.0025, 0.012)
    return _pulse_train(rng, n, sample_rate, rng.uniform(12, 20), lambda: tick)


def _knocks(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    # a damped low resonance plus a short noisy hit, cut after 3 time constants: the event ends where the sound does
    body = _decaying_pulse(sample_rate, rng.uniform(120, 250), 0.02, 0.06)
    envelope = np.exp(-np.arange(len(body)) / (0.004 * sample_rate)) * 0.5

    def knock() -> np.ndarray:
        return body + rng.standard_normal(len(body)) * envelope

    return _pulse_train(rng, n, sample_rate, rng.uniform(2.5, 4.0), knock)


def _siren(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    t = np.arange(n) / sample_rate
    fc, fm = rng.uniform(800, 1200), rng.uniform(3, 6)
    freq = fc * (1 + 0.2 * np.sin(2 * np.pi * fm * t + rng.uniform(0, 2 * np.pi)))
    return _fade(np.sin(2 * np.pi * np.cumsum(freq) / sample_rate), sample_rate)


def _buzz(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    f0 = rng.uniform(150, 250)
    # one period of a band-limited sawtooth, read out at f0 (a wavetable: 20 harmonics for the price of one)
    table_size = 2048
    phase = 2 * np.pi * np.arange(table_size) / table_size
    harmonics = range(1, min(20, int(0.45 * sample_rate / f0)) + 1)
    table = sum(np.sin(k * phase) / k for k in harmonics)
    position = (f0 * np.arange(n) / sample_rate % 1.0) * table_size
    return _fade(np.interp(position, np.arange(table_size + 1), np.append(table, table[0])), sample_rate)


@dataclass(frozen=True)
class EventClass:
    """One kind of synthetic sound: how to make it and how people would name it."""

    label: str
    """Short identifier, e.g. 'beep'."""
    mid: str
    """Made-up AudioSet machine id, e.g. '/m/0syn01'."""
    display_name: str
    """AudioSet-style display name (mid_to_display_name.tsv)."""
    family: str
    """Coarse group, used as the TACOS superclass and a keyword."""
    phrases: tuple[str, ...]
    """Noun phrases for captions; region captions are one of these."""
    seconds: tuple[float, float]
    """Range of event durations."""
    synth: Synth = field(repr=False)
    """(rng, n samples, rate) -> waveform of at most n samples, audible from its first to last sample."""


EVENT_CLASSES: tuple[EventClass, ...] = (
    EventClass(
        "beep",
        "/m/0syn01",
        "Beep, bleep",
        "tone",
        ("a high-pitched beep", "a high beep", "a shrill electronic beep"),
        (0.4, 1.2),
        _tone_beep,
    ),
    EventClass(
        "hum",
        "/m/0syn02",
        "Hum",
        "tone",
        ("a low hum", "a deep droning hum", "a low-pitched hum"),
        (1.0, 3.0),
        _tone_hum,
    ),
    EventClass(
        "chirp_up",
        "/m/0syn03",
        "Chirp, rising",
        "chirp",
        ("a rising chirp", "an upward sweeping tone", "a tone sweeping up"),
        (0.5, 1.5),
        _chirp_up,
    ),
    EventClass(
        "chirp_down",
        "/m/0syn04",
        "Chirp, falling",
        "chirp",
        ("a falling chirp", "a downward sweeping tone", "a tone sweeping down"),
        (0.5, 1.5),
        _chirp_down,
    ),
    EventClass(
        "white_noise",
        "/m/0syn05",
        "White noise",
        "noise",
        ("a burst of white noise", "a loud hiss", "a blast of static"),
        (0.4, 2.0),
        _white_noise,
    ),
    EventClass(
        "rumble",
        "/m/0syn06",
        "Rumble",
        "noise",
        ("a deep rumble", "a low rumbling noise", "a rumble like distant thunder"),
        (1.0, 3.0),
        _rumble,
    ),
    EventClass(
        "clicks",
        "/m/0syn07",
        "Clicking",
        "impulse",
        ("rapid clicking", "a fast ticking sound", "a quick train of clicks"),
        (0.8, 2.5),
        _clicks,
    ),
    EventClass(
        "knocks",
        "/m/0syn08",
        "Knock",
        "impulse",
        ("slow knocking", "a dull knocking sound", "a slow series of thuds"),
        (1.0, 2.5),
        _knocks,
    ),
    EventClass(
        "siren",
        "/m/0syn09",
        "Siren",
        "modulated",
        ("a warbling siren", "a wailing siren tone", "a wobbling alarm tone"),
        (1.0, 3.0),
        _siren,
    ),
    EventClass(
        "buzz",
        "/m/0syn10",
        "Buzz",
        "modulated",
        ("an electric buzz", "a harsh buzzing", "a buzzing tone"),
        (0.5, 2.0),
        _buzz,
    ),
)
CLASSES: dict[str, EventClass] = {c.label: c for c in EVENT_CLASSES}


# ---------------------------------------------------------------------------------------------------------------------
# Clips and captions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One placed event; onset/offset in seconds (ms precision) bound its audible samples."""

    label: str
    onset: float
    offset: float


@dataclass
class Clip:
    """A composed clip: mono float32 audio and its events in time order."""

    audio: np.ndarray
    sample_rate: int
    events: list[Event]


def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


def synthesize_event(rng: np.random.Generator, label: str, seconds: float, sample_rate: int) -> np.ndarray:
    """One event of class `label`, at most `seconds` long, scaled to a random level (peak <= EVENT_PEAK)."""
    if label not in CLASSES:
        raise ValueError(f"unknown event label {label!r}; expected one of {sorted(CLASSES)}")
    x = CLASSES[label].synth(rng, max(1, round(seconds * sample_rate)), sample_rate)
    rms = float(np.sqrt(np.mean(x**2)))
    if rms == 0.0:
        raise ValueError(f"event {label!r} of {seconds}s synthesised to silence")
    x = x * (_db(rng.uniform(*EVENT_DB)) / rms)
    peak = float(np.abs(x).max())
    if peak > EVENT_PEAK:
        x *= EVENT_PEAK / peak
    return x


def _place(rng: np.random.Generator, durations: Sequence[float], seconds: float) -> list[float]:
    """Random onsets (ms grid) for back-to-back events of `durations`, keeping edge and gap margins."""
    slack = seconds - 2 * EDGE_SECONDS - (len(durations) - 1) * GAP_SECONDS - sum(durations)
    shares = rng.dirichlet(np.ones(len(durations) + 1)) * max(slack, 0.0)
    onsets, t = [], EDGE_SECONDS
    for d, s in zip(durations, shares):
        t += s
        onsets.append(math.floor(t * 1000) / 1000)
        t += d + GAP_SECONDS
    return onsets


def compose_clip(
    rng: np.random.Generator, seconds: float, sample_rate: int, labels: Sequence[str] | None = None
) -> Clip:
    """1-3 distinct events (or the given `labels`, in that order) at random times over pink background noise."""
    if labels is None:
        k = int(rng.choice(EVENTS_PER_CLIP, p=EVENTS_PER_CLIP_P))
        labels = [EVENT_CLASSES[i].label for i in rng.choice(len(EVENT_CLASSES), size=k, replace=False)]
    durations = [round(float(rng.uniform(*CLASSES[lab].seconds)), 3) for lab in labels]
    room = seconds - 2 * EDGE_SECONDS - (len(labels) - 1) * GAP_SECONDS
    if room <= 0.1 * len(labels):
        raise ValueError(f"{len(labels)} events do not fit in a {seconds}s clip")
    if sum(durations) > room:  # short clips: shrink events to fit, keeping their proportions
        durations = [math.floor(d * room / sum(durations) * 1000) / 1000 for d in durations]
    n = round(seconds * sample_rate)
    background = _shaped_noise(rng, n, sample_rate, 1.0, 40.0, sample_rate / 2)
    audio = background * (_db(rng.uniform(*BACKGROUND_DB)) / np.sqrt(np.mean(background**2)))
    events = []
    for label, d, onset in zip(labels, durations, _place(rng, durations, seconds)):
        x = synthesize_event(rng, label, d, sample_rate)
        start = round(onset * sample_rate)
        audio[start : start + len(x)] += x
        events.append(Event(label, onset, round((start + len(x)) / sample_rate, 3)))
    return Clip(audio.astype(np.float32), sample_rate, events)


# Fixed words avoid the vocabulary of the event phrases ("noise", "hiss", "tone"...), so only the phrases name sounds.
ONE_EVENT = (
    "{a}.",
    "{a} can be heard.",
    "{a} occurs once in a quiet recording.",
    "There is {a} in an otherwise quiet recording.",
    "A quiet recording with {a}.",
    "{a} is heard in a quiet room.",
    "Near silence, then {a}.",
)
TWO_EVENTS = (
    "{a} followed by {b}.",
    "{a}, then {b}.",
    "First {a}, then {b}.",
    "{b} comes after {a}.",
    "{a} is followed by {b}.",
    "After {a}, {b} can be heard.",
    "{a} and then {b}.",
    "{a} before {b}.",
)
THREE_EVENTS = (
    "{a}, then {b}, and finally {c}.",
    "First {a}, then {b}, then {c}.",
    "{a} followed by {b} and then {c}.",
    "{a} is followed by {b}, and {c} comes last.",
    "After {a} and {b}, {c} can be heard.",
    "{a}, {b} and {c}, in that order.",
    "{a} comes first, then {b}, then {c}.",
)
TEMPLATES = {1: ONE_EVENT, 2: TWO_EVENTS, 3: THREE_EVENTS}


def region_caption(rng: np.random.Generator, label: str) -> str:
    """A short description of one event, e.g. 'a high-pitched beep'."""
    phrases = CLASSES[label].phrases
    return phrases[int(rng.integers(len(phrases)))]


def clip_captions(rng: np.random.Generator, labels: Sequence[str], count: int) -> list[str]:
    """`count` distinct clip captions naming the events in temporal order, each with its own wording."""
    templates = TEMPLATES.get(len(labels))
    if templates is None or count > len(templates):
        raise ValueError(f"cannot caption {len(labels)} events with {count} distinct captions")
    out = []
    for i in rng.choice(len(templates), size=count, replace=False):
        slots = {s: region_caption(rng, lab) for s, lab in zip("abc", labels)}
        text = templates[int(i)].format(**slots)
        out.append(text[0].upper() + text[1:])
    return out


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
    _write_csv(csv_dir / "metadata_eval.csv", ("query", "audio_filenames"), queries.values())
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
        ("filename", "text", "onset", "offset"),
        [r for _, rs, _ in rows for r in rs],
    )
    _write_csv(root / "annotations_weak.csv", ("filename", "text"), [w for _, _, w in rows])
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
