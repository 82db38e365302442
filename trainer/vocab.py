"""The texts a random-init text tower's offline tokenizer is trained on: the captions of the training sources."""

from __future__ import annotations

from trainer.captions import normalize_captions
from trainer.config import Config


def collect_tokenizer_texts(cfg: Config, limit: int = 50_000) -> list[str]:
    """Captions and region texts of the training sources, to train the offline tokenizer of a random-init text tower;
    normalised by data.caption_transform, as the model will tokenise them."""
    from shards.records import iter_sample_json
    from shards.remote import ReadPolicy

    texts: list[str] = []
    policy = ReadPolicy.of(cfg.data)
    for src in [*cfg.data.weak, *cfg.data.strong]:
        for meta in iter_sample_json(src.urls, limit=limit, allow_pipe=cfg.data.allow_pipe, policy=policy):
            texts.extend(meta.get("captions") or [])
            texts.extend(r["text"] for r in meta.get("strong") or [])
    return normalize_captions(texts, cfg.data.caption_transform)
