"""A peer that keeps breaking the protocol is banned: disconnected, turned away, its streams reset."""

from __future__ import annotations

import time

import trio

from garage_p2p.core.messages import PROTOCOL_OPENAI
from garage_p2p.core.penalties import THRESHOLD
from garage_p2p.core.wire import FrameType, encode_frame
from garage_p2p.mesh.streams import read_some

from .conftest import first_addr, running_peer, standin_backend, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_repeated_garbage_bans_the_sender_and_others_are_still_served(tmp_path, http):
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with (
                running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c,
                running_peer(tmp_path / "evil") as evil,
            ):
                await wait_for_model(c, "tiny")
                target = a.identity.peer_id
                garbage = [
                    b"\x00\x00\x00\x05\x63junk",
                    encode_frame(FrameType.DATA, b"data before any head"),
                    b"\xff" * 64,
                ]
                for i in range(THRESHOLD):
                    stream = await evil.mesh.open_stream(target, first_addr(a), PROTOCOL_OPENAI)
                    await stream.write(garbage[i % len(garbage)])
                    with trio.move_on_after(2):
                        while await read_some(stream):
                            pass
                assert a.mesh.penalties.banned(evil.identity.peer_id, time.monotonic())
                with trio.fail_after(5):
                    while evil.identity.peer_id in a.mesh.connected_peers():
                        await trio.sleep(0.05)
                # Coming back does not help: the connection is turned away, or its stream reset unread.
                answered = b""
                try:
                    stream = await evil.mesh.open_stream(target, first_addr(a), PROTOCOL_OPENAI, timeout=3)
                    await stream.write(encode_frame(FrameType.HEAD, b"{}"))
                    with trio.move_on_after(2):
                        answered = await read_some(stream)
                except Exception:
                    pass  # refused outright
                assert not answered
                r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 200
