"""Fixtures of the CLI tests: a tiny random-init model saved as a folder (what the inference CLIs load)."""

from __future__ import annotations

import pytest
import torch

from trainer.config import AudioModelConfig, LossConfig, ModelConfig, TextModelConfig
from trainer.model import build_model

TEXTS = ["a dog barks", "rain on a roof", "a vacuum cleaner hums", "birds chirp", "thunder rolls", "a tone"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny model (conv audio at 16 kHz, tiny text tower) and the model itself."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        audio=AudioModelConfig(name="conv", hidden_size=16, num_layers=1, n_mels=16),
        text=TextModelConfig(
            name="tiny", hidden_size=16, num_layers=1, num_heads=2, vocab_size=200, max_length=16
        ),
        embed_dim=8,
    )
    model = build_model(cfg, LossConfig(), 16000, TEXTS).eval()
    folder = tmp_path_factory.mktemp("tiny_model") / "model"
    model.save_pretrained(folder)
    return folder, model
