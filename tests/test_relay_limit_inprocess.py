"""A relay's limits reach the peer that dials through it (mesh/nat.py, mesh/patches.py), with real
libp2p hosts on 127.0.0.1: a relay, a peer holding a reservation on it, and a peer dialling the
other through it."""

from __future__ import annotations

import os

import trio

from garage_p2p.core.identity import Identity
from garage_p2p.core.relaying import RELAY_CUT_SLACK, cut_by_relay
from garage_p2p.mesh.host import open_mesh

from .conftest import LOOPBACK

RELAY_SECONDS = 7
"""The relay's limit: not the dialling peer's own (120 s), so only the relay's answer can tell it."""


def _loopback(mesh) -> str:
    return next(a for a in mesh.addrs() if "/127.0.0.1/" in a)


async def test_a_relayed_dial_learns_the_relays_limit_and_its_deadline():
    def new() -> Identity:
        return Identity.from_seed(os.urandom(32))

    async with (
        open_mesh(new(), LOOPBACK, relay_service=True, relay_seconds=RELAY_SECONDS) as relay,
        open_mesh(new(), LOOPBACK, [_loopback(relay)]) as target,
        open_mesh(new(), LOOPBACK) as dialler,
    ):
        assert target.nat is not None and dialler.nat is not None
        await target.nat._keep_reservations([_loopback(relay)])  # loopback peers are public: asked here
        circuit = target.nat.reservations[relay.peer_id]
        assert dialler.relay_deadline(target.peer_id) is None  # not connected yet
        before = trio.current_time()
        await dialler.nat.dial_relayed(circuit)
        seconds = dialler.nat.circuits[target.peer_id].seconds
        deadline = dialler.relay_deadline(target.peer_id)
        now = trio.current_time()
        await dialler.drop_relayed(target.peer_id)
        after_drop = dialler.relay_deadline(target.peer_id)
    # Checked outside the hosts' nurseries, whose exception groups would bury a failed assert.
    assert seconds == RELAY_SECONDS  # 120 (the dialler's own) without the patch
    assert deadline is not None and before < deadline <= now + RELAY_SECONDS
    assert not cut_by_relay(deadline, now)  # a cut now is not the relay's limit
    assert cut_by_relay(deadline, deadline - RELAY_CUT_SLACK / 2)
    assert after_drop is None  # forgotten: the next stream dials anew
