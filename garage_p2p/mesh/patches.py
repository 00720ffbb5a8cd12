"""Fixes for py-libp2p 0.8.1 defaults that hurt us (measured in PLATFORM.md).

Applied once, before any host is built.
"""

from __future__ import annotations

import libp2p.network.swarm as _swarm
import libp2p.pubsub.pubsub as _pubsub

_applied = False


def apply_library_patches() -> None:
    global _applied
    if _applied:
        return
    # Every dial waited out a 250 ms happy-eyeballs delay even after success.
    _swarm._HAPPY_EYEBALLS_DELAY = 0.01
    # A subscription channel of 32 silently dropped bursts of gossip.
    _pubsub.SUBSCRIPTION_CHANNEL_SIZE = 1024
    _applied = True
