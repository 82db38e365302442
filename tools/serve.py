"""Serve a folder of shards over HTTP with byte ranges, to try streaming (`urls: http://...`) without a store.

    python -m tools.serve data/shards --port 8000      # then urls: http://127.0.0.1:8000/clotho/development

GET and HEAD of the files under the folder, one byte range per request (`Range: bytes=A-B`, `A-`, `-N`) answered
206 with Content-Range, with Content-Length, ETag and Last-Modified, one thread per connection. Python's own
`python -m http.server` ignores Range, so a read resumed after a failure would start the shard over. Not a
production server: read-only, no listing, no TLS, no authentication, 127.0.0.1 unless --host says otherwise.
Tests and `tools.bench loader --serve` run it in a thread (`make_server`).
"""

from __future__ import annotations

import argparse
import email.utils
import re
import sys
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from trainer.cli import program_name

CHUNK = 1 << 20
TYPES = {".tar": "application/x-tar", ".json": "application/json", ".csv": "text/csv"}


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range of a `size`-byte file; None: the whole file.

    ValueError for a range that does not fit the file (answered 416). Multi-range and malformed headers are
    ignored (None), as RFC 9110 allows.
    """
    found = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not found or found.group(1) == found.group(2) == "":
        return None
    first, last = found.group(1), found.group(2)
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            raise ValueError("empty suffix range")
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(f"range {start}-{last} outside a {size}-byte file")
    return start, end


class ShardHandler(BaseHTTPRequestHandler):
    """GET/HEAD of files under `server.root`, with byte ranges; nothing outside the root is served."""

    protocol_version = "HTTP/1.1"
    server: ShardServer

    def do_GET(self) -> None:
        self.serve(body=True)

    def do_HEAD(self) -> None:
        self.serve(body=False)

    def serve(self, body: bool) -> None:
        path = self.resolve()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        stat = path.stat()
        size = stat.st_size
        try:
            wanted = parse_range(self.headers.get("Range"), size)
        except ValueError:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = wanted if wanted is not None else (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted is not None else HTTPStatus.OK)
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{size:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        if wanted is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if body:
            self.send_body(path, first, last + 1 - first)

    def send_body(self, path: Path, offset: int, length: int) -> None:
        """Write `length` bytes of `path` from `offset` to the client."""
        with path.open("rb") as f:
            f.seek(offset)
            while length > 0:
                chunk = f.read(min(length, CHUNK))
                if not chunk:
                    break
                self.wfile.write(chunk)
                length -= len(chunk)

    def resolve(self) -> Path | None:
        """The file a request names, if it is a file under the root (no '..', no links out of it)."""
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        root = self.server.root
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def log_message(self, format: str, *args: object) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class ShardServer(ThreadingHTTPServer):
    """A threading HTTP server of one folder (`root`)."""

    daemon_threads = True

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: type[ShardHandler] = ShardHandler,
        verbose: bool = False,
    ):
        self.root = Path(root).resolve()
        self.verbose = verbose
        super().__init__((host, port), handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(
    root: Path, host: str = "127.0.0.1", port: int = 0, handler: type[ShardHandler] = ShardHandler
) -> ShardServer:
    """A server of `root` (port 0: a free one) serving in a daemon thread; `server.url`; stop with shutdown()."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    server = ShardServer(root, host, port, handler)
    threading.Thread(target=server.serve_forever, name="shard-server", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("tools.serve"), description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder to serve (e.g. the --out of tools.convert)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one; default %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: not a folder", file=sys.stderr)
        return 2
    try:
        server = ShardServer(args.root, args.host, args.port, verbose=args.verbose)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"serving {server.root} at {server.url}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
