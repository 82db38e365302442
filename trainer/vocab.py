"""The texts a random-init text tower's offline tokenizer is trained on: the captions of the training sources."""

from __future__ import annotations

from trainer.captions import normalize_captions
from trainer.config import Config

MAX_SAMPLES = 50_000
"""Samples read per source at most."""
MAX_CHARS = 20_000_000
"""Characters of text kept over all sources at most (each source gets an equal share): the tokenizer pass holds
them all in memory, so the bound is on text, not only on samples."""


def collect_tokenizer_texts(
    cfg: Config, limit: int = MAX_SAMPLES, max_chars: int = MAX_CHARS, stats=None
) -> list[str]:
    """Captions and region texts of the training sources, to train the offline tokenizer of a random-init text tower.

    A bounded sample: the first `limit` samples of each source and at most `max_chars` characters over all
    sources, every text cut to data.max_text_chars. Corrupt samples and shards are skipped and counted in
    `stats` (a shards.records.ReadStats), as the training stream does. Texts are normalised by
    data.caption_transform, as the model will tokenise them.
    """
    from shards.records import ReadStats, iter_samples
    from shards.remote import ReadPolicy

    stats = stats if stats is not None else ReadStats()
    policy = ReadPolicy.of(cfg.data)
    sources = [*cfg.data.weak, *cfg.data.strong]
    budget = max_chars // max(1, len(sources))
    texts: list[str] = []
    for src in sources:
        left = budget
        samples = iter_samples(
            src.urls,
            limit=limit,
            allow_pipe=cfg.data.allow_pipe,
            stats=stats,
            max_text_chars=cfg.data.max_text_chars,
            policy=policy,
        )
        for sample in samples:
            sample_texts = [*sample.captions, *(r.text for r in sample.strong)]
            size = sum(len(t) for t in sample_texts)
            if size > left:
                break
            texts.extend(sample_texts)
            left -= size
    return normalize_captions(texts, cfg.data.caption_transform)
