"""What a daemon's start imports: every CPU-second of it is paid by each peer that joins (issue 17)."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from garage_p2p.cli import peer
from garage_p2p.cli.peer import collect_after_start

ENTRY = """
import gc, hashlib, sys
import garage_p2p.cli.peer as peer

async def run_peer(settings):  # in the daemon's place: what it imports, and how
    import garage_p2p.daemon
    from Crypto.Hash import SHA256
    from libp2p.crypto.rsa import create_new_key_pair
    keys = create_new_key_pair(1024)
    assert keys.public_key.verify(b"m", keys.private_key.sign(b"m"))
    assert SHA256.new(b"m").hexdigest() == hashlib.sha256(b"m").hexdigest()
    print("collector on" if gc.isenabled() else "collector off")
    print("requests is", type(sys.modules["requests"]).__name__)
    print("\\n".join(sys.modules))

peer.run_peer = run_peer
sys.argv = ["garage-peer", "--no-mdns", "--home", *sys.argv[1:]]
peer.main()
"""


def modules_loaded_by(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def garage_peer_imports(*args: str) -> list[str]:
    """What garage-peer's own process (``main``) holds, and says, when it would start the daemon."""
    out = subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_the_daemon_loads_no_dns_over_https_client_and_no_container_client():
    loaded = modules_loaded_by("garage_p2p.daemon")
    assert "libp2p" in loaded and "dns.asyncresolver" in loaded  # what is still needed
    # dnspython's DNS-over-HTTPS client (httpx2) is not loaded: libp2p resolves /dns4/ over plain DNS.
    assert not {"httpx2", "httpcore2"} & loaded
    # The container runtime's client is loaded only by a peer that runs a container (--model-dir).
    assert "podman" not in loaded


def test_garage_peer_imports_the_daemon_with_the_collector_paused_and_without_what_it_never_uses(tmp_path):
    """httpx's CLI (rich, pygments), cffi's C parser (pycryptodome binds with ctypes instead: RSA and
    SHA-256 above still work) and requests (a stand-in) stay out: ~0.2 CPU-s of each start."""
    lines = garage_peer_imports(str(tmp_path))
    assert "collector off" in lines and "requests is _StandIn" in lines
    assert {"garage_p2p.daemon", "libp2p", "Crypto"} <= set(lines)
    assert not {"httpx._main", "rich", "pygments", "cffi", "pycparser", "urllib3"} & set(lines)


def test_a_peer_that_runs_a_container_gets_the_real_requests(tmp_path):
    """The Podman client uses requests."""
    lines = garage_peer_imports(str(tmp_path), "--model-dir", str(tmp_path / "model"))
    assert "requests is module" in lines and "urllib3" in lines


def test_the_collector_is_back_and_skips_the_start_s_objects_once_ready(monkeypatch):
    monkeypatch.setattr(peer, "_own_process", True)
    frozen = gc.get_freeze_count()
    gc.disable()  # as garage-peer's main() does
    try:
        collect_after_start()
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen  # what the start allocated is never scanned again
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.parametrize("collector", ["on", "off"])
def test_a_test_calling_the_command_in_process_keeps_its_collector_as_it_was(collector):
    frozen = gc.get_freeze_count()
    if collector == "off":
        gc.disable()
    try:
        collect_after_start()
        assert gc.isenabled() == (collector == "on") and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
