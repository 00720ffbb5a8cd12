"""A relayed stream longer than the relay's connection limit completes (issue 18).

NAT lab with symmetric NATs, so B reaches A through a relay for good; the relays cut each relayed
connection after ``RELAY_SECONDS``. A (the only provider of ``tiny``, a StandInBackend, not a
model) streams an answer that lasts about twice that. The relay cuts the circuit mid-answer; the
answer must go on at A over a new circuit (A is not banned, a relay's limit is not its fault) and
the client (the real ``openai`` client, in B's namespace) gets one whole answer, byte for byte the
uninterrupted one.
"""

from __future__ import annotations

import pytest

from tools.natlab import nat_lab, netns_nat_available
from tools.natmesh import API, NatMesh, stream_answer, uninterrupted
from tools.testkit import wait_until

RELAY_SECONDS = 15
TOKENS = 280
TOKEN_DELAY = 0.1
"""TOKENS x TOKEN_DELAY = 28 s of answer: about twice the relay's limit."""


def test_relayed_stream_outlives_the_relay_limit(tmp_path):
    reason = netns_nat_available()
    if reason:
        pytest.fail(f"this test needs network namespaces with iptables NAT: {reason} (CI runs as root)")
    expected = uninterrupted(TOKENS)
    assert expected["error"] is None and expected["usage"]["completion_tokens"] == TOKENS
    with nat_lab("gprl", {"a": "symmetric", "b": "symmetric"}) as lab:
        mesh = NatMesh(lab, tmp_path, token_delay=TOKEN_DELAY, relay_seconds=RELAY_SECONDS)
        try:
            wait_until(lambda: len(mesh.cli("a", "status")["relay_reservations"]) >= 1, 30, "A reserving a relay")
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            got = stream_answer(lab.hosts["b"].exec_prefix(), API, TOKENS, 90)
            assert mesh.connection_b_to_a() != "direct"  # symmetric NATs: relayed, or closed since
        finally:
            mesh.stop()
    print(f"{TOKENS * TOKEN_DELAY:.0f} s answer through a {RELAY_SECONDS} s relay: longest gap {got['gap']:.2f} s")
    assert got["error"] is None
    assert got["seconds"] > RELAY_SECONDS + 5  # the answer outlived its first circuit
    assert got["text"] == expected["text"]
    assert got["usage"] == expected["usage"]
    assert got["finish"] == expected["finish"] == "length"
