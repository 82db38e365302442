"""data.caption_transform: the DCASE baseline's and TACOS' normalisation, applied alike in training (tokens, region
caption de-duplication, the offline vocabulary) and evaluation (the saved model carries it)."""

from __future__ import annotations

import csv
import string

import pytest
import torch

from tests.helpers import ROOT
from tests.trainer.test_model import CAPTIONS, batch, tiny_config
from trainer.captions import normalize_caption, normalize_captions
from trainer.config import LossConfig, load_config
from trainer.losses import region_contrastive_loss, string_ids
from trainer.model import AudioTextModel, build_model
from trainer.step import compute_loss

RELEASE = ROOT / "tests" / "shards" / "releases" / "clotho" / "clotho_captions_development.csv"


def release_captions() -> list[str]:
    """Captions of real Clotho v2.1 development rows (tests/shards/releases)."""
    with RELEASE.open(encoding="utf-8", newline="") as f:
        return [c for row in csv.DictReader(f) for k, c in row.items() if k.startswith("caption_")]


@pytest.mark.parametrize(
    ("text", "dcase", "tacos"),
    [
        ("A dog barks, loudly!", "a dog barks loudly", "a dog barks loudly"),
        (" Birds chirp (far away). ", " birds chirp far away ", "birds chirp far away"),
        ("Rain's on the roof—it’s heavy", "rains on the roof—it’s heavy", "rains on the roof—it’s heavy"),
    ],
)
def test_hand_computed(text, dcase, tacos):
    assert normalize_caption(text, "lower_strip_punct") == dcase
    assert normalize_caption(text, "lower_strip_punct_trim") == tacos
    assert normalize_caption(text, "none") == text


def test_equals_the_baselines_expressions_on_clotho_release_captions():
    captions = release_captions()
    assert len(captions) == 80
    # CPJKU/dcase2025_task6_baseline d25_t6/retrieval_module.py forward_text
    dcase = [b.lower().translate(str.maketrans("", "", string.punctuation)) for b in captions]
    # OptimusPrimus/tacos tacos/retrieval_module.py forward_text
    tacos = [c.lower().translate(str.maketrans("", "", string.punctuation)).strip() for c in captions]
    assert normalize_captions(captions, "lower_strip_punct") == dcase
    assert normalize_captions(captions, "lower_strip_punct_trim") == tacos
    assert dcase != captions
    with pytest.raises(ValueError, match="caption transform must be one of"):
        normalize_caption("x", "lower")


def test_the_model_tokenizes_normalized_text_and_saves_the_transform(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(), LossConfig(), sample_rate=16000, tokenizer_texts=CAPTIONS)
    raw, clean = ["A Dog, barks twice!"], ["a dog barks twice"]
    assert not torch.equal(model.tokenize(raw)["input_ids"], model.tokenize(clean)["input_ids"])
    model.caption_transform = "lower_strip_punct"
    assert torch.equal(model.tokenize(raw)["input_ids"], model.tokenize(clean)["input_ids"])
    model.save_pretrained(tmp_path / "m")
    loaded = AudioTextModel.from_pretrained(tmp_path / "m")
    assert loaded.caption_transform == "lower_strip_punct"
    # evaluation embeds captions through the same tokenize
    from trainer.embed import forward_batch

    loaded.eval()
    with torch.inference_mode():
        a, b = (forward_batch(loaded, None, texts, torch.device("cpu")).text for texts in (raw, clean))
    torch.testing.assert_close(a, b)


def test_region_captions_equal_once_normalized_are_one_caption():
    cfg = load_config(None, ["data.caption_transform=lower_strip_punct", "data.strong_every=1"])
    torch.manual_seed(0)
    model = build_model(tiny_config(), LossConfig(), sample_rate=16000, tokenizer_texts=CAPTIONS)
    model.caption_transform = cfg.data.caption_transform
    model.eval()  # no dropout: the same outputs in both computations
    audio, mask = batch()
    texts = ["A dog barks.", "a dog barks", "Rain falls", "birds chirp"]
    strong = {
        "kind": "strong",
        "audio": audio,
        "audio_mask": mask,
        "region_text": texts,
        "region_text_ids": string_ids(texts),  # the reader's ids: of the raw texts
        "region_clip": torch.tensor([0, 0, 0, 1]),
        "onsets": torch.tensor([0.0, 0.1, 0.2, 0.0]),
        "offsets": torch.tensor([0.2, 0.3, 0.4, 0.3]),
        "clip_ids": torch.tensor([1, 2]),
    }
    got = compute_loss(model, model.tokenize, strong, cfg).total
    out = model(audio, mask, **model.tokenize(texts))

    def region_loss(text_ids):
        args = (out.audio_frames, out.frame_mask, out.frame_rate, out.text, strong["region_clip"])
        args += (strong["onsets"], strong["offsets"], cfg.loss.strong_tau)
        return region_contrastive_loss(*args, text_ids=text_ids, clip_ids=strong["clip_ids"])

    # clip 0's "A dog barks." and "a dog barks" are one negative of clip 1, as one text after normalisation
    torch.testing.assert_close(got, region_loss(torch.tensor([5, 5, 6, 7])))
    assert abs(got - region_loss(strong["region_text_ids"])) > 1e-6


def test_tokenizer_vocabulary_is_built_from_normalized_captions(tmp_path):
    from tests.helpers import toy_sample, write_split
    from trainer.vocab import collect_tokenizer_texts

    sample = toy_sample("x", "train", 16000, captions=["Hello, World!"], regions=[("A Bird.", 0.0, 1.0)])
    urls = write_split(tmp_path, "train", [(sample, torch.zeros(32000).numpy())], 16000)
    overrides = [f"data.weak=[{{name: w, urls: {urls}}}]", "data.strong_every=0"]
    assert collect_tokenizer_texts(load_config(None, overrides)) == ["Hello, World!", "A Bird."]
    normalized = load_config(None, [*overrides, "data.caption_transform=lower_strip_punct_trim"])
    assert collect_tokenizer_texts(normalized) == ["hello world", "a bird"]
