"""Relay v2 and DCUtR hole punching through real NAT routers in network namespaces.

The lab (tools.natlab): relay R1 on a public address; peers A
and B each behind a home router (MASQUERADE + a firewall dropping NEW from
the WAN). The probe (tools.nat_probe) runs one process per
machine; A reaches B through R1, then DCUtR punches a direct connection.
Needs root, iproute2 and iptables (CI runs as root; bootstrap/dev-env.sh
installs iptables). About 30 s in all.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.nat_probe import LISTEN_PORT, run_probe
from tools.natlab import Lab, lab_namespaces, nat_lab, netns_nat_available


@pytest.fixture(autouse=True)
def _needs_nat_lab():
    reason = netns_nat_available()
    if reason:
        pytest.fail(f"this test needs network namespaces with NAT: {reason} (CI runs as root)")


def _assert_relayed_works(result: dict, lab: Lab) -> None:
    assert "error" not in result, result.get("error")
    assert len(result["reservation_ms"]) == 1 and len(result["listener"]["reservation_ms"]) == 1
    relayed = result["relayed"]
    assert relayed["is_relayed"] and relayed["conn"]["type"] == "relayed"
    assert all("/p2p-circuit" in a for a in relayed["conn"]["transport_addrs"])
    assert relayed["echo"]["ok"]
    assert relayed["echo"]["via"]["type"] == "relayed"
    assert relayed["echo"]["peer_saw"]["type"] == "relayed"
    # Identify: R1 told each peer its NAT's public address (an ephemeral
    # mapped port); the advertised addresses stay the private listen ones.
    for who, info in (("a", result), ("b", result["listener"])):
        assert [a.split("/")[2] for a in info["observed_addrs"]] == [lab.public_ip(who)], info
        assert all(f"/ip4/{lab.hosts[who].ip}/" in a for a in info["get_addrs"]), info


@pytest.mark.parametrize("skip_private_predial", [False, True], ids=["stock-dcutr", "no-lan-predial"])
def test_cone_nat_relayed_then_direct(tmp_path, skip_private_predial):
    with nat_lab("gpnatc", {"a": "cone", "b": "cone"}, ["r1"]) as lab:
        result = run_probe(lab, tmp_path, punch_wait=15, skip_private_predial=skip_private_predial)
        _assert_relayed_works(result, lab)
        direct = result["direct"]
        assert direct["ok"], result
        b_public, a_public = lab.public_ip("b"), lab.public_ip("a")
        assert direct["conn"]["type"] == "direct"
        assert direct["conn"]["transport_addrs"] == [f"/ip4/{b_public}/tcp/{LISTEN_PORT}"]
        assert direct["conn"]["socket_peer"] == f"{b_public}:{LISTEN_PORT}"
        # With both connections open, a new stream already takes the direct one.
        assert direct["echo_with_both_open"]["via"]["type"] == "direct"
        assert direct["relayed_left"] == 0
        after = direct["echo_after_relay_closed"]
        assert after["ok"] and after["via"]["type"] == "direct"
        # B saw A arrive from A's NAT, from A's listen port (port-preserving NAT).
        assert after["peer_saw"]["socket_peer"] == f"{a_public}:{LISTEN_PORT}"
        assert direct["time_to_direct_ms"] < (1500 if skip_private_predial else 12000)
        print(
            f"cone ({'no LAN pre-dial' if skip_private_predial else 'stock'}): "
            f"reservation {result['reservation_ms']} ms, "
            f"relayed dial {result['relayed']['dial_ms']} ms, direct after {direct['time_to_direct_ms']} ms"
        )

        # The relay-loss switch: with R1's link down, A cannot reach it.
        assert _tcp_reach(lab, "a", lab.hosts["r1"].ip) == "refused"  # up, nothing listening now
        lab.cut("r1")
        assert _tcp_reach(lab, "a", lab.hosts["r1"].ip) == "timeout"
        lab.restore("r1")
        assert _tcp_reach(lab, "a", lab.hosts["r1"].ip) == "refused"
    assert lab_namespaces("gpnatc") == []


def test_symmetric_nat_stays_relayed(tmp_path):
    with nat_lab("gpnats", {"a": "symmetric", "b": "symmetric"}, ["r1"]) as lab:
        result = run_probe(lab, tmp_path, punch_wait=10, skip_private_predial=True)
        _assert_relayed_works(result, lab)
        assert not result["direct"]["ok"], result
        still = result["relayed_after_failed_punch"]
        assert still["ok"] and still["via"]["type"] == "relayed"
    assert lab_namespaces("gpnats") == []


def _tcp_reach(lab: Lab, src: str, ip: str, port: int = LISTEN_PORT) -> str:
    """'connected', 'refused' or 'timeout' for a TCP connect from ``src``'s namespace."""
    snippet = (
        "import socket, sys\n"
        "s = socket.socket(); s.settimeout(1)\n"
        f"try:\n    s.connect(({ip!r}, {port})); print('connected')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError: print('timeout')\n"
    )
    out = subprocess.run(
        [*lab.hosts[src].exec_prefix(), sys.executable, "-c", snippet], capture_output=True, text=True, timeout=20
    )
    return out.stdout.strip()
