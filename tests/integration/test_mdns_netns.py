"""mDNS on a real LAN: two network namespaces joined by a link, no bootstrap list.

Each peer runs in its own namespace (root and iproute2; CI runs as root), so
the multicast stays on a link this test made.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from garage_p2p.cli.peer_process import PeerProcess
from tools.netns import linked_hosts, netns_available
from tools.testkit import run_where, standin_command

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_peers_on_a_lan_find_each_other_by_mdns(tmp_path):
    reason = netns_available()
    if reason:
        pytest.fail(f"this test needs network namespaces: {reason} (CI runs as root)")
    with linked_hosts("gpmdns") as (a, b):
        backend = subprocess.Popen(
            standin_command(8101, prefix=a.exec_prefix()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pa = PeerProcess(
            tmp_path / "a",
            [
                "--listen",
                f"/ip4/{a.ip}/tcp/4001",
                "--api",
                "127.0.0.1:8000",
                "--mdns",
                "--backend",
                "tiny=http://127.0.0.1:8101/v1",
            ],
            prefix=a.exec_prefix(),
        )
        pb = PeerProcess(
            tmp_path / "b",
            ["--listen", f"/ip4/{b.ip}/tcp/4001", "--api", "127.0.0.1:8000", "--mdns"],
            prefix=b.exec_prefix(),
        )
        try:
            pa.start()
            pb.start()
            pa.wait_ready()
            pb.wait_ready()
            deadline = time.monotonic() + 30
            while True:
                status = run_where(pb, "garage_p2p.cli.garage", "models", "--json", "--api", "http://127.0.0.1:8000/v1")
                models = json.loads(status.stdout) if status.returncode == 0 else []
                if any(m["model"] == "tiny" for m in models):
                    break
                assert time.monotonic() < deadline, f"B never found A by mDNS: {status.stderr}"
                time.sleep(0.5)
            # A request made in B's namespace is served by A's backend in A's namespace.
            snippet = (
                "import httpx, json, sys; "
                f"r = httpx.post('http://127.0.0.1:8000/v1/chat/completions', json={CHAT!r}, timeout=20); "
                "print(json.dumps({'status': r.status_code, 'provider': r.headers.get('x-garage-provider')}))"
            )
            result = subprocess.run(
                [*b.exec_prefix(), sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
            )
            answer = json.loads(result.stdout)
            assert answer == {"status": 200, "provider": pa.info["peer_id"]}
        finally:
            pa.kill()
            pb.kill()
            backend.terminate()
            backend.wait(10)
