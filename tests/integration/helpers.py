"""What the process-level tests share: waiting, the CLI, stand-in backends, a peer's view, its ledger file."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.core.ledger import LedgerState
from tools.soak import read_ledger
from tools.testkit import free_port, standin_process, wait_until


def garage(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``garage`` CLI."""
    return subprocess.run(
        [sys.executable, "-m", "garage_p2p.cli.garage", *args], capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def standin_processes(ports: list[int], *, models: list[str] | None = None, **options) -> Iterator[list[str]]:
    """StandInBackends (instruments, not models) as processes on ``ports``; yields their base URLs."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(standin_process(port, **options, **({"model": models[i]} if models else {})))
            for i, port in enumerate(ports)
        ]


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


@contextlib.contextmanager
def provider_and_keyed_consumer(root: Path, key_name: str) -> Iterator[tuple[PeerProcess, PeerProcess, str]]:
    """P serving ``tiny`` from a StandInBackend (an instrument), C bootstrapped from P and asking for keys.

    Yields (P, C, a key of C's) once C knows that P serves ``tiny``.
    """
    created = garage("keys", "create", "--home", str(root / "c"), "--name", key_name, "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    peers: list[PeerProcess] = []
    with standin_processes([free_port()], token_delay=0.005) as [backend]:
        try:
            p = PeerProcess(root / "p", peer_args(backends={"tiny": backend})).start()
            peers.append(p)
            p.wait_ready()
            c = PeerProcess(root / "c", peer_args(bootstrap=[p.addr], extra=["--require-keys"])).start()
            peers.append(c)
            c.wait_ready()
            models = f"{c.api_url}/models"
            auth = {"authorization": f"Bearer {key}"}

            def knows_tiny() -> bool:
                return any(
                    m["id"] == "tiny" and p.peer_id in m.get("providers", [])
                    for m in httpx.get(models, headers=auth, timeout=5).json()["data"]
                )

            wait_until(knows_tiny, 30, "C seeing P serve tiny")
            yield p, c, key
        finally:
            for peer in reversed(peers):
                peer.stop()
