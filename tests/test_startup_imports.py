"""What a daemon's start imports: every CPU-second of it is paid by each peer that joins (issue 17)."""

from __future__ import annotations

import gc
import subprocess
import sys

from garage_p2p.cli.peer import collect_after_start


def modules_loaded_by(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_the_daemon_loads_no_dns_over_https_client_and_no_container_client():
    loaded = modules_loaded_by("garage_p2p.daemon")
    assert "libp2p" in loaded and "dns.asyncresolver" in loaded  # what is still needed
    # dnspython's DNS-over-HTTPS client (httpx2) is not loaded: libp2p resolves /dns4/ over plain DNS.
    assert not {"httpx2", "httpcore2"} & loaded
    # The container runtime's client is loaded only by a peer that runs a container (--model-dir).
    assert "podman" not in loaded


def test_the_entry_point_loads_the_daemon_only_once_the_collector_is_paused():
    """garage-peer's main() pauses the collector, then the command imports the daemon: imported by
    the entry point's module itself, libp2p and the rest would be collected over as they load."""
    loaded = modules_loaded_by("garage_p2p.cli.peer")
    assert not {"garage_p2p.daemon", "libp2p", "trio", "pydantic"} & loaded


def test_the_collector_is_back_and_skips_the_start_s_objects_once_ready():
    frozen = gc.get_freeze_count()
    gc.disable()  # as garage-peer's main() does
    try:
        collect_after_start()
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen  # what the start allocated is never scanned again
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_collector_nobody_paused_is_left_alone():
    """A test calling the command in-process keeps its collector as it was: nothing frozen."""
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    collect_after_start()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
