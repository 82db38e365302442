"""The sample format every part of sonotext shares (DESIGN.md "Shard format").

One sample is two tar members with the same key: ``KEY.flac`` (mono 16-bit FLAC) and ``KEY.json``
(the fields of :class:`Sample` minus the audio). This module owns the key rules, the JSON round-trip
and validation; it does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
VALID_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_KEY_LENGTH = 160
AUDIO_EXTENSION = re.compile(r"\.(wav|flac|mp3|ogg|opus|m4a|aac)$", re.IGNORECASE)


class SchemaError(ValueError):
    """A sample violates the shard format; the message names the sample and the field."""


@dataclass
class Region:
    """A caption tied to a time span of the clip, in seconds from the clip start."""

    text: str
    onset: float
    offset: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "onset": round(self.onset, 6),
            "offset": round(self.offset, 6),
        }
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass
class Sample:
    """One clip: its metadata and captions. Audio travels beside it (FLAC bytes or a waveform)."""

    key: str
    dataset: str
    split: str
    source_id: str
    duration: float
    sample_rate: int
    captions: list[str] = field(default_factory=list)
    strong: list[Region] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "dataset": self.dataset,
            "split": self.split,
            "source_id": self.source_id,
            "duration": round(self.duration, 6),
            "sample_rate": self.sample_rate,
            "captions": list(self.captions),
            "strong": [r.to_json() for r in self.strong],
            "meta": self.meta,
        }

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, sort_keys=False).encode("utf-8")

    @classmethod
    def from_json(cls, obj: dict[str, Any] | bytes | str) -> Sample:
        """Parse and validate the JSON member of a sample."""
        if isinstance(obj, (bytes, str)):
            try:
                obj = json.loads(obj)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SchemaError(f"sample JSON is not valid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise SchemaError(f"sample JSON must be an object, got {type(obj).__name__}")
        name = obj.get("key", "<no key>")
        required = ("key", "dataset", "split", "source_id", "duration", "sample_rate")
        for k in required:
            if k not in obj:
                raise SchemaError(f"sample {name}: missing field {k!r}")
        strong = obj.get("strong") or []
        if not isinstance(strong, list):
            raise SchemaError(f"sample {name}: field 'strong' must be a list")
        regions = []
        for i, r in enumerate(strong):
            if not isinstance(r, dict) or not {"text", "onset", "offset"} <= set(r):
                raise SchemaError(f"sample {name}: strong[{i}] needs text, onset, offset")
            regions.append(Region(r["text"], r["onset"], r["offset"], r.get("meta") or {}))
        captions = obj.get("captions") or []
        if not isinstance(captions, list):
            raise SchemaError(f"sample {name}: field 'captions' must be a list")
        sample = cls(
            key=obj["key"],
            dataset=obj["dataset"],
            split=obj["split"],
            source_id=obj["source_id"],
            duration=obj["duration"],
            sample_rate=obj["sample_rate"],
            captions=captions,
            strong=regions,
            meta=obj.get("meta") or {},
        )
        validate_sample(sample)
        return sample


def make_key(dataset: str, source_id: str) -> str:
    """``{dataset}-{source id made safe}``: only [A-Za-z0-9_-], no dots, stable for the same id.

    An audio extension is dropped ("Santa Motor.wav" -> "clotho-Santa_Motor"), accents are folded to
    ASCII, other characters become ``_``; ids with letters that have no ASCII form (e.g. CJK) or longer
    than MAX_KEY_LENGTH get a short hash of the full id so distinct ids keep distinct keys.
    """
    prefix = KEY_CHARS.sub("_", dataset).strip("_") or "data"
    stem = AUDIO_EXTENSION.sub("", source_id)
    decomposed = unicodedata.normalize("NFKD", stem)
    folded = decomposed.encode("ascii", "ignore").decode("ascii")
    safe = KEY_CHARS.sub("_", folded).strip("_")
    lossy = any(ord(ch) > 127 and ch.isalnum() and not unicodedata.combining(ch) for ch in decomposed)
    if not safe or lossy or len(prefix) + 1 + len(safe) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(source_id.encode("utf-8")).hexdigest()[:10]
        safe = f"{safe[: MAX_KEY_LENGTH - len(prefix) - 12]}_{digest}".strip("_")
    return f"{prefix}-{safe}"


class KeyAllocator:
    """Hands out unique keys within one split: a second id that sanitises to a taken key gets a hash suffix."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def __call__(self, dataset: str, source_id: str) -> str:
        key = make_key(dataset, source_id)
        owner = self._owner.get(key)
        if owner is None or owner == source_id:
            self._owner[key] = source_id
            return key
        digest = hashlib.sha1(source_id.encode("utf-8")).hexdigest()[:8]
        key = f"{key[: MAX_KEY_LENGTH - 9]}_{digest}"
        self._owner[key] = source_id
        return key


def stable_id(text: str) -> int:
    """63-bit id of a string, the same in every process and run (unlike the salted built-in hash).

    Batches carry the ids of their sample keys and region texts (`clip_ids`, `region_text_ids`): the losses use
    them to tell the same clip or caption on different ranks. Big-endian blake2b-64, shifted to stay non-negative.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_sample(sample: Sample, tolerance: float = 1e-3) -> None:
    """Check a sample against the format; raises SchemaError naming the sample and the field.

    `tolerance` (seconds) absorbs rounding between the stored duration and region offsets.
    """
    name = sample.key or sample.source_id or "<unnamed>"

    def fail(msg: str) -> None:
        raise SchemaError(f"sample {name}: {msg}")

    if not isinstance(sample.key, str) or not VALID_KEY.match(sample.key):
        fail(f"key {sample.key!r} must be non-empty and use only [A-Za-z0-9_-]")
    for k in ("dataset", "split", "source_id"):
        v = getattr(sample, k)
        if not isinstance(v, str) or not v:
            fail(f"field {k!r} must be a non-empty string, got {v!r}")
    if not _finite(sample.duration) or sample.duration <= 0:
        fail(f"field 'duration' must be a finite number > 0, got {sample.duration!r}")
    if (
        not isinstance(sample.sample_rate, int)
        or isinstance(sample.sample_rate, bool)
        or sample.sample_rate <= 0
    ):
        fail(f"field 'sample_rate' must be a positive int, got {sample.sample_rate!r}")
    for i, c in enumerate(sample.captions):
        if not isinstance(c, str) or not c.strip():
            fail(f"captions[{i}] must be a non-empty string, got {c!r}")
    for i, r in enumerate(sample.strong):
        if not isinstance(r.text, str) or not r.text.strip():
            fail(f"strong[{i}].text must be a non-empty string, got {r.text!r}")
        if not _finite(r.onset) or not _finite(r.offset):
            fail(f"strong[{i}] onset/offset must be finite numbers, got {r.onset!r}/{r.offset!r}")
        if not 0 <= r.onset < r.offset:
            fail(f"strong[{i}] needs 0 <= onset < offset, got onset={r.onset} offset={r.offset}")
        if r.offset > sample.duration + tolerance:
            fail(f"strong[{i}].offset {r.offset} exceeds duration {sample.duration}")
    if not sample.captions and not sample.strong:
        fail("has neither captions nor strong regions")
    if not isinstance(sample.meta, dict):
        fail(f"field 'meta' must be an object, got {type(sample.meta).__name__}")
