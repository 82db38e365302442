"""Shard urls as byte streams: local files, `pipe:` commands, http(s) servers and object stores, with retries.

    with open_stream("https://host/shards/clotho/development/clotho-development-000000.tar", policy) as f:
        header = f.read(512)

- a local path (or file://): the file itself.
- `pipe:CMD`: the command's stdout (webdataset's gopen; shards.shardlist accepts it only with data.allow_pipe).
  Not retried here: put retries into the command (`curl --retry 5 ...`).
- http:// and https://: a GET per attempt (the standard library's urllib; proxies from the usual environment
  variables). A read that fails, or stalls for `timeout_s`, is retried with `Range: bytes=OFFSET-` from the byte
  already consumed; a server that ignores Range is read again from the start and the bytes already consumed are
  dropped.
- s3://, gs://, hf:// (STORES): the store's fsspec client (s3fs, gcsfs, huggingface_hub's HfFileSystem) with its
  own credentials, endpoint and timeouts (environment, ~/.aws, gcloud, HF_TOKEN, FSSPEC_S3_* ...). A failed read
  opens the object again and seeks to the byte already consumed (ranged GETs).

A stream is retried at most `policy.retries` times in all, waiting `backoff_s`, then twice as long each time (at
most 30 s, with jitter). An error no retry can fix (404, 401/403, the object changed between attempts) is final at
once. Then ReadFailed names the url, the byte offset, the attempts and the cause: shards.records turns it into
ShardReadError, which training skips and counts and evaluation does not accept.

Nothing is written to disk (no local copy or cache of a shard) and nothing is decoded here: bytes only.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

log = logging.getLogger(__name__)

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
HTTP = ("http", "https")
STORES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "hf": None}
"""fsspec protocols read through their store's client -> the setup.cfg extra that installs it (None: a dependency)."""
MAX_BACKOFF_S = 30.0
STORE_BLOCK = 8 << 20
"""Bytes per ranged GET of an object-store read (fsspec read-ahead block)."""
READ_CHUNK = 1 << 20


class ReadFailed(OSError):
    """A url whose read failed after every retry, or with an error no retry fixes; names url, offset and cause."""

    def __init__(self, message: str, url: str = "", offset: int = 0, attempts: int = 0) -> None:
        super().__init__(message)
        self.url, self.offset, self.attempts = url, offset, attempts

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Missing(ReadFailed, FileNotFoundError):
    """The url does not exist (HTTP 404/410, no such key)."""


class Denied(ReadFailed, PermissionError):
    """The server refuses the url (HTTP 401/403, access denied)."""


class _Final(OSError):
    """An error of one attempt that another attempt cannot fix."""


class _Body(Protocol):
    def read(self, n: int = -1) -> bytes: ...

    def close(self) -> None: ...


Opener = Callable[[str, int, float], tuple[_Body, int, int | None, str | None]]
"""(url, offset, timeout_s) -> (body, offset the body starts at, object size or None, version tag or None)."""


@dataclass(frozen=True)
class ReadPolicy:
    """How network reads recover (data.retries, data.timeout_s, data.retry_backoff_s)."""

    retries: int = 5
    timeout_s: float = 60.0
    backoff_s: float = 1.0

    @classmethod
    def of(cls, settings: Any) -> ReadPolicy:
        """The policy of a data config (anything with retries, timeout_s and retry_backoff_s)."""
        return cls(int(settings.retries), float(settings.timeout_s), float(settings.retry_backoff_s))

    def delay(self, failure: int, rng: random.Random) -> float:
        """Seconds before retry number `failure` (1, 2, ...): backoff_s * 2**(failure-1), at most 30 s, times [0.5, 1)."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** (failure - 1)) * (0.5 + 0.5 * rng.random())


def scheme(url: str) -> str | None:
    """The lower-case url scheme (`https`, `s3`, ...); None for a local path or a `pipe:` command."""
    match = SCHEME.match(url)
    return match.group(1).lower() if match else None


def is_remote(url: str) -> bool:
    """Whether `url` is read over the network (http(s) or an object store)."""
    return scheme(url) not in (None, "file")


def local_path(url: str) -> str:
    """The path of a local path or file:// url."""
    return url[len("file://") :] if scheme(url) == "file" else url


def check_url(url: str) -> None:
    """ValueError unless `url` is a local path, file://, pipe:, http(s) or a supported store (s3, gs, hf)."""
    if not url.startswith("pipe:") and "://" in url and "::" in url.split("://", 1)[0]:
        raise ValueError(f"{url}: chained fsspec urls (e.g. simplecache::) copy shards to disk; not accepted")
    name = scheme(url)
    if name is None or name == "file" or name in HTTP:
        return
    if name not in STORES:
        raise ValueError(
            f"{url}: unsupported url scheme {name!r}; use a local path, http(s)://, "
            f"{', '.join(f'{s}://' for s in STORES)}, or 'pipe:COMMAND' with data.allow_pipe=true"
        )


def open_stream(url: str, policy: ReadPolicy | None = None) -> BinaryIO:
    """A readable byte stream of `url` (see the module doc); close it when done."""
    check_url(url)
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    name = scheme(url)
    if name is None or name == "file":
        return open(local_path(url), "rb")
    opener = _open_http if name in HTTP else _open_store
    return RetryingStream(url, opener, policy or ReadPolicy())  # type: ignore[return-value]


def read_bytes(url: str, policy: ReadPolicy | None = None) -> bytes:
    """The whole content of a (small) file or url, e.g. a manifest.json. Missing: FileNotFoundError."""
    with open_stream(url, policy) as f:
        return f.read()


def parent_url(url: str) -> str:
    """The folder of a shard url or path: everything before the last '/' of its path (a query is dropped)."""
    if not is_remote(url):
        return str(Path(local_path(url)).parent)
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rsplit("/", 1)[0], "", ""))


def url_name(url: str) -> str:
    """The file name of a shard url or path (the last path component, unquoted)."""
    if not is_remote(url):
        return Path(local_path(url)).name
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def join_url(folder: str, name: str) -> str:
    """folder/name for a remote folder (the name quoted for http(s))."""
    return f"{folder.rstrip('/')}/{urllib.parse.quote(name) if scheme(folder) in HTTP else name}"


def store_glob(pattern: str) -> list[str]:
    """The objects of a store matching a glob (`s3://bucket/x/x-*.tar`), as full urls, sorted."""
    fs, path = filesystem(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path) of a store url; ImportError naming the extra to install when its client is missing."""
    name = scheme(url)
    extra = STORES.get(name or "")
    if extra == "s3":
        try:
            import s3fs  # noqa: F401
        except ImportError:
            raise ImportError(f"{url}: s3:// urls need s3fs: pip install 'sonotext[s3]'") from None
    elif extra == "gcs":
        try:
            import gcsfs  # noqa: F401
        except ImportError:
            raise ImportError(f"{url}: gs:// urls need gcsfs: pip install 'sonotext[gcs]'") from None
    elif name == "hf":
        import huggingface_hub  # noqa: F401  (its HfFileSystem serves hf://)
    import fsspec

    return fsspec.core.url_to_fs(url)


# ---------------------------------------------------------------------------------------------------------------------
# A stream that survives failed and stalled reads
# ---------------------------------------------------------------------------------------------------------------------


class RetryingStream:
    """A read-only stream of one remote object; each failed attempt reopens it at the byte already consumed."""

    def __init__(self, url: str, opener: Opener, policy: ReadPolicy) -> None:
        self.url, self.opener, self.policy = url, opener, policy
        self.offset = 0
        self.failures = 0
        self.body: _Body | None = None
        self.size: int | None = None
        self.tag: str | None = None
        self.opened = False
        self.rng = random.Random()

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left for n < 0); fewer only at the end of the object."""
        parts: list[bytes] = []
        got = 0
        while n < 0 or got < n:
            if self.body is None and self.size is not None and self.offset >= self.size:
                break  # everything was read before the last failure
            try:
                if self.body is None:
                    self._open()
                assert self.body is not None
                # read1: whatever has arrived, so bytes received before a failure count as consumed
                read = getattr(self.body, "read1", None) or self.body.read
                chunk = read(min(n - got, READ_CHUNK) if n >= 0 else READ_CHUNK)
                if not chunk and self.size is not None and self.offset < self.size:
                    raise ConnectionError(f"connection closed at byte {self.offset} of {self.size}")
            except (ReadFailed, ImportError):  # (a store's client not installed: no retry helps)
                raise
            except Exception as e:
                self._failed(e)
                continue
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
            self.offset += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _open(self) -> None:
        body, start, size, tag = self.opener(self.url, self.offset, self.policy.timeout_s)
        self.body = body
        if not self.opened:
            self.size, self.tag, self.opened = size, tag, True
        elif (size, tag) != (self.size, self.tag):
            raise _Final(
                f"the object changed while it was read (size {self.size} -> {size}, version {self.tag} -> {tag})"
            )
        if start > self.offset:
            raise _Final(f"the server answered from byte {start}, asked for byte {self.offset}")
        left = self.offset - start  # a server without Range support: drop what was consumed before
        while left > 0:
            chunk = body.read(min(left, READ_CHUNK))
            if not chunk:
                raise ConnectionError(
                    f"connection closed at byte {self.offset - left} while skipping to {self.offset}"
                )
            left -= len(chunk)

    def _failed(self, error: Exception) -> None:
        self._close_body()
        self.failures += 1
        error = _classified(error)
        final = isinstance(error, (_Final, FileNotFoundError, PermissionError, IsADirectoryError))
        cause = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if final or self.failures > self.policy.retries:
            kind = Missing if isinstance(error, FileNotFoundError) else ReadFailed
            kind = Denied if isinstance(error, PermissionError) else kind
            raise kind(
                f"{self.url}: read failed at byte {self.offset} after {self.failures} attempt(s): {cause}",
                self.url,
                self.offset,
                self.failures,
            ) from error
        wait = self.policy.delay(self.failures, self.rng)
        log.warning(
            "%s: read failed at byte %d (%s); retry %d of %d in %.1f s",
            self.url,
            self.offset,
            cause,
            self.failures,
            self.policy.retries,
            wait,
        )
        time.sleep(wait)

    def _close_body(self) -> None:
        body, self.body = self.body, None
        if body is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; dropped either way
                body.close()

    def close(self) -> None:
        self._close_body()

    def __enter__(self) -> RetryingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _classified(error: Exception) -> Exception:
    """An HTTP error of a store's client (it carries `.response.status_code`) as the error of that status."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if not isinstance(status, int) or isinstance(error, OSError):
        return error
    what = f"{type(error).__name__}: HTTP {status}"
    if status in (404, 410):
        return FileNotFoundError(what)
    if status in (401, 403):
        return PermissionError(what)
    if status in (400, 405, 416, 501):
        return _Final(what)
    return error


def _open_http(url: str, offset: int, timeout: float) -> tuple[_Body, int, int | None, str | None]:
    headers = {"User-Agent": "sonotext", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        what = f"HTTP {e.code} {e.reason}"
        if e.code in (404, 410):
            raise FileNotFoundError(what) from None
        if e.code in (401, 403):
            raise PermissionError(what) from None
        if e.code in (400, 405, 416, 501):
            raise _Final(what) from None
        raise ConnectionError(what) from None  # 5xx, 429, 408: worth another attempt
    if response.status == 206:
        found = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not found:
            response.close()
            raise _Final("HTTP 206 without a valid Content-Range")
        start, size = int(found.group(1)), None if found.group(2) == "*" else int(found.group(2))
    else:
        length = response.headers.get("Content-Length")
        start, size = 0, int(length) if length and length.isdigit() else None
    return response, start, size, response.headers.get("ETag") or response.headers.get("Last-Modified")


def _open_store(url: str, offset: int, timeout: float) -> tuple[_Body, int, int | None, str | None]:
    fs, path = filesystem(url)
    f = fs.open(path, "rb", block_size=STORE_BLOCK, cache_type="readahead")
    try:
        if offset:
            f.seek(offset)
    except BaseException:
        f.close()
        raise
    details = getattr(f, "details", None) or {}
    tag = next(
        (str(details[k]) for k in ("ETag", "etag", "md5Hash", "blob_id", "oid") if details.get(k)), None
    )
    return f, offset, getattr(f, "size", None), tag
