"""A peer that keeps breaking the protocol is banned: disconnected, turned away, its streams reset."""

from __future__ import annotations

import json
import logging
import time
from functools import partial

import trio
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.messages import PROTOCOL_OPENAI
from garage_p2p.core.penalties import THRESHOLD
from garage_p2p.core.wire import FrameType, encode_frame
from garage_p2p.mesh.host import ConnectionWatch
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
                await the_operator_sees_the_ban(a, evil.identity.peer_id, http)
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


async def the_operator_sees_the_ban(peer, banned: str, http) -> None:
    """``/garage/v1/bans`` and ``garage bans`` name the banned peer, its faults per service and the last one."""
    base = peer.api_url.removesuffix("/v1")
    listed = (await http.get(base + "/garage/v1/bans")).json()["bans"]
    assert [b["peer"] for b in listed] == [banned]
    assert listed[0]["faults"] == {"openai": THRESHOLD} and listed[0]["last_reason"].startswith("openai: ")
    assert 0 < listed[0]["remaining_s"] <= peer.mesh.penalties.ban
    cli = partial(CliRunner().invoke, app, ["bans", "--api", base, "--json"])
    result = await trio.to_thread.run_sync(cli)
    assert result.exit_code == 0, result.output
    assert [b["peer"] for b in json.loads(result.stdout)] == [banned]
    table = await trio.to_thread.run_sync(partial(CliRunner().invoke, app, ["bans", "--api", base]))
    assert table.stdout.splitlines()[0].split() == ["PEER", "LEFT", "FAULTS", "LAST"]
    assert f"openai:{THRESHOLD}" in table.stdout


async def test_a_banned_peer_whose_arrival_was_dropped_is_still_turned_away(tmp_path):
    """ConnectionWatch drops arrivals when its channel is full (a burst): the sweep must catch them."""
    async with running_peer(tmp_path / "victim") as victim, running_peer(tmp_path / "evil") as evil:
        banned = evil.identity.peer_id
        for _ in range(THRESHOLD):
            victim.mesh.penalise(banned, "test", "a fault")
        watch = next(n for n in victim.mesh.host.get_network().notifees if isinstance(n, ConnectionWatch))
        watch._send, _receive = trio.open_memory_channel(0)  # always full: every arrival is dropped
        await evil.mesh.connect(victim.identity.peer_id, first_addr(victim))
        with trio.fail_after(10):
            while banned in victim.mesh.connected_peers():
                await trio.sleep(0.05)
        assert victim.mesh.turned_away >= 1


async def test_faults_log_a_warning_only_for_the_ban(tmp_path, caplog):
    async with running_peer(tmp_path / "victim") as victim:
        for _ in range(3 * THRESHOLD):
            victim.mesh.penalise("12D3KooWEvil", "test", "a fault")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "KooWEvil" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("banned 12D3KooWEvil"), warnings
