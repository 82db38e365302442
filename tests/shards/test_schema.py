"""Sample/Region format: key rules, JSON round-trip, validation messages."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from shards.schema import KeyAllocator, Region, Sample, SchemaError, make_key, stable_id, validate_sample


def sample(**kw):
    base = dict(
        key="clotho-Santa_Motor",
        dataset="clotho",
        split="development",
        source_id="Santa Motor.wav",
        duration=21.4,
        sample_rate=32000,
        captions=["A machine whines."],
        strong=[Region("a motor whines", 0.0, 6.2)],
        meta={"license": "CC-BY 4.0"},
    )
    base.update(kw)
    return Sample(**base)


def test_make_key_examples():
    assert make_key("clotho", "Santa Motor.wav") == "clotho-Santa_Motor"
    assert make_key("audioset-strong", "Yb0RFKhbpFJA_30000") == "audioset-strong-Yb0RFKhbpFJA_30000"
    assert make_key("clotho", "a, b.c.wav") == "clotho-a_b_c"
    assert make_key("clotho", "Café Olé.wav") == "clotho-Cafe_Ole"
    k1, k2 = make_key("clotho", "日本.wav"), make_key("clotho", "中国.wav")
    assert k1 != k2 and "." not in k1
    long = make_key("x", "a" * 500)
    assert len(long) <= 160


def test_key_allocator_keeps_keys_unique():
    alloc = KeyAllocator()
    a = alloc("clotho", "a b.wav")
    b = alloc("clotho", "a_b.wav")
    assert a == "clotho-a_b" and b != a and b.startswith("clotho-a_b_")
    assert alloc("clotho", "a b.wav") == a


def test_json_round_trip():
    s = sample()
    back = Sample.from_json(s.to_json_bytes())
    assert back == s


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"key": "bad.key"}, "key"),
        ({"duration": math.nan}, "duration"),
        ({"duration": 0}, "duration"),
        ({"captions": [""]}, r"captions\[0\]"),
        ({"strong": [Region("x", 3.0, 2.0)]}, r"strong\[0\]"),
        ({"strong": [Region("x", -1.0, 2.0)]}, r"strong\[0\]"),
        ({"strong": [Region("x", 1.0, 30.0)]}, r"strong\[0\]\.offset"),
        ({"strong": [Region(" ", 1.0, 2.0)]}, r"strong\[0\]\.text"),
        ({"strong": [Region("x", 1.0, math.inf)]}, r"strong\[0\]"),
        ({"captions": [], "strong": []}, "neither"),
        ({"sample_rate": 0}, "sample_rate"),
    ],
)
def test_validation_names_sample_and_field(kw, field):
    with pytest.raises(SchemaError, match=rf"sample .*{field}"):
        validate_sample(sample(**kw))


def test_from_json_rejects_garbage():
    with pytest.raises(SchemaError, match="not valid JSON"):
        Sample.from_json(b"{nope")
    with pytest.raises(SchemaError, match="missing field 'duration'"):
        Sample.from_json({"key": "a", "dataset": "d", "split": "s", "source_id": "a", "sample_rate": 1})


def test_stable_id_is_the_same_in_another_process():
    code = "from shards.schema import stable_id; print(stable_id('toy-0001'), stable_id('a dog barks'))"
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [str(stable_id("toy-0001")), str(stable_id("a dog barks"))]
    assert 0 <= stable_id("toy-0001") < 2**63 and stable_id("toy-0001") != stable_id("toy-0002")
