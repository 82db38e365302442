"""Synthetic sound events with known times: an event vocabulary and clips composed from it.

Events are tones at clearly separated pitches, up/down chirps, noise bursts of two colours, click and knock
trains, FM and buzz textures. A clip places 1-3 of them at random, non-overlapping times over faint pink
background noise; every event's onset/offset is the exact audible extent of the samples written, so
converters, losses and temporal metrics can be checked against ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.fft

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
# Clips
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
