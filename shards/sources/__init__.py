"""Readers of the raw datasets, by the name the CLI uses (``python -m tools.convert NAME``)."""

from __future__ import annotations

from shards.sources.audiocaps import AudioCaps
from shards.sources.audioset_strong import AudioSetStrong
from shards.sources.audiosetcaps import AudioSetCaps
from shards.sources.base import Entry, Item, Skip, Source, SourceError
from shards.sources.clotho import Clotho
from shards.sources.tacos import Tacos
from shards.sources.wavcaps import WavCaps

SOURCES: dict[str, type[Source]] = {
    s.name: s for s in (Clotho, AudioCaps, WavCaps, AudioSetCaps, Tacos, AudioSetStrong)
}

__all__ = ["SOURCES", "Entry", "Item", "Skip", "Source", "SourceError", "get_source"]


def get_source(name: str) -> type[Source]:
    """The reader class of dataset `name`; SourceError lists the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown dataset {name!r}; expected one of {', '.join(SOURCES)}") from None
