"""Relevance judgements: the accepted forms, and finding a split's manifest by the shard url rules."""

from __future__ import annotations

import json

import pytest

from shards.relevance import load_relevance, parse_relevance, read_relevance
from shards.shardlist import ShardError


def test_parse_relevance_forms(tmp_path):
    assert parse_relevance({"q": "['a.wav', 'b.wav']"}) == {"q": ["a.wav", "b.wav"]}
    assert parse_relevance([{"query": "q", "audio_filenames": ["a.wav"]}, {"query": "q", "keys": "b"}]) == {
        "q": ["a.wav", "b"]
    }
    with pytest.raises(ValueError, match="entry 0"):
        parse_relevance([{"query": "q"}])
    csv_path = tmp_path / "metadata_eval.csv"
    csv_path.write_text("query,audio_filenames\nA dog barks.,\"['a.wav', 'b, c.wav']\"\n", encoding="utf-8")
    assert read_relevance(csv_path) == {"A dog barks.": ["a.wav", "b, c.wav"]}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"relevance": {"q": ["a.wav"]}, "relevance_keys": {"q": ["toy-a"]}}))
    assert read_relevance(manifest) == {"q": ["toy-a"]}
    manifest.write_text(json.dumps({"dataset": "toy"}))
    assert read_relevance(manifest) is None


def test_load_relevance_follows_the_shard_url_rules(tmp_path, kit):
    judged = {"a": {"q1": ["a-0000"]}, "b": {"q1": ["b-0001"], "q2": ["b-0000"]}, "c": None}
    for name, relevance in judged.items():
        folder = kit.write_tars(
            tmp_path / name, kit.make_samples(name, 4, 8000), 2, 8000, prefix=f"{name}-train"
        )
        if relevance is not None:
            manifest = json.loads((folder / "manifest.json").read_text())
            (folder / "manifest.json").write_text(json.dumps({**manifest, "relevance_keys": relevance}))
    a, b, c = (str(tmp_path / n) for n in "abc")

    assert load_relevance(a) == judged["a"]  # a split folder
    assert load_relevance(f"{b}/b-train-{{000000..000001}}.tar") == judged["b"]  # two shards, one manifest
    assert load_relevance(f"{b}/b-train-*.tar") == judged["b"]  # a glob
    assert load_relevance([a, f"{b}/b-train-000001.tar", c]) == {"q1": ["a-0000", "b-0001"], "q2": ["b-0000"]}
    assert load_relevance(c) is None  # a manifest without judgements
    with pytest.raises(ShardError, match="matches no file"):
        load_relevance(f"{a}/a-train-000009.tar")
    with pytest.raises(ShardError, match="allow_pipe"):
        load_relevance("pipe:cat a.tar")
    assert load_relevance("pipe:cat a.tar", allow_pipe=True) is None  # nothing local to read
