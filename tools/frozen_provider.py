"""A provider frozen mid-answer (SIGSTOP: its TCP connections stay open), seen from a consumer.

Two providers of ``tiny`` (StandInBackends: instruments, not models) and a consumer C bootstrapped
from both, real ``garage-peer`` processes on 127.0.0.1. C streams a long answer pinned to P1; at
its first chunk P1 is frozen, and the clock starts. Measured from that moment, by watching from
outside the daemons:

- ``closed``: C holds no TCP connection to P1 any more (``ss``: no socket of C's whose other end
  is P1's);
- ``withdrawn``: C's ``/v1/models`` no longer lists P1 as a provider of ``tiny``;
- ``stream_ended``: the answer in flight ended (with an error event or a cut), rather than hanging;
- ``served_elsewhere``: a request sent once the routes were withdrawn was answered by P2 (its
  latency).

P1 is woken (SIGCONT) before everything stops; ``back`` is then the time until C lists it again.

``freeze_consumer_mid_answer`` freezes C instead: the time until P1, which was streaming to it,
holds no connection to it (its stream ended, its backend slot free). No routing notices a frozen
consumer, so only a connection-level check closes that connection.
Used by tests/integration/test_liveness_processes.py (asserts) and benchmarks/liveness.py (prints,
with liveness on and off).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.testkit import daemon_sockets, free_port, standin_process, wait_until

TOKEN_DELAY = 0.05
"""Seconds per streamed token: the pinned answer (LONG_ANSWER tokens) outlasts every bound measured."""
LONG_ANSWER = 2400


@dataclass
class Frozen:
    """Seconds from the SIGSTOP of P1 to each event; None if it did not happen within ``limit``."""

    closed: float | None = None
    withdrawn: float | None = None
    stream_ended: float | None = None
    stream_error: str = ""
    """How the answer in flight ended: the error event's message, or the exception that cut it."""
    served_elsewhere: float | None = None
    """Latency of a request sent after ``withdrawn`` (None if not withdrawn)."""
    served_by: str = ""
    back: float | None = None
    """From SIGCONT to C listing P1 again."""


def providers_of(peer: PeerProcess, model: str = "tiny") -> list[str]:
    try:
        data = httpx.get(peer.api_url + "/models", timeout=2).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return []
    return next((m.get("providers", []) for m in data if m["id"] == model), [])


def connected(a: PeerProcess, b: PeerProcess) -> bool:
    """Whether ``a`` holds an established TCP connection whose other end is ``b``'s."""
    pids = {a.process.pid, b.process.pid}
    return any(s.pid == a.process.pid for s in daemon_sockets(pids).values())


def _stream(consumer: PeerProcess, pinned: str, started: threading.Event, ended: dict) -> None:
    """Stream a long answer from ``pinned``; set ``started`` at the first chunk, note how it ended."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": LONG_ANSWER, "stream": True}
    try:
        with httpx.stream(
            "POST",
            consumer.api_url + "/chat/completions",
            json=body,
            headers={"x-garage-peer": pinned},
            timeout=httpx.Timeout(5, read=150),
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        ended["error"] = str(event["error"].get("message", event["error"]))[:200]
                        break
                    started.set()
                elif line == "data: [DONE]":
                    ended["error"] = "[DONE]"
                    break
    except httpx.HTTPError as exc:
        ended["error"] = f"{type(exc).__name__}: {exc}"[:200]
    ended["at"] = time.monotonic()
    started.set()


@contextlib.contextmanager
def three_peers(root: Path, *, liveness: bool = True):
    """P1, P2 serving ``tiny``, C bootstrapped from both; yields (P1, P2, C) once C lists both."""
    peers: list[PeerProcess] = []
    with contextlib.ExitStack() as stack:
        backends = [stack.enter_context(standin_process(free_port(), token_delay=TOKEN_DELAY)) for _ in range(2)]
        try:
            for i, backend in enumerate(backends):
                home = root / f"p{i + 1}"
                home.mkdir(parents=True, exist_ok=True)
                (home / "config.toml").write_text(f"liveness = {str(liveness).lower()}\n")
                peers.append(PeerProcess(home, peer_args(backends={"tiny": backend})).start())
            for p in peers:
                p.wait_ready()
            home = root / "c"
            home.mkdir(parents=True, exist_ok=True)
            (home / "config.toml").write_text(f"liveness = {str(liveness).lower()}\n")
            c = PeerProcess(home, peer_args(bootstrap=[p.addr for p in peers])).start()
            peers.append(c)
            c.wait_ready()
            both = {peers[0].peer_id, peers[1].peer_id}
            wait_until(lambda: both <= set(providers_of(c)), 30, "C listing both providers")
            yield peers[0], peers[1], c
        finally:
            for p in peers:
                if p.process is not None and p.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.process.pid, signal.SIGCONT)
            for p in reversed(peers):
                p.stop(timeout=15)


def _start_pinned_answer(c: PeerProcess, p1: PeerProcess) -> dict:
    """A long answer from P1 streaming to C; returns once its first chunk arrived (how it ends goes in the dict)."""
    started, ended = threading.Event(), {}
    threading.Thread(target=_stream, args=(c, p1.peer_id, started, ended), daemon=True).start()
    assert started.wait(30), "the pinned answer never started"
    assert "at" not in ended, f"the answer ended before the freeze: {ended}"
    return ended


def freeze_consumer_mid_answer(root: Path, *, liveness: bool = True, limit: float = 40.0) -> float | None:
    """Seconds from C's SIGSTOP until P1 holds no connection to C; None if not within ``limit``."""
    with three_peers(root, liveness=liveness) as (p1, _, c):
        _start_pinned_answer(c, p1)
        os.kill(c.process.pid, signal.SIGSTOP)
        try:
            return wait_until(lambda: not connected(p1, c), limit, "P1 closing its connection to C", 0.1)
        except AssertionError:
            return None
        finally:
            os.kill(c.process.pid, signal.SIGCONT)


def freeze_mid_answer(root: Path, *, liveness: bool = True, limit: float = 40.0) -> Frozen:
    """Run the scenario once; events later than ``limit`` seconds after the freeze stay None."""
    out = Frozen()
    with three_peers(root, liveness=liveness) as (p1, p2, c):
        ended = _start_pinned_answer(c, p1)
        os.kill(p1.process.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        deadline = t0 + limit
        while time.monotonic() < deadline and None in (out.closed, out.withdrawn, out.stream_ended):
            now = time.monotonic() - t0
            if out.closed is None and not connected(c, p1):
                out.closed = now
            if out.withdrawn is None and p1.peer_id not in providers_of(c):
                out.withdrawn = now
            if out.stream_ended is None and "at" in ended:
                out.stream_ended = ended["at"] - t0
                out.stream_error = ended.get("error", "")
            time.sleep(0.1)
        if out.withdrawn is not None:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            sent = time.monotonic()
            reply = httpx.post(c.api_url + "/chat/completions", json=body, timeout=30)
            if reply.status_code == 200:
                out.served_elsewhere = time.monotonic() - sent
                out.served_by = "P2" if reply.headers.get("x-garage-provider") == p2.peer_id else "?"
        os.kill(p1.process.pid, signal.SIGCONT)
        woken = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: p1.peer_id in providers_of(c), limit, "C listing P1 again")
            out.back = time.monotonic() - woken
    return out
