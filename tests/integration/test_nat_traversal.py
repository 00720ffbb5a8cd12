"""Garage peers through real NAT: namespaces, home routers with iptables NAT, two public relays.

A and B sit behind their own NAT router; R1 and R2 are public bootstrap
peers offering a relay (``--relay``). A serves ``tiny`` (a StandInBackend in
A's namespace: this is about the network, not the model); every request is
made from B's namespace to B's endpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from garage_p2p.devtools.natlab import nat_lab, netns_nat_available
from garage_p2p.devtools.processes import PeerProcess

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
API = "http://127.0.0.1:8000/v1"


class NatMesh:
    def __init__(self, lab, root: Path) -> None:
        self.lab = lab
        self.peers: dict[str, PeerProcess] = {}
        self.procs: list[subprocess.Popen] = []
        relays = []
        for name in ("r1", "r2"):
            host = lab.hosts[name]
            peer = self._start(name, root, ["--listen", f"/ip4/{host.ip}/tcp/4001", "--relay"])
            relays.append(next(a for a in peer.info["addrs"] if host.ip in a))
        a = lab.hosts["a"]
        self.procs.append(subprocess.Popen([*a.exec_prefix(), sys.executable, "-m", "garage_p2p.devtools.standin_backend", "--port", "8101", "--token-delay", "0.01"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        boot = [arg for r in relays for arg in ("--bootstrap", r)]
        self._start("a", root, ["--listen", f"/ip4/{a.ip}/tcp/4001", "--backend", "tiny=http://127.0.0.1:8101/v1", *boot])
        b = lab.hosts["b"]
        self._start("b", root, ["--listen", f"/ip4/{b.ip}/tcp/4001", *boot])

    def _start(self, name: str, root: Path, args: list[str]) -> PeerProcess:
        host = self.lab.hosts[name]
        env_args = ["--api", "127.0.0.1:8000", "--no-mdns", *args]
        peer = PeerProcess(root / name, env_args, prefix=host.exec_prefix()).start()
        self.peers[name] = peer
        peer.wait_ready()
        return peer

    def cli(self, name: str, *args: str):
        result = self.peers[name].run("garage_p2p.cli.garage", *args, "--json", "--api", API)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def chat_from_b(self) -> dict:
        snippet = (
            "import httpx, json, time; t = time.monotonic(); "
            f"r = httpx.post('{API}/chat/completions', json={CHAT!r}, timeout=30); "
            "print(json.dumps({'status': r.status_code, 'provider': r.headers.get('x-garage-provider'), 'ms': (time.monotonic() - t) * 1000}))"
        )
        result = subprocess.run([*self.lab.hosts["b"].exec_prefix(), sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def connection_b_to_a(self) -> str:
        a_id = self.peers["a"].info["peer_id"]
        return next((p["connection"] for p in self.cli("b", "peers") if p["peer_id"] == a_id), "unknown")

    def stop(self) -> None:
        for peer in self.peers.values():
            peer.kill()
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


def wait_until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.25)
    return time.monotonic() - start


def _lab(tmp_path, nat: str):
    reason = netns_nat_available()
    if reason:
        pytest.fail(f"this test needs network namespaces with iptables NAT: {reason} (CI runs as root)")
    return nat_lab(f"gpt{nat[0]}", {"a": nat, "b": nat})


def test_cone_nat_relay_then_direct(tmp_path):
    with _lab(tmp_path, "cone") as lab:
        mesh = NatMesh(lab, tmp_path)
        try:
            status_a = mesh.cli("a", "status")
            wait_until(lambda: mesh.cli("a", "status")["reachability"] == "private", 20, "A seeing it is behind NAT")
            wait_until(lambda: len(mesh.cli("a", "status")["relay_reservations"]) >= 1, 20, "A reserving on a relay")
            assert mesh.cli("r1", "status")["reachability"] == "public"
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            first = mesh.chat_from_b()
            assert first["status"] == 200 and first["provider"] == mesh.peers["a"].info["peer_id"]
            took = wait_until(lambda: mesh.connection_b_to_a() == "direct", 30, "DCUtR upgrading B-A to direct")
            print(f"cone NAT: first request {first['ms']:.0f} ms (relay, dial included), direct after {took:.1f} s more")
            direct = [mesh.chat_from_b() for _ in range(3)]
            assert all(r["status"] == 200 for r in direct)
            assert mesh.connection_b_to_a() == "direct"
            assert status_a["dht_mode"] in ("server", "client")
            assert mesh.cli("a", "status")["dht_mode"] == "client"  # behind NAT: holds no DHT records
        finally:
            mesh.stop()


def test_symmetric_nat_stays_relayed_and_survives_losing_a_relay(tmp_path):
    with _lab(tmp_path, "symmetric") as lab:
        mesh = NatMesh(lab, tmp_path)
        try:
            wait_until(lambda: len(mesh.cli("a", "status")["relay_reservations"]) == 2, 30, "A reserving on both relays")
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            assert mesh.chat_from_b()["status"] == 200
            time.sleep(8)  # DCUtR's attempts (every 2 s, 3 of them) fail through a symmetric NAT
            assert mesh.connection_b_to_a() == "relayed"
            assert mesh.chat_from_b()["status"] == 200
            # Which relay carries B-A? Kill both in turn is too much: kill R1 and expect R2 to carry on.
            lab.kill_host("r1")
            mesh.peers.pop("r1")

            def answered() -> bool:
                return mesh.chat_from_b()["status"] == 200

            took = wait_until(answered, 60, "a request after losing relay R1")
            print(f"symmetric NAT: served again {took:.1f} s after relay R1 died")
        finally:
            mesh.stop()
