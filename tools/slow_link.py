"""SlowLink: an HTTP proxy in front of a backend that paces its server-sent events.

A test instrument, not product code. The tiny model writes hundreds of tokens in well under a
second, so a test that kills a provider "mid-stream" races the answer's end; behind a SlowLink
each event of a stream waits ``delay`` seconds, and ``trip(n, action)`` runs ``action`` (kill the
provider) when the n-th event of a stream has gone through, so the cut lands mid-answer on
purpose. Everything else (GET /metrics, /v1/models, error bodies) passes through unchanged.

    with slow_link("http://127.0.0.1:8123", delay=0.01) as link:
        backend = link.url + "/v1"
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_HEADERS = {"connection", "transfer-encoding", "content-length", "keep-alive", "content-encoding"}


class SlowLink:
    """The running proxy: its URL, how many stream events it passed, and an optional trip."""

    def __init__(self, target: str, delay: float) -> None:
        self.target = target.rstrip("/")
        self.delay = delay
        self.url = ""
        self.events = 0
        """Stream events passed through so far (all streams)."""
        self._trip: tuple[int, Callable[[], None]] | None = None
        self._lock = threading.Lock()

    def trip(self, after_events: int, action: Callable[[], None]) -> None:
        """Run ``action`` once, when ``after_events`` more stream events have passed."""
        with self._lock:
            self._trip = (self.events + after_events, action)

    def disarm(self) -> None:
        """Forget the trip, if any."""
        with self._lock:
            self._trip = None

    def passed(self) -> None:
        with self._lock:
            self.events += 1
            action = None
            if self._trip is not None and self.events >= self._trip[0]:
                action, self._trip = self._trip[1], None
        if action is not None:
            action()


def _handler(link: SlowLink, client: httpx.Client) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no chunking to do

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _proxy(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
            try:
                with client.stream(self.command, link.target + self.path, content=body, headers=headers) as r:
                    self.send_response(r.status_code)
                    for k, v in r.headers.items():
                        if k.lower() not in HOP_HEADERS:
                            self.send_header(k, v)
                    self.send_header("connection", "close")
                    self.end_headers()
                    if "text/event-stream" not in r.headers.get("content-type", ""):
                        self.wfile.write(r.read())
                        return
                    for line in r.iter_lines():
                        self.wfile.write(line.encode() + b"\n")
                        if not line:
                            self.wfile.flush()
                            link.passed()
                            time.sleep(link.delay)
            except (BrokenPipeError, ConnectionResetError, httpx.HTTPError):
                pass  # the provider went away (killed): its request ends here

        do_GET = _proxy
        do_POST = _proxy

    return Handler


@contextlib.contextmanager
def slow_link(target: str, delay: float = 0.01, host: str = "127.0.0.1") -> Iterator[SlowLink]:
    """A SlowLink to ``target`` (the backend's origin, with or without ``/v1``) on a free port."""
    link = SlowLink(target.removesuffix("/v1"), delay)
    with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
        server = ThreadingHTTPServer((host, 0), _handler(link, client))
        server.daemon_threads = True
        link.url = f"http://{host}:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield link
        finally:
            server.shutdown()
            server.server_close()
