"""Fixtures shared across the suite (their helpers are in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_shards


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Small real shards: synthetic clips (3 s, 16 kHz) -> the real converters; see helpers.make_shards."""
    return make_shards(tmp_path_factory.mktemp("tiny"))
