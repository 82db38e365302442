"""What the step benchmarks share: made-up captions and a clock that other jobs on a CPU machine do not inflate."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

WORDS = [
    "dog",
    "bark",
    "car",
    "horn",
    "rain",
    "roof",
    "bird",
    "chirp",
    "door",
    "slam",
    "engine",
    "hum",
    "water",
    "drip",
    "bell",
    "ring",
    "wind",
    "blow",
    "man",
    "speak",
]


def captions(n: int, generator: torch.Generator) -> list[str]:
    """`n` captions of the form "a dog bark then a car horn" (words drawn with `generator`)."""
    idx = torch.randint(0, len(WORDS), (n, 4), generator=generator).tolist()
    return [f"a {WORDS[a]} {WORDS[b]} then a {WORDS[c]} {WORDS[d]}" for a, b, c, d in idx]


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on GPUs (synchronised); on CPU the process's CPU time, which other jobs on the machine do not inflate."""
    if device.type == "cuda":

        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return now
    return time.process_time
