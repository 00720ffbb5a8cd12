"""What a daemon's start imports: every CPU-second of it is paid by each peer that joins (issue 17)."""

from __future__ import annotations

import subprocess
import sys


def modules_loaded_by(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_the_daemon_loads_no_dns_over_https_client_and_no_container_client():
    loaded = modules_loaded_by("garage_p2p.cli.peer")
    assert "libp2p" in loaded and "dns.asyncresolver" in loaded  # what is still needed
    # dnspython's DNS-over-HTTPS client (httpx2) is not loaded: libp2p resolves /dns4/ over plain DNS.
    assert not {"httpx2", "httpcore2"} & loaded
    # The container runtime's client is loaded only by a peer that runs a container (--model-dir).
    assert "podman" not in loaded
