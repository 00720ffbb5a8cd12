"""A provider frozen mid-answer (SIGSTOP: its TCP connections stay open), or its cable pulled
(iptables DROP of its port), seen from a consumer.

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

P1 is then woken (SIGCONT) or plugged back in; ``back`` is the time until C lists it again.

``freeze_consumer_mid_answer`` freezes C instead: the time until P1, which was streaming to it,
holds no connection to it (its stream ended, its backend slot free). No routing notices a frozen
consumer, so only a connection-level check closes that connection.
Used by tests/integration/test_liveness_processes.py (asserts) and benchmarks/liveness.py (prints,
with liveness on and off).

The cable pull drops every packet to or from P1's port (its listening port, which its dials leave
from too) on the loopback, so it runs only inside a network namespace made for it:
``run_in_netns`` runs ``python -m tools.frozen_provider --cut drop`` in one (tools/netns.py) and
reads its JSON; the module refuses to touch the host's own firewall.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.netns import private_loopback, sh
from tools.testkit import REPO, daemon_sockets, free_port, standin_process, wait_until

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
    """From the end of the cut (SIGCONT, the rules deleted) to C listing P1 again."""


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


NETNS = "GARAGE_FROZEN_PROVIDER_NETNS"
"""Set by ``run_in_netns`` to the name of the namespace it made for the scenario."""


def in_own_netns() -> bool:
    """Whether this process runs in the namespace ``run_in_netns`` made for it."""
    name = os.environ.get(NETNS)
    return bool(name) and sh("ip", "netns", "identify", str(os.getpid())).strip() == name


@contextlib.contextmanager
def sigstopped(peer: PeerProcess) -> Iterator[None]:
    """``peer`` frozen: its process stops, its kernel keeps its TCP connections open and ACKing."""
    os.kill(peer.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(peer.process.pid, signal.SIGCONT)


@contextlib.contextmanager
def cable_pulled(peer: PeerProcess) -> Iterator[None]:
    """Every packet to or from ``peer``'s port dropped: nothing comes back, not even a RST."""
    if not in_own_netns():
        raise RuntimeError("a cable pull changes the firewall: only inside a namespace made for it (run_in_netns)")
    port = peer.addr.split("/tcp/")[1].split("/")[0]
    rules = [["INPUT", "-p", "tcp", side, port, "-j", "DROP"] for side in ("--dport", "--sport")]
    for rule in rules:
        sh("iptables", "-A", *rule)
    try:
        yield
    finally:
        for rule in rules:
            sh("iptables", "-D", *rule)


def freeze_consumer_mid_answer(root: Path, *, liveness: bool = True, limit: float = 40.0) -> float | None:
    """Seconds from C's SIGSTOP until P1 holds no connection to C; None if not within ``limit``."""
    with three_peers(root, liveness=liveness) as (p1, _, c):
        _start_pinned_answer(c, p1)
        with sigstopped(c), contextlib.suppress(AssertionError):
            return wait_until(lambda: not connected(p1, c), limit, "P1 closing its connection to C", 0.1)
    return None


CUTS: dict[str, Callable[[PeerProcess], contextlib.AbstractContextManager[None]]] = {
    "sigstop": sigstopped,
    "drop": cable_pulled,
}


def freeze_mid_answer(root: Path, *, liveness: bool = True, limit: float = 40.0, cut: str = "sigstop") -> Frozen:
    """Run the scenario once, P1 cut off by ``cut`` (CUTS); events later than ``limit`` seconds after
    the cut stay None."""
    out = Frozen()
    with three_peers(root, liveness=liveness) as (p1, p2, c):
        ended = _start_pinned_answer(c, p1)
        with CUTS[cut](p1):
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
        woken = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_until(lambda: p1.peer_id in providers_of(c), limit, "C listing P1 again")
            out.back = time.monotonic() - woken
    return out


def run_in_netns(*, liveness: bool = True, limit: float = 40.0, cut: str = "drop") -> Frozen:
    """``freeze_mid_answer`` in a network namespace with only a loopback, made for this run (root)."""
    name = f"gplive{os.getpid()}"
    with private_loopback(name) as host:
        flags = ["--cut", cut, "--limit", str(limit), *([] if liveness else ["--off"])]
        done = subprocess.run(
            [*host.exec_prefix(), sys.executable, "-m", "tools.frozen_provider", *flags],
            cwd=REPO,
            env=dict(os.environ, **{NETNS: name}),
            capture_output=True,
            text=True,
            timeout=6 * limit + 120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the scenario failed in {name}: {done.stderr[-2000:]}")
        return Frozen(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut", choices=sorted(CUTS), default="sigstop")
    parser.add_argument("--limit", type=float, default=40.0)
    parser.add_argument("--off", action="store_true", help="liveness off (the baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="garage-frozen-") as tmp:
        frozen = freeze_mid_answer(Path(tmp), liveness=not args.off, limit=args.limit, cut=args.cut)
    print(json.dumps(asdict(frozen)))


if __name__ == "__main__":
    main()
