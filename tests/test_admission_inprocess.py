"""A provider's slots under contention, with real peers: contributors first, everyone served in turn."""

from __future__ import annotations

import time

import trio

from .conftest import first_addr, running_peer, standin_backend, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_a_waiting_contributor_is_served_before_a_consumer_that_asked_first(tmp_path, http):
    async with standin_backend(first_token_delay=0.3) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, max_concurrency=1) as a:
            async with (
                running_peer(tmp_path / "c1", bootstrap=first_addr(a)) as c1,
                running_peer(tmp_path / "c2", bootstrap=first_addr(a)) as c2,
            ):
                await wait_for_model(c1, "tiny")
                await wait_for_model(c2, "tiny")
                a.provider.contributor = lambda peer: peer == c2.identity.peer_id
                done: list[str] = []

                async def ask(name: str, url: str) -> None:
                    r = await http.post(url + "/chat/completions", json=CHAT)
                    done.append(name if r.status_code == 200 else f"{name}: {r.status_code} {r.text}")

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, "c1-first", c1.api_url)
                    with trio.fail_after(5):
                        while a.provider.in_flight < 1:
                            await trio.sleep(0.01)
                    nursery.start_soon(ask, "c1-second", c1.api_url)
                    with trio.fail_after(5):
                        while a.provider.admission.waiting < 1:
                            await trio.sleep(0.01)
                    nursery.start_soon(ask, "c2", c2.api_url)
                    with trio.fail_after(5):
                        while a.provider.admission.waiting < 2:
                            await trio.sleep(0.01)
                # Every request was served (each waited its turn, under the 2 s line limit) and
                # the contributor's went ahead of the consumer's second.
                assert done == ["c1-first", "c2", "c1-second"]


async def test_one_consumer_cannot_take_every_slot(tmp_path, http):
    async with standin_backend(first_token_delay=3.0) as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, max_concurrency=2, peer_concurrency=1) as a:
            async with (
                running_peer(tmp_path / "c1", bootstrap=first_addr(a)) as c1,
                running_peer(tmp_path / "c2", bootstrap=first_addr(a)) as c2,
            ):
                await wait_for_model(c1, "tiny")
                await wait_for_model(c2, "tiny")
                results: dict[str, int] = {}

                async def ask(name: str, url: str) -> None:
                    r = await http.post(
                        url + "/chat/completions", json=CHAT, headers={"x-garage-peer": a.identity.peer_id}
                    )
                    results[name] = r.status_code

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, "c1-a", c1.api_url)
                    with trio.fail_after(5):
                        while a.provider.in_flight < 1:
                            await trio.sleep(0.01)
                    nursery.start_soon(ask, "c1-b", c1.api_url)  # over c1's own limit: refused at once
                    with trio.fail_after(5):  # c2 asks only once c1's second request was answered
                        while "c1-b" not in results:
                            await trio.sleep(0.01)
                    # The busy reply told c1's router A's load (c1-a's END is seconds away yet).
                    assert list(c1.dispatcher.router.recent("tiny", time.time())) == [a.identity.peer_id]
                    nursery.start_soon(ask, "c2", c2.api_url)  # the second slot is still free for c2
                assert results == {"c1-a": 200, "c1-b": 429, "c2": 200}
