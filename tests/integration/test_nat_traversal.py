"""Garage peers through real NAT: namespaces, home routers with iptables NAT, two public relays.

A and B sit behind their own NAT router; R1 and R2 are public bootstrap
peers offering a relay (``--relay``). A serves ``tiny`` (a StandInBackend in
A's namespace: this is about the network, not the model); every request is
made from B's namespace to B's endpoint.
"""

from __future__ import annotations

import time

import pytest

from tools.natlab import nat_lab, netns_nat_available
from tools.natmesh import NatMesh
from tools.testkit import wait_until


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
            print(
                f"cone NAT: first request {first['ms']:.0f} ms (relay, dial included), direct after {took:.1f} s more"
            )
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
            wait_until(
                lambda: len(mesh.cli("a", "status")["relay_reservations"]) == 2, 30, "A reserving on both relays"
            )
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            assert mesh.chat_from_b()["status"] == 200
            # DCUtR tries three times, 2 s apart; through a symmetric NAT all fail.
            # (A failed attempt may also drop the relayed connection: the next
            # request then dials through the relay again.)
            time.sleep(8)
            assert mesh.connection_b_to_a() != "direct"
            assert mesh.chat_from_b()["status"] == 200
            assert mesh.connection_b_to_a() == "relayed"
            # Which relay carries B-A? Kill both in turn is too much: kill R1 and expect R2 to carry on.
            lab.kill_host("r1")
            mesh.peers.pop("r1")

            def answered() -> bool:
                return mesh.chat_from_b()["status"] == 200

            took = wait_until(answered, 60, "a request after losing relay R1")
            print(f"symmetric NAT: served again {took:.1f} s after relay R1 died")
        finally:
            mesh.stop()
