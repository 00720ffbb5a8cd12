"""Fixes for py-libp2p 0.8.1 defaults that hurt us (measured in PLATFORM.md).

Applied once, before any host is built.
"""

from __future__ import annotations

import libp2p.network.swarm as _swarm
import libp2p.pubsub.pubsub as _pubsub
from libp2p.stream_muxer.yamux.yamux import YamuxStream

_applied = False


def apply_library_patches() -> None:
    global _applied
    if _applied:
        return
    # Every dial waited out a 250 ms happy-eyeballs delay even after success.
    _swarm._HAPPY_EYEBALLS_DELAY = 0.01
    # A subscription channel of 32 silently dropped bursts of gossip.
    _pubsub.SUBSCRIPTION_CHANNEL_SIZE = 1024
    # Yamux sent a WINDOW_UPDATE after nearly every read (~9 extra frames per
    # request, each ~0.5 ms of CPU); credit is now returned once half the
    # window is consumed, as go-yamux does.
    YamuxStream._auto_tune_and_send_window_update = _half_window_update
    _applied = True


async def _half_window_update(self: YamuxStream, *, bytes_read: int = 0) -> None:
    async with self.window_lock:
        self._pending_recv_release += bytes_read
        pending = self._pending_recv_release
        if pending <= 0 or pending < self._grow_threshold():
            return
        self.recv_window += pending
        self._pending_recv_release = 0
    await self.send_window_update(pending, skip_lock=True)
