"""``tools.convert --check``: list a split and resolve every clip's audio exactly as a conversion would, decoding
and writing nothing, so its counts equal what the conversion then writes and skips.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shards.convert import ConvertError, plan_entries
from shards.sources.base import Candidate, Item, Layout, Skip, Source, describe_candidates, resolve_audio


@dataclass
class CheckResult:
    """What a conversion of one split would find: the same listing, the same audio resolution."""

    dataset: str
    split: str
    layout: Layout
    listed: int = 0
    """Entries: clips plus listing skips (what the conversion writes or skips)."""
    found: int = 0
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Entries skipped while listing (bad rows, duplicates, blacklisted, unsafe names), as the manifest lists them."""
    audio_namings: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """What the conversion adds to the manifest (region fixes, split method, relevance)."""

    def skip_counts(self) -> Counter[str]:
        return Counter(s["reason"].split(":", 1)[0] for s in self.skipped)


def check(source: Source, split: str, workers: int = 8, examples: int = 5) -> CheckResult:
    """Read the metadata and resolve every clip's audio (with `workers` threads); write nothing."""
    if split not in source.splits:
        raise ConvertError(
            f"unknown split {split!r} for {source.name}; expected one of {', '.join(source.splits)}"
        )
    result = CheckResult(source.name, split, source.layout(split))
    keys: dict[str, str] = {}
    namings: Counter[str] = Counter()
    for entry, found in _resolved(plan_entries(source.entries(split), keys, source.name), max(1, workers)):
        result.listed += 1
        if isinstance(entry, Skip):
            result.skipped.append({"source_id": entry.source_id, "reason": entry.reason})
        elif found is not None:
            result.found += 1
            namings[found.naming] += 1
        else:
            result.missing += 1
            if len(result.missing_examples) < examples:
                result.missing_examples.append(
                    f"{entry.source_id}: {describe_candidates(entry.audio, source.src)}"
                )
    result.audio_namings = dict(sorted(namings.items()))
    result.extra = source.manifest_extra(split, keys)
    return result


def _resolved(
    planned: Iterator[tuple[int, Item | Skip]], workers: int
) -> Iterator[tuple[Item | Skip, Candidate | None]]:
    """(entry, its resolved audio) in listing order, stat calls on `workers` threads, a bounded window ahead."""
    with ThreadPoolExecutor(workers) as executor:
        window: deque[tuple[Item | Skip, Future | None]] = deque()
        for _, entry in planned:
            window.append((entry, executor.submit(resolve_audio, entry) if isinstance(entry, Item) else None))
            while len(window) >= 64 * workers:
                entry, future = window.popleft()
                yield entry, future.result() if future else None
        while window:
            entry, future = window.popleft()
            yield entry, future.result() if future else None
