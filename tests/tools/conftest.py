"""Fixtures of the CLI tests: a tiny random-init model saved as a folder (what the inference CLIs load)."""

from __future__ import annotations

import pytest

from tests.helpers import tiny_joint_model

TEXTS = ["a dog barks", "rain on a roof", "a vacuum cleaner hums", "birds chirp", "thunder rolls", "a tone"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny model (conv audio at 16 kHz, tiny text tower) and the model itself."""
    model = tiny_joint_model(16000, TEXTS)
    folder = tmp_path_factory.mktemp("tiny_model") / "model"
    model.save_pretrained(folder)
    return folder, model
