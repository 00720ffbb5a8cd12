"""A peer frozen with SIGSTOP (its TCP connections stay open, nothing comes from it), real processes.

The scenario and its clock are tools/frozen_provider.py's; benchmarks/liveness.py prints the same
figures with liveness on and off. The bounds here are generous (the design's is 10 s: core/liveness.py).
"""

from __future__ import annotations

from tools.frozen_provider import freeze_consumer_mid_answer, freeze_mid_answer

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


def test_a_frozen_consumer_s_connection_is_closed_by_the_provider_streaming_to_it(tmp_path):
    """No routing pings a consumer: only the connection's own check ends a stream to a frozen one."""
    took = freeze_consumer_mid_answer(tmp_path)
    assert took is not None and took <= BOUND
