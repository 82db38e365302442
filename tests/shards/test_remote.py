"""Shards streamed over the network: a real HTTP server on 127.0.0.1 (tools.serve, byte ranges), an S3 API (moto's
server, through s3fs) and the Hub's file API (through huggingface_hub's HfFileSystem), each against the same
shards read from disk; failed, stalled and refused reads are retried, then skipped (training) or fatal (evaluation).

Faults are injected by the server (tests.helpers.Faults): a connection dropped after N bytes, a response that
stalls until the test ends, a file whose every request fails. None of it depends on timing: a stall lasts
longer than any timeout, and backoffs are 0 s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import urllib.parse
from collections import Counter
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from shards.mixing import MixedStream
from shards.reader import iter_eval_batches
from shards.records import ShardReadError, iter_groups
from shards.relevance import load_relevance
from shards.remote import Missing, ReadFailed, ReadPolicy, open_stream, read_bytes
from shards.shardlist import ShardError, expand_urls, split_manifests
from tests.helpers import Faults, http_server
from tools.serve import ShardHandler, make_server, parse_range
from trainer.config import DataConfig, SourceConfig

SR = 8000
FAST = ReadPolicy(retries=3, timeout_s=30.0, backoff_s=0.0)
"""Retries without waiting; 30 s is only reached by a stall, which lasts until the test ends."""
STALL_TIMEOUT_S = 5.0
"""Read timeout where a test makes the server stall: long enough that a loaded machine never looks like a stall."""


def data_cfg(weak: str, strong: str, **kw) -> DataConfig:
    cfg = DataConfig(
        sample_rate=SR,
        clip_seconds=0.5,
        batch_size=4,
        num_workers=0,
        weak=[SourceConfig("wa", f"{weak}/wa", 1.0), SourceConfig("wb", f"{weak}/wb", 3.0)],
        strong=[SourceConfig("st", f"{strong}/st", 1.0)],
        strong_every=3,
        shuffle_buffer=8,
        min_region_overlap=0.5,
        retries=FAST.retries,
        timeout_s=FAST.timeout_s,
        retry_backoff_s=FAST.backoff_s,
    )
    return replace(cfg, **kw)


def take(stream, n: int) -> list[dict]:
    it = iter(stream)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def eval_batches(urls, **kw) -> list[dict]:
    return list(iter_eval_batches(urls, sample_rate=SR, batch_size=3, **kw))


def names(shards) -> list[str]:
    return [s.url.rsplit("/", 1)[-1] for s in shards]


_WRITES: list[list[str]] = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _WRITES:
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS:
            _WRITES[-1].append(str(path))


sys.addaudithook(_audit)


@contextmanager
def no_writes():
    """The files this process opens for writing inside the block (Python's audit hook sees every open)."""
    _WRITES.append([])
    try:
        yield _WRITES[-1]
    finally:
        _WRITES.pop()


# ---------------------------------------------------------------------------------------------------------------------
# The server itself
# ---------------------------------------------------------------------------------------------------------------------


def test_parse_range_hand_computed():
    assert parse_range(None, 100) is None
    assert parse_range("bytes=10-", 100) == (10, 99)
    assert parse_range("bytes=10-19", 100) == (10, 19)
    assert parse_range("bytes=90-200", 100) == (90, 99)
    assert parse_range("bytes=-30", 100) == (70, 99)
    assert parse_range("bytes=0-0,5-9", 100) is None  # several ranges: the whole file
    with pytest.raises(ValueError):
        parse_range("bytes=100-", 100)


def test_server_answers_ranges_and_refuses_paths_outside_its_folder(tmp_path):
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "a.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "secret.txt").write_text("no")
    server = make_server(tmp_path / "pub", handler=ShardHandler)
    try:
        with open_stream(f"{server.url}/a.bin") as f:
            assert f.read() == bytes(range(256)) * 4
        import urllib.request

        req = urllib.request.Request(f"{server.url}/a.bin", headers={"Range": "bytes=1020-"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert (r.status, r.headers["Content-Range"], r.read()) == (
                206,
                "bytes 1020-1023/1024",
                bytes(range(252, 256)),
            )
        for bad in ("/../secret.txt", "/%2e%2e/secret.txt", "/nothing.tar"):
            with pytest.raises(Missing, match="HTTP 404"):
                read_bytes(server.url + bad, FAST)
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------------------------
# urls -> shards
# ---------------------------------------------------------------------------------------------------------------------


def test_remote_urls_expand_like_local_ones(toy_data, tmp_path):
    (tmp_path / "plain").mkdir()
    for p in sorted((toy_data / "wa").glob("*.tar"))[:2]:
        (tmp_path / "plain" / p.name).write_bytes(p.read_bytes())
    with http_server(toy_data) as server, http_server(tmp_path) as bare:
        url = server.url
        local = expand_urls(str(toy_data / "wa"))
        remote = expand_urls(f"{url}/wa")  # the split folder: its manifest.json, fetched
        assert names(remote) == names(local) and [s.num_samples for s in remote] == [10] * 4
        assert remote[0].url == f"{url}/wa/wa-train-000000.tar"
        assert expand_urls(f"{url}/wa/") == remote
        pattern = expand_urls(f"{url}/wa/wa-train-{{000000..000003}}.tar")  # counts from the same manifest
        assert pattern == remote
        both = expand_urls([f"{url}/st", str(toy_data / "wb" / "wb-train-000000.tar")])
        assert len(both) == 4 and both[-1].num_samples == 10
        # a folder without a manifest: patterns still work (no counts); the folder itself needs one
        plain = expand_urls(f"{bare.url}/plain/wa-train-00000{{0,1}}.tar")
        assert [s.num_samples for s in plain] == [None, None]
        with pytest.raises(ShardError, match=r"no manifest\.json at .*/plain/manifest\.json"):
            expand_urls(f"{bare.url}/plain")
        with pytest.raises(ShardError, match=r"http\(s\) servers list no files"):
            expand_urls(f"{url}/wa/*.tar")
        with pytest.raises(ShardError, match="listed twice"):
            expand_urls([f"{url}/wa", f"{url}/wa/wa-train-000001.tar"])
        assert split_manifests([f"{url}/wa", f"{url}/st/st-train-000001.tar"]) == [
            f"{url}/wa/manifest.json",
            f"{url}/st/manifest.json",
        ]
        assert split_manifests(f"{bare.url}/plain/wa-train-000000.tar") == []
        # network schemes need no flag; pipe: still does
        with pytest.raises(ShardError, match="allow_pipe"):
            expand_urls(f"pipe:curl -s {url}/wa/wa-train-000000.tar")


def test_a_task_converted_split_is_read_by_its_manifests_names(toy_data, tmp_path, kit):
    """Shards named DATASET-SPLIT-TTTT-NNNNNN.tar (launch.convert) are listed by the manifest, not by a pattern."""
    folder = tmp_path / "tk" / "train"
    samples = kit.make_samples("tk", 10, SR)
    kit.write_tars(folder, samples[:6], 3, SR, prefix="tk-train-0000")
    kit.write_tars(folder, samples[6:], 3, SR, prefix="tk-train-0001")
    shards = sorted(folder.glob("*.tar"))
    manifest = {"dataset": "tk", "split": "train", "num_samples": 10, "shards": []}
    for p in shards:
        n = sum(1 for _ in iter_groups(str(p)))
        manifest["shards"].append({"name": p.name, "num_samples": n, "seconds": 0, "bytes": 0, "sha256": ""})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with http_server(tmp_path) as server:
        remote = expand_urls(f"{server.url}/tk/train")
        assert (
            names(remote)
            == [p.name for p in shards]
            == [
                "tk-train-0000-000000.tar",
                "tk-train-0000-000001.tar",
                "tk-train-0001-000000.tar",
                "tk-train-0001-000001.tar",
            ]
        )
        assert [s.num_samples for s in remote] == [3, 3, 3, 1]
        keys = [k for b in eval_batches(f"{server.url}/tk/train", num_workers=2) for k in b["keys"]]
        assert sorted(keys) == [f"tk-{i:04d}" for i in range(10)]


def test_relevance_judgements_come_from_the_remote_manifest(tmp_path, kit):
    folder = kit.write_tars(tmp_path / "ev", kit.make_samples("ev", 4, SR), 2, SR, prefix="ev-eval")
    manifest = json.loads((folder / "manifest.json").read_text())
    judged = {"a dog": ["ev-0000", "ev-0003"], "rain": ["ev-0001"]}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "relevance_keys": judged}))
    with http_server(tmp_path) as server:
        assert load_relevance(f"{server.url}/ev") == judged == load_relevance(str(folder))
        assert load_relevance(f"{server.url}/ev/ev-eval-000001.tar") == judged


# ---------------------------------------------------------------------------------------------------------------------
# One stream: resumed at the byte reached
# ---------------------------------------------------------------------------------------------------------------------


def test_dropped_connections_resume_at_the_byte_reached(toy_data):
    name = "wa-train-000000.tar"
    expected = (toy_data / "wa" / name).read_bytes()
    faults = Faults(cut={name: [1000, 5000, 0]})
    with http_server(toy_data, faults) as server, open_stream(f"{server.url}/wa/{name}", FAST) as f:
        got = b"".join(iter(lambda: f.read(700), b""))
    assert got == expected
    # the first GET from 0; each retry asks for exactly the rest (not the shard again)
    assert faults.ranges(name) == [None, "bytes=1000-", "bytes=6000-", "bytes=6000-"]


def test_a_stalled_read_times_out_and_resumes(toy_data):
    name = "wa-train-000001.tar"
    faults = Faults(stall={name: [4096]})  # 4096 bytes, then nothing until the server stops
    with http_server(toy_data, faults) as server:
        got = read_bytes(f"{server.url}/wa/{name}", replace(FAST, timeout_s=STALL_TIMEOUT_S))
    assert got == (toy_data / "wa" / name).read_bytes()
    assert faults.ranges(name) == [None, "bytes=4096-"]


def test_a_server_without_range_support_is_read_from_the_start(toy_data):
    name = "wa-train-000002.tar"
    faults = Faults(cut={name: [3000]}, ignore_range=True)
    with http_server(toy_data, faults) as server:
        got = read_bytes(f"{server.url}/wa/{name}", FAST)
    assert got == (toy_data / "wa" / name).read_bytes()
    assert faults.ranges(name) == [None, "bytes=3000-"]  # asked for the rest, got it all, dropped 3000 bytes


def test_retries_are_bounded_and_some_errors_are_final(toy_data):
    name = "wa-train-000003.tar"
    faults = Faults(fail={name})
    with http_server(toy_data, faults) as server:
        with pytest.raises(
            ReadFailed, match=rf"{re.escape(server.url)}/wa/{name}: read failed at byte 0 after 4 attempt"
        ):
            read_bytes(f"{server.url}/wa/{name}", FAST)
        assert len(faults.ranges(name)) == 1 + FAST.retries
        with pytest.raises(Missing, match=r"after 1 attempt.*HTTP 404"):
            read_bytes(f"{server.url}/wa/none.tar", FAST)


def test_a_shard_that_changes_between_attempts_is_not_stitched_together(tmp_path, toy_data):
    name = "wa-train-000000.tar"
    (tmp_path / name).write_bytes((toy_data / "wa" / name).read_bytes())

    def touch(_: str) -> None:
        st = os.stat(tmp_path / name)
        os.utime(tmp_path / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    faults = Faults(cut={name: [2048]}, after_cut=touch)
    with (
        http_server(tmp_path, faults) as server,
        pytest.raises(ReadFailed, match="changed while it was read"),
    ):
        read_bytes(f"{server.url}/{name}", FAST)


def test_a_dead_server_is_retried_then_given_up(toy_data):
    server = make_server(toy_data)
    url = f"{server.url}/wa/wa-train-000000.tar"
    server.shutdown()
    server.server_close()  # nothing listens there any more: connection refused
    with pytest.raises(ReadFailed, match=r"after 4 attempt\(s\): .*(Connection refused|URLError)"):
        read_bytes(url, FAST)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: the same batches as from disk; an unreadable shard stops it
# ---------------------------------------------------------------------------------------------------------------------


def test_evaluation_over_http_equals_disk_even_with_dropped_connections(toy_data):
    faults = Faults(cut={"st-train-000001.tar": [777, 20000], "wa-train-000002.tar": [512]})
    local = eval_batches([str(toy_data / "wa"), str(toy_data / "st")], num_workers=2)
    with http_server(toy_data, faults) as server:
        remote = eval_batches([f"{server.url}/wa", f"{server.url}/st"], num_workers=2, policy=FAST)
    assert_same_batches(local, remote)
    assert sum(len(b["keys"]) for b in remote) == 70
    assert faults.ranges("st-train-000001.tar") == [None, "bytes=777-", "bytes=20777-"]


def test_evaluation_stops_on_a_shard_it_cannot_read(toy_data):
    faults = Faults(fail={"wa-train-000002.tar"})
    with (
        http_server(toy_data, faults) as server,
        pytest.raises(ShardReadError, match=r"wa-train-000002\.tar"),
    ):
        eval_batches(f"{server.url}/wa", num_workers=2, policy=FAST)
    assert len(faults.ranges("wa-train-000002.tar")) == 1 + FAST.retries


# ---------------------------------------------------------------------------------------------------------------------
# Training: the same stream as from disk, exact resume; an unreadable shard is skipped and counted
# ---------------------------------------------------------------------------------------------------------------------


def test_training_stream_over_http_equals_disk_with_faults(toy_data):
    reference = take(MixedStream(data_cfg(str(toy_data), str(toy_data), num_workers=2), seed=3), 14)
    faults = Faults(
        cut={"wa-train-000000.tar": [900, 3000], "wb-train-000002.tar": [100], "st-train-000002.tar": [5000]},
        stall={"wb-train-000000.tar": [2000]},
    )
    with http_server(toy_data, faults) as server:
        cfg = data_cfg(server.url, server.url, num_workers=2, timeout_s=STALL_TIMEOUT_S)
        assert_same_batches(reference, take(MixedStream(cfg, seed=3), 14))
    assert not any(faults.cut.values()) and not any(faults.stall.values())  # every fault happened
    assert faults.ranges("wa-train-000000.tar")[:3] == [None, "bytes=900-", "bytes=3900-"]
    assert faults.ranges("wb-train-000000.tar")[:2] == [None, "bytes=2000-"]


def test_training_over_http_resumes_exactly(toy_data):
    with http_server(toy_data, Faults(cut={"wb-train-000003.tar": [1500]})) as server:
        cfg = data_cfg(server.url, server.url, num_workers=2)
        reference = take(MixedStream(cfg, seed=5), 30)
        first = MixedStream(cfg, seed=5)
        it = iter(first)
        for _ in range(22):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        it.close()
        resumed = MixedStream(cfg, seed=5)
        resumed.load_state_dict(state)  # refills shuffle buffers and reopens shards over http
        assert_same_batches(reference[22:], take(resumed, 8))


def test_training_skips_and_counts_an_unreadable_shard(toy_data, caplog):
    dead = "wb-train-000001.tar"
    faults = Faults(fail={dead})
    with http_server(toy_data, faults) as server:
        cfg = data_cfg(server.url, str(toy_data), num_workers=0)
        stream = MixedStream(cfg, seed=0)
        with caplog.at_level(logging.WARNING):
            batches = take(stream, 40)
        keys = Counter(k for b in batches for k in b["keys"])
        assert not any(f"wb-{i:04d}" in keys for i in range(10, 20))  # the dead shard's samples
        assert sum(n for k, n in keys.items() if k.startswith("wb-")) > 0  # its source goes on
        assert stream.unreadable_shards >= 1 and "skipping corrupt data" not in caplog.text
        assert len(faults.ranges(dead)) == stream.unreadable_shards * (1 + FAST.retries)
        assert f"skipping unreadable shard: {server.url}/wb/{dead}: read failed at byte 0" in caplog.text
        resumed = MixedStream(cfg, seed=0)
        resumed.load_state_dict(stream.state_dict())
        assert resumed.unreadable_shards == stream.unreadable_shards


def test_training_stops_when_none_of_a_workers_shards_can_be_read(toy_data):
    faults = Faults(fail={f"st-train-{i:06d}.tar" for i in range(3)})
    with http_server(toy_data, faults) as server:
        cfg = data_cfg(str(toy_data), server.url, num_workers=0, retries=0)
        with pytest.raises(ShardError, match=r"source st: worker 0 could read none of its 3 shard"):
            take(MixedStream(cfg, seed=0), 6)


# ---------------------------------------------------------------------------------------------------------------------
# Object stores: S3 (moto's server, a real S3 HTTP API on loopback, through s3fs) and the Hugging Face hub
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch, toy_data):
    """A bucket on moto's S3 server (127.0.0.1) holding toy_data under shards/; s3fs finds it via AWS_ENDPOINT_URL."""
    moto_server = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')"
    )
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("sonotext-test")
    fs.put(f"{toy_data}/", "sonotext-test/shards/", recursive=True)
    try:
        yield "s3://sonotext-test/shards"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_s3_through_s3fs_equals_disk(s3, toy_data):
    shards = expand_urls(f"{s3}/wa")
    assert names(shards) == names(expand_urls(str(toy_data / "wa"))) and shards[0].num_samples == 10
    assert shards == expand_urls(f"{s3}/wa/wa-train-*.tar")  # stores list: globs work
    assert_same_batches(
        eval_batches(str(toy_data / "st"), num_workers=2),
        eval_batches(f"{s3}/st", num_workers=2, policy=FAST),
    )
    reference = take(MixedStream(data_cfg(str(toy_data), str(toy_data), num_workers=2), seed=1), 9)
    assert_same_batches(reference, take(MixedStream(data_cfg(s3, s3, num_workers=2), seed=1), 9))
    with pytest.raises(
        Missing, match=r"s3://sonotext-test/shards/wa/none\.tar: read failed .*after 1 attempt"
    ):
        read_bytes(f"{s3}/wa/none.tar", FAST)


class FakeHubHandler(ShardHandler):
    """The three requests of the Hub's HTTP API that HfFileSystem makes to read a public dataset repo, answered
    from ROOT/ORG/NAME/: repo info, a folder's tree, and the file (`resolve`, byte ranges). The hub itself is not
    reachable from tests; this exercises huggingface_hub's real client code against real HTTP."""

    def serve(self, body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if found := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            return self._json({"id": found.group(1), "sha": "0" * 40, "siblings": []}, body)
        if found := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/[^/]+/?(.*)", path):
            repo = self.server.root / found.group(1)
            folder = repo / urllib.parse.unquote(found.group(2))
            if not folder.is_dir():
                return self.send_error(404)
            entries = [
                {"type": "directory", "path": str(p.relative_to(repo)), "oid": "0" * 40}
                if p.is_dir()
                else {
                    "type": "file",
                    "path": str(p.relative_to(repo)),
                    "size": p.stat().st_size,
                    "oid": "0" * 40,
                }
                for p in sorted(folder.iterdir())
            ]
            return self._json(entries, body)
        if found := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.*)", path):
            self.path = f"/{found.group(1)}/{found.group(2)}"
            return super().serve(body)
        self.send_error(404)

    def _json(self, obj: object, body: bool) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def test_hf_datasets_through_hffilesystem_equal_disk(tmp_path, toy_data, monkeypatch):
    import fsspec

    shutil.copytree(toy_data, tmp_path / "sonotext" / "toy" / "shards")
    server = make_server(tmp_path, handler=FakeHubHandler)
    monkeypatch.setitem(fsspec.config.conf, "hf", {"endpoint": server.url})
    try:
        url = "hf://datasets/sonotext/toy/shards"
        assert names(expand_urls(f"{url}/st")) == names(expand_urls(str(toy_data / "st")))
        assert [s.num_samples for s in expand_urls(f"{url}/st/st-train-*.tar")] == [10, 10, 10]
        with no_writes() as writes:  # ranged reads into memory; nothing goes to the hub cache
            remote = eval_batches(f"{url}/wa", policy=FAST)
        assert writes == []
        assert_same_batches(eval_batches(str(toy_data / "wa")), remote)
        assert_same_batches(
            eval_batches(str(toy_data / "st"), num_workers=2),
            eval_batches(f"{url}/st", num_workers=2, policy=FAST),
        )
        reference = take(MixedStream(data_cfg(str(toy_data), str(toy_data), num_workers=2), seed=2), 6)
        assert_same_batches(reference, take(MixedStream(data_cfg(url, url, num_workers=2), seed=2), 6))
    finally:
        server.shutdown()
        server.server_close()


def test_store_urls_without_their_client_name_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_clients(name, *args, **kwargs):
        if name.split(".")[0] in ("s3fs", "gcsfs"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_clients)
    with pytest.raises(ShardError, match=r"s3:// urls need s3fs: pip install 'sonotext\[s3\]'"):
        expand_urls("s3://bucket/shards/x/train")
    with pytest.raises(ShardError, match=r"gs:// urls need gcsfs: pip install 'sonotext\[gcs\]'"):
        expand_urls("gs://bucket/shards/x/train/x-train-{000000..000003}.tar")
    with pytest.raises(ShardError, match="unsupported url scheme 'ftp'"):
        expand_urls("ftp://host/x.tar")
    with pytest.raises(ShardError, match="chained fsspec urls"):
        expand_urls("simplecache::s3://bucket/x.tar")


def test_nothing_is_written_while_streaming(toy_data):
    """No local copy or cache of a shard: streaming over http opens no file for writing (audit hook on every open)."""
    with http_server(toy_data) as server, no_writes() as writes:
        batches = eval_batches(f"{server.url}/wa", policy=FAST)
        take(MixedStream(data_cfg(server.url, server.url), seed=0), 4)
    assert sum(len(b["keys"]) for b in batches) == 40
    assert writes == []
