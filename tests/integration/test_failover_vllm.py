"""Token-exact mid-stream failover with real parts: four garage-peer providers of ``tiny`` in front
of one real vLLM-CPU, a consumer, the real ``openai`` client.

Each provider reaches vLLM through its own SlowLink (tools/slow_link.py: 10 ms per streamed
event), so that killing the serving provider after a few events lands mid-answer on purpose.
The providers share one vLLM, so an answer continued elsewhere must equal the uninterrupted one
byte for byte at temperature 0. The tests run in file order; each kills (or freezes) one provider.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.slow_link import SlowLink, slow_link
from tools.testkit import wait_until

from .helpers import ledger_of

MESSAGES = [{"role": "user", "content": "Say something about peers."}]
ANSWER = {"model": "tiny", "messages": MESSAGES, "max_tokens": 300, "temperature": 0}
LONG = {"ignore_eos": True}
"""The tiny model may stop early; the answer must be long enough to be cut mid-way."""


class Rig:
    """Providers p0..p3 (each behind its own SlowLink to the one vLLM) and a consumer c."""

    def __init__(self, root, vllm_url: str, stack: contextlib.ExitStack) -> None:
        self.links: dict[str, SlowLink] = {}
        self.providers: dict[str, PeerProcess] = {}
        first: PeerProcess | None = None
        for i in range(4):
            link = stack.enter_context(slow_link(vllm_url, delay=0.01))
            boot = [first.addr] if first else []
            peer = PeerProcess(root / f"p{i}", peer_args(backends={"tiny": link.url + "/v1"}, bootstrap=boot)).start()
            stack.callback(peer.stop)
            peer.wait_ready()
            first = first or peer
            self.links[peer.peer_id] = link
            self.providers[peer.peer_id] = peer
        self.c = PeerProcess(root / "c", peer_args(bootstrap=[p.addr for p in self.providers.values()])).start()
        stack.callback(self.c.stop)
        self.c.wait_ready()
        self.client = openai.OpenAI(base_url=self.c.api_url, api_key="unused", max_retries=0, timeout=120)

    def wait_providers(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = httpx.get(self.c.api_url + "/models", timeout=5).json()["data"]
            if any(m["id"] == "tiny" and len(m["providers"]) >= count for m in data):
                return
            time.sleep(0.2)
        raise AssertionError(f"the consumer does not know {count} providers of tiny")

    def kill_after(self, providers: list[str], events: int, sig: int = signal.SIGKILL) -> None:
        """Signal (SIGKILL, or SIGSTOP to freeze it) the first of ``providers`` whose link passes
        ``events`` more events (the one that serves); the others are then left alone (one of them
        continues the answer)."""

        def kill(provider: str) -> None:
            for other in providers:
                self.links[other].disarm()
            peer = self.providers[provider]
            if sig == signal.SIGKILL:
                peer.kill()
            else:
                os.killpg(peer.process.pid, sig)

        for provider in providers:
            self.links[provider].trip(events, lambda p=provider: kill(p))

    def live(self) -> list[str]:
        return [p for p, peer in self.providers.items() if peer.process.poll() is None]


@pytest.fixture(scope="module")
def rig(vllm, tmp_path_factory) -> Iterator[Rig]:
    with contextlib.ExitStack() as stack:
        rig = Rig(tmp_path_factory.mktemp("failover"), vllm.base_url, stack)
        rig.wait_providers(4)
        yield rig


def stream_text(chunks) -> tuple[str, list[str | None], object]:
    text, finishes, usage = [], [], None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finishes.append(choice.finish_reason)
    return "".join(text), [f for f in finishes if f is not None], usage


def test_a_stream_whose_provider_is_killed_mid_answer_is_continued_exactly(rig):
    options = {"include_usage": True}
    reference = rig.client.chat.completions.create(**ANSWER, stream=True, stream_options=options, extra_body=LONG)
    expected, expected_finish, expected_usage = stream_text(reference)
    assert expected_usage.completion_tokens == 300

    raw = rig.client.chat.completions.with_raw_response.create(
        **ANSWER, stream=True, stream_options=options, extra_body=LONG
    )
    serving = raw.headers["x-garage-provider"]
    rig.kill_after([serving], 30)  # ~30 tokens in: the cut lands mid-answer
    chunks = list(raw.parse())
    text, finish, usage = stream_text(chunks)

    assert rig.providers[serving].process.poll() is not None, "the serving provider was killed"
    assert text == expected  # byte for byte, nothing duplicated or missing
    assert finish == expected_finish == ["length"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected_usage.prompt_tokens, 300)
    assert {c.id for c in chunks} == {chunks[0].id} and {c.object for c in chunks} == {"chat.completion.chunk"}

    # Each provider's receipt covers what it generated: the killed one sent no END (no receipt);
    # the one that continued (request ``<id>.1``) prefilled the prompt and the first k tokens and
    # generated the other 300 - k.
    continued = raw.headers["x-request-id"] + ".1"

    def receipts() -> list:
        return [
            e.receipt
            for p in rig.live()
            for e in ledger_of(rig.providers[p]).entries(p)
            if e.receipt.request_id == continued
        ]

    wait_until(receipts, 30, "the continuing provider logging its receipt")
    (receipt,) = receipts()
    assert 0 < receipt.completion_tokens < 300
    assert receipt.prompt_tokens + receipt.completion_tokens == expected_usage.prompt_tokens + 300
    assert not any(
        e.receipt.request_id.startswith(raw.headers["x-request-id"])
        for e in ledger_of(rig.providers[serving]).entries()
    )


def test_a_frozen_provider_is_lost_at_the_stall_deadline_and_the_answer_continued(rig):
    """SIGSTOP keeps the provider's connection open: only the stream's stall deadline sees it."""
    reference = rig.client.chat.completions.create(**ANSWER, stream=True, extra_body=LONG)
    expected, _, _ = stream_text(reference)
    raw = rig.client.chat.completions.with_raw_response.create(**ANSWER, stream=True, extra_body=LONG)
    serving = raw.headers["x-garage-provider"]
    rig.kill_after([serving], 30, signal.SIGSTOP)
    try:
        text, finish, _ = stream_text(raw.parse())
        assert rig.providers[serving].process.poll() is None  # frozen, not dead: it did not finish the answer
        assert text == expected and finish == ["length"]
    finally:
        rig.providers[serving].kill()  # SIGKILL ends a stopped process too


def test_a_non_streamed_answer_fails_over_invisibly(rig):
    reference = rig.client.chat.completions.create(**ANSWER, extra_body=LONG)
    live = rig.live()
    assert len(live) == 2
    rig.kill_after(live, 30)  # whichever serves is killed 30 events in; the other one finishes
    raw = rig.client.chat.completions.with_raw_response.create(**ANSWER, extra_body=LONG)
    answer = raw.parse()
    killed = [p for p in live if rig.providers[p].process.poll() is not None]
    assert killed == [raw.headers["x-garage-provider"]]
    assert answer.choices[0].message.content == reference.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (reference.usage.prompt_tokens, 300)


def test_with_no_provider_left_the_stream_ends_with_an_error_then_503(rig):
    live = rig.live()
    assert len(live) == 1
    rig.kill_after(live, 30)
    stream = rig.client.chat.completions.create(**ANSWER, stream=True, extra_body=LONG)
    received = 0
    with pytest.raises(openai.APIError) as exc:
        for _chunk in stream:
            received += 1
    assert received >= 1
    assert "cut off" in str(exc.value) and "no provider could continue" in str(exc.value)

    start = time.monotonic()
    r = httpx.post(rig.c.api_url + "/chat/completions", json={"model": "tiny", "messages": MESSAGES}, timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "ServiceUnavailableError"
    assert time.monotonic() - start < 15
