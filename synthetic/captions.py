"""Captions of synthetic clips: a region caption names one event, a clip caption names its events in order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthetic.events import CLASSES

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
