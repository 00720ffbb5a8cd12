"""A misbehaving peer gets its input rejected; the daemon keeps serving everyone else."""

from __future__ import annotations

import os
import time

import trio

from garage_p2p.core.capabilities import ModelOffer, TableCursor, make_ad, sign_ad
from garage_p2p.core.identity import Identity
from garage_p2p.core.messages import encode_json
from garage_p2p.core.wire import FrameType, encode_frame
from garage_p2p.mesh.discovery import PROTOCOL_CAPS
from garage_p2p.mesh.streams import read_some

from .conftest import first_addr, running_peer, standin_backend, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_garbage_gossip_rpc_does_not_crash_the_peer(tmp_path, http):
    async with standin_backend() as url:
        async with running_peer(tmp_path / "a", backends={"tiny": url}) as a:
            async with running_peer(tmp_path / "evil") as evil:
                for payload in (b"\x05\xff\xff\xff\xff\xff", b"\x7f" + os.urandom(127), b"\x03abc" * 50):
                    stream = await evil.mesh.open_stream(a.identity.peer_id, first_addr(a), "/meshsub/1.1.0")
                    await stream.write(payload)
                    with trio.move_on_after(2):
                        while await read_some(stream):
                            pass
                r = await http.post(a.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 200
                async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                    await wait_for_model(c, "tiny")  # gossip and table sync still work


async def test_a_poisoned_ad_table_is_rejected_and_counted(tmp_path):
    async with running_peer(tmp_path / "victim") as victim:
        async with running_peer(tmp_path / "evil") as evil:
            stranger = Identity.from_seed(b"\x09" * 32)
            forged = bytearray(
                sign_ad(
                    stranger,
                    make_ad(
                        stranger,
                        seq=1,
                        now=time.time(),
                        ttl=30,
                        addrs=(),
                        models=(ModelOffer(name="bait"),),
                        version="x",
                    ),
                )
            )
            forged[70] ^= 1  # one flipped bit in the payload

            async def serve_poison(stream) -> None:
                await stream.write(
                    encode_frame(FrameType.TABLE_CURSOR, encode_json(TableCursor(epoch=0, cursor=0)))
                    + encode_frame(FrameType.DATA, bytes(forged))
                    + encode_frame(FrameType.DATA, b"junk" * 20)
                )
                await stream.close()

            evil.mesh.host.set_stream_handler(PROTOCOL_CAPS, serve_poison)
            learned = await victim.discovery.fetch_table(evil.identity.peer_id, first_addr(evil))
            assert learned == 0
            assert victim.mesh.penalties.faults(evil.identity.peer_id, "table") >= 1
            assert "bait" not in victim.dispatcher.known_models()


async def test_wrong_protocol_answer_is_not_a_crash(tmp_path, http):
    """A 'provider' whose listener answers the lazy proposal with nonsense."""
    async with standin_backend() as url:
        async with running_peer(tmp_path / "good", backends={"tiny": url}) as good:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(good)) as c:
                await wait_for_model(c, "tiny")
                stream = await c.mesh.open_stream_lazy(
                    good.identity.peer_id, first_addr(good), "/garage/nonexistent/1.0.0", b""
                )
                try:
                    await stream.read_some()
                    raise AssertionError("a refused protocol must not read as data")
                except Exception as exc:
                    assert "does not speak" in str(exc) or "negotiation" in str(exc) or "answer" in str(exc)
                r = await http.post(c.api_url + "/chat/completions", json=CHAT)
                assert r.status_code == 200
