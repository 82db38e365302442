"""`tools.bench loader` streaming modes: the pipeline over a loopback HTTP server vs the same shards on disk.

Throughput itself is not asserted (a loaded CI machine); the rows, the ratio's definition and the arguments are.
"""

from __future__ import annotations

import argparse

import pytest

from tests.helpers import http_server
from tools.benchmarks import loader


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    loader.add_arguments(parser)
    base = ["--clips", "8", "--seconds", "1", "--sample-rate", "8000", "--batch-size", "4", "--passes", "2"]
    return parser.parse_args([*base, "--workers", "0", "1", "--repeat", "1", *argv])


def check_rows(result: dict, label: str) -> None:
    rows = {(r["loader"], r["workers"]): r for r in result["rows"]}
    assert set(rows) == {(f"sonotext pipeline, {n}", w) for n in ("local files", label) for w in (0, 1)}
    top_local, top_url = rows["sonotext pipeline, local files", 1], rows[f"sonotext pipeline, {label}", 1]
    assert result["ratio"] == pytest.approx(top_url["samples/s"] / top_local["samples/s"])
    assert result["ratio"] > 0 and result["cpu_ratio"] > 0
    assert all(r["samples/s"] > 0 for r in rows.values())


def test_serve_reads_the_generated_shards_over_loopback_http():
    check_rows(loader.run(parse("--serve")), "http (loopback)")


def test_url_against_its_local_copy(tmp_path):
    loader.make_data(tmp_path, 8, 1.0, 8000)
    with http_server(tmp_path) as server:
        url = f"{server.url}/shards"
        check_rows(loader.run(parse("--url", url, "--local", str(tmp_path / "shards"))), url)
    with pytest.raises(SystemExit, match="--url needs --local"):
        loader.run(parse("--url", url))
