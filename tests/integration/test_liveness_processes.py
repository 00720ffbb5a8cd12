"""A peer frozen with SIGSTOP (its TCP connections stay open, nothing comes from it), real processes.

The scenario and its clock are tools/frozen_provider.py's; benchmarks/liveness.py prints the same
figures with liveness on and off. The bounds here are generous (the design's is 10 s: core/liveness.py).
"""

from __future__ import annotations

import pytest

from tools.frozen_provider import freeze_consumer_mid_answer, freeze_mid_answer, run_in_netns, sigstopped
from tools.natlab import nat_lab, netns_nat_available
from tools.natmesh import NatMesh
from tools.netns import netns_available
from tools.testkit import wait_until

BOUND = 20.0


def test_a_frozen_provider_is_cut_off_its_routes_withdrawn_and_restored_when_it_wakes(tmp_path):
    frozen = freeze_mid_answer(tmp_path)
    print(frozen)
    assert frozen.closed is not None and frozen.closed <= BOUND
    # The answer in flight ends with an error event once the connection is closed: no hang.
    assert frozen.stream_ended is not None and frozen.stream_ended <= BOUND
    assert "cut off" in frozen.stream_error
    assert frozen.withdrawn is not None and frozen.withdrawn <= BOUND
    assert frozen.served_by == "P2"
    # Heard from again (a new connection once it wakes): routed to again, not after its next heartbeat.
    assert frozen.back is not None


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
def test_a_provider_whose_cable_is_pulled_is_cut_off_and_restored_when_plugged_back():
    """iptables DROP of its port, in a namespace made for it: no FIN, no RST, not even ACKs."""
    pulled = run_in_netns(cut="drop")
    print(pulled)
    assert pulled.closed is not None and pulled.closed <= BOUND
    assert pulled.stream_ended is not None and pulled.stream_ended <= BOUND
    assert pulled.withdrawn is not None and pulled.withdrawn <= BOUND
    assert pulled.back is not None


def test_a_frozen_consumer_s_connection_is_closed_by_the_provider_streaming_to_it(tmp_path):
    """No routing pings a consumer: only the connection's own check ends a stream to a frozen one."""
    took = freeze_consumer_mid_answer(tmp_path)
    assert took is not None and took <= BOUND


@pytest.mark.skipif(netns_nat_available() is not None, reason=str(netns_nat_available()))
def test_a_frozen_provider_behind_a_symmetric_nat_is_cut_off_over_its_relayed_connection(tmp_path):
    """B reaches A only through a relay (symmetric NAT: DCUtR fails): the pings cross the relay."""
    with nat_lab("gplv", {"a": "symmetric", "b": "symmetric"}) as lab:
        mesh = NatMesh(lab, tmp_path)
        try:
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            wait_until(lambda: mesh.chat_from_b()["status"] == 200, 30, "B's first answer from A")
            assert mesh.connection_b_to_a() == "relayed"
            a = mesh.peers["a"]
            with sigstopped(a):
                took = wait_until(lambda: not mesh.cli("b", "models"), BOUND, "B withdrawing frozen A's model")
                print(f"relayed: A withdrawn by B {took:.1f} s after it froze")
                # Closed for silence, by B over the circuit or by the relays on their direct connections.
                logs = "".join((p.home / "peer.log").read_text() for p in mesh.peers.values() if p is not a)
                assert f"connection to {a.info['peer_id']} silent" in logs
        finally:
            mesh.stop()
