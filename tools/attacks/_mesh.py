"""What several attacks do on the mesh: join a gossip topic, publish as someone else, read a table."""

from __future__ import annotations

import itertools

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

from garage_p2p.core.capabilities import TableRequest
from garage_p2p.core.identity import Identity
from garage_p2p.core.messages import encode_json
from garage_p2p.core.wire import FrameDecoder, FrameType, encode_frame
from garage_p2p.daemon import Peer
from garage_p2p.mesh.discovery import PROTOCOL_CAPS
from garage_p2p.mesh.host import libp2p_key_pair
from garage_p2p.mesh.streams import StreamBroken, close_quietly, read_some, write_all

from . import Target

JOIN_TIMEOUT = 15.0
READ_TIMEOUT = 5.0
_seqnos = itertools.count(1)


async def join_gossip(attacker: Peer, victim: Target, topic: str) -> None:
    """Connect to ``victim`` and wait until it is in our gossip mesh for ``topic`` (publishes reach it)."""
    await attacker.mesh.connect(victim.peer_id, victim.addrs)
    victim_id = ID.from_base58(victim.peer_id)
    with trio.fail_after(JOIN_TIMEOUT):
        while victim_id not in attacker.mesh.pubsub.router.mesh.get(topic, set()):
            await trio.sleep(0.05)


async def publish_as(attacker: Peer, author: Identity, topic: str, data: bytes) -> None:
    """Put ``data`` on ``topic`` as a gossip message that ``author`` signed (a fresh identity we hold the key
    of), sent through the attacker's connections: receivers see ``author`` as the publisher."""
    keys = libp2p_key_pair(author)
    message = rpc_pb2.Message(
        data=data,
        topicIDs=[topic],
        from_id=ID.from_pubkey(keys.public_key).to_bytes(),
        seqno=next(_seqnos).to_bytes(8, "big"),
    )
    message.signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + message.SerializeToString())
    message.key = keys.public_key.serialize()
    await attacker.mesh.pubsub.router.publish(attacker.mesh.pubsub.my_id, message)
    await _sent(attacker)


async def _sent(attacker: Peer, backlog: int = 8) -> None:
    """Wait until our outbound gossip queues are nearly empty: py-libp2p drops what does not fit."""
    with trio.fail_after(JOIN_TIMEOUT):
        while any(len(queue) > backlog for queue in attacker.mesh.pubsub.peer_queues.values()):
            await trio.sleep(0.005)


async def read_table(attacker: Peer, victim: Target, max_bytes: int = 1 << 30) -> tuple[list[bytes], int]:
    """Ask ``victim`` for its ad table; the ads and the bytes it sent (StreamBroken or DialError if refused)."""
    stream = await attacker.mesh.open_stream(victim.peer_id, victim.addrs, PROTOCOL_CAPS)
    decoder = FrameDecoder({FrameType.TABLE_CURSOR: max_bytes, FrameType.DATA: max_bytes})
    ads: list[bytes] = []
    size = 0
    try:
        with trio.move_on_after(READ_TIMEOUT):
            await write_all(stream, encode_frame(FrameType.TABLE_REQUEST, encode_json(TableRequest())))
            while data := await read_some(stream):
                size += len(data)
                ads += [frame.payload for frame in decoder.feed(data) if frame.type == FrameType.DATA]
    finally:
        await close_quietly(stream)
    if size == 0:
        raise StreamBroken("the table request was refused")
    return ads, size
