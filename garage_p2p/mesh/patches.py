"""Fixes for py-libp2p 0.8.1 defaults and bugs that hurt us (measured; see PLATFORM.md).

Applied once, before any host is built.
"""

from __future__ import annotations

import logging

import libp2p.network.swarm as _swarm
import libp2p.pubsub.pubsub as _pubsub
import trio
from google.protobuf.message import DecodeError
from libp2p.stream_muxer.yamux.yamux import YamuxStream

log = logging.getLogger(__name__)
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
    # A yamux write that does not fit the send window goes out in chunks,
    # each under its own lock: two tasks writing one stream (pubsub does)
    # interleaved their chunks and corrupted the framing. Whole writes are
    # serialised per stream now.
    YamuxStream.write = _serialised_write(YamuxStream.write)
    # A malformed RPC from a peer (protobuf DecodeError) escaped the pubsub
    # stream handler and crashed the host; and at shutdown a message arriving
    # after pubsub's nursery closed did the same. Both now end that stream.
    _pubsub.Pubsub.stream_handler = _guarded_pubsub_handler(_pubsub.Pubsub.stream_handler)
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


def _serialised_write(write):
    async def serialised(self: YamuxStream, data: bytes) -> None:
        lock = self.__dict__.get("_garage_write_lock")
        if lock is None:
            lock = self.__dict__["_garage_write_lock"] = trio.Lock()
        async with lock:
            await write(self, data)

    return serialised


def _guarded_pubsub_handler(handler):
    async def stream_handler(self, stream) -> None:
        try:
            await handler(self, stream)
        except RuntimeError as exc:
            if "closed to new arrivals" not in str(exc):
                raise
        except DecodeError as exc:
            log.warning("malformed pubsub RPC from %s (%s): stream reset", stream.muxed_conn.peer_id, exc)
            with trio.move_on_after(2) as scope:
                scope.shield = True
                try:
                    await stream.reset()
                except Exception:  # the stream is already gone
                    pass

    return stream_handler
