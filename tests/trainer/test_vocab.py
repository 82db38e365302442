"""The tokenizer-training pass: bounded in text, and it reads past corrupt shards as the training stream does."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, tone, toy_sample, write_split
from trainer.config import Config, SourceConfig
from trainer.vocab import collect_tokenizer_texts

SR = 8000

PEAK = r"""
import resource, sys
from trainer.config import Config, SourceConfig
from trainer.model.text import train_tokenizer
from trainer.vocab import collect_tokenizer_texts

cfg = Config()
cfg.data.weak = [SourceConfig("huge", sys.argv[1])]
cfg.data.strong, cfg.data.strong_every = [], 0
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
texts = collect_tokenizer_texts(cfg)
train_tokenizer(texts, 2000, 32)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(max(len(t) for t in texts), (after - before) // 1024)
"""


def test_a_100_mb_caption_is_cut_before_the_tokenizer_sees_it(tmp_path):
    """One 100 MB caption took 22 GB of memory in the tokenizer pass; now it is cut to data.max_text_chars on reading."""
    words = ("a dog barks while rain falls on a tin roof " * 2_400_000)[:100_000_000]
    samples = [
        (toy_sample("huge", "train", SR, [words, "a short caption"], seconds=0.5), tone(0.5, SR)),
        (toy_sample("small", "train", SR, ["birds sing at dawn"], seconds=0.5), tone(0.5, SR)),
    ]
    split = write_split(tmp_path, "train", samples, SR)
    del words, samples
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(split)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    longest, grown_mb = map(int, proc.stdout.split())
    assert longest == Config().data.max_text_chars
    # the JSON member (100 MB) and its parsed text are in memory once each, the tokenizer sees 2000 characters
    assert grown_mb < 800, f"the tokenizer pass grew by {grown_mb} MB"


def test_the_sample_is_bounded_in_characters_over_sources(tmp_path):
    captions = [f"caption number {i} " + "word " * 200 for i in range(50)]  # about 1 kB each
    samples = [
        (toy_sample(f"c{i}", "train", SR, [c], seconds=0.5), tone(0.5, SR)) for i, c in enumerate(captions)
    ]
    cfg = Config()
    cfg.data.weak = [
        SourceConfig("a", str(write_split(tmp_path / "a", "train", samples, SR))),
        SourceConfig("b", str(write_split(tmp_path / "b", "train", samples, SR))),
    ]
    cfg.data.strong, cfg.data.strong_every = [], 0
    texts = collect_tokenizer_texts(cfg, max_chars=20_000)
    assert 0 < sum(len(t) for t in texts) <= 20_000
    assert any(t.startswith("caption number 0 ") for t in texts)  # both sources got their share
    assert len(texts) == 18  # 9 captions of ~1 kB fit in each source's 10 kB share
    assert len(collect_tokenizer_texts(cfg, limit=3)) == 6


def test_corrupt_shards_are_skipped_and_counted(tmp_path):
    """The tokenizer pass used to crash the run before step 1 with a raw TarError on a truncated or non-tar shard."""
    from shards.records import ReadStats

    samples = [
        (toy_sample(f"c{i}", "train", SR, [f"caption {i}"], seconds=0.5), tone(0.5, SR)) for i in range(6)
    ]
    split = write_split(tmp_path, "train", samples, SR, per_shard=3)
    (split / "toy-train-000000.tar").write_bytes(b"this is not a tar file" * 40)
    manifest = json.loads((split / "manifest.json").read_text())
    cfg = Config()
    cfg.data.weak = [SourceConfig("toy", str(split))]
    cfg.data.strong, cfg.data.strong_every = [], 0
    stats = ReadStats()
    texts = collect_tokenizer_texts(cfg, stats=stats)
    assert texts == ["caption 3", "caption 4", "caption 5"]
    assert stats == ReadStats(expected=manifest["num_samples"], read=3, skipped=3)
