"""What the process-level tests share: waiting, the CLI, stand-in backends, a peer's view, its ledger file."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from garage_p2p.core.ledger import LedgerState
from garage_p2p.devtools.processes import PeerProcess
from garage_p2p.devtools.soak import read_ledger


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> float:
    """Seconds until ``predicate()`` held; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"{what} not within {timeout} s")


def garage(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``garage`` CLI."""
    return subprocess.run([sys.executable, "-m", "garage_p2p.cli.garage", *args], capture_output=True, text=True, timeout=timeout)


def backend_up(url: str) -> bool:
    try:
        return httpx.get(url + "/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def standin_processes(ports: list[int], *flags: str, models: list[str] | None = None) -> Iterator[list[str]]:
    """StandInBackends (instruments, not models) as processes on ``ports``; yields their base URLs."""
    procs, urls = [], []
    try:
        for i, port in enumerate(ports):
            model = ["--model", models[i]] if models else []
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "garage_p2p.devtools.standin_backend", "--port", str(port), *model, *flags],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}/v1")
        for url in urls:
            wait_until(lambda: backend_up(url), 30, url)
        yield urls
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def models_of(peer: PeerProcess) -> dict[str, list[str]]:
    """Model → providers, as the peer's endpoint lists them ({} while it does not answer)."""
    try:
        data = httpx.get(peer.api_url + "/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {m["id"]: m["providers"] for m in data}


def ledger_of(peer: PeerProcess) -> LedgerState:
    """The ledger as the peer's file holds it (empty before the file exists)."""
    return read_ledger(Path(peer.home))
