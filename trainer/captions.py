"""Caption normalisation before tokenising (`data.caption_transform`), as the DCASE 2025 baseline and TACOS do it.

    normalize_captions(["A dog barks, loudly."], "lower_strip_punct") == ["a dog barks loudly"]

- ``lower_strip_punct``: CPJKU/dcase2025_task6_baseline d25_t6/retrieval_module.py, ``forward_text``:
  ``caption.lower().translate(str.maketrans("", "", string.punctuation))``;
- ``lower_strip_punct_trim``: OptimusPrimus/tacos tacos/retrieval_module.py, ``forward_text``: the same, then
  ``.strip()``.

`string.punctuation` is ASCII only: curly quotes and other non-ASCII marks stay, as in both codes.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

CAPTION_TRANSFORMS = ("none", "lower_strip_punct", "lower_strip_punct_trim")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_caption(text: str, transform: str) -> str:
    """`text` as the tokenizer sees it under `transform` (one of CAPTION_TRANSFORMS)."""
    if transform == "none":
        return text
    if transform == "lower_strip_punct":
        return text.lower().translate(_NO_PUNCTUATION)
    if transform == "lower_strip_punct_trim":
        return text.lower().translate(_NO_PUNCTUATION).strip()
    raise ValueError(f"caption transform must be one of {CAPTION_TRANSFORMS}, got {transform!r}")


def normalize_captions(texts: Sequence[str], transform: str) -> list[str]:
    """Every caption of `texts` under `transform`."""
    if transform == "none":
        return list(texts)
    return [normalize_caption(t, transform) for t in texts]
