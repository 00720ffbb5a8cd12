"""A relay's limit is not a provider's fault: judging a relayed connection's cut.

Relays cut each relayed connection after a time (and data) limit they announce in their answer to
CONNECT (mesh/nat.py keeps it). A stream that outlives the limit is cut though its provider is
fine: the answer then goes on at the same provider over a new circuit, neither banned nor counted
as a failover (core/continuation.py ``Transcript.moves``). Sans-IO: times in, decisions out.
"""

from __future__ import annotations

RELAY_CUT_SLACK = 5.0
"""Seconds before the relay's deadline from which a cut counts as the relay's: our clock started
after the relay's (one round trip later), and the relay checks its limit between reads."""


def cut_by_relay(deadline: float | None, now: float, slack: float = RELAY_CUT_SLACK) -> bool:
    """Whether a connection lost at ``now`` was cut by its relay's limit (``deadline``: when the
    relay said it would cut it; None for a direct connection or an unlimited relay)."""
    return deadline is not None and now >= deadline - slack
