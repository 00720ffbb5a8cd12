"""gateway/answer.py, the trio side of core/request_policy.py, on a fake clock with fake streams:
the policy's timers bound every read, its commands reach the router, and an answer whose first
event already ends it comes back as an answer, not as a refusal."""

from __future__ import annotations

import random
from collections.abc import Callable

import trio
import trio.testing

from garage_p2p.core.deadlines import FIRST_BYTE_MIN, FirstByteHistory
from garage_p2p.core.delivery import Delivery
from garage_p2p.core.exchange import ResponseData, ResponseEnd, ResponseEvent, ResponseFailed
from garage_p2p.core.messages import EndInfo, RequestHead, Usage, error_info
from garage_p2p.core.request_policy import RequestPolicy
from garage_p2p.core.routing import Candidate, Router, RouteRequest
from garage_p2p.gateway.answer import Answer
from garage_p2p.gateway.dispatch import Routed

CHAT = "/v1/chat/completions"
END = ResponseEnd(EndInfo(usage=Usage(prompt_tokens=1, completion_tokens=2)))


class FakeExchange:
    """A provider's events, one per read; None is silence (the read never returns)."""

    def __init__(self, provider: str, events: list[ResponseEvent | None]) -> None:
        self.provider = provider
        self._events = events
        self.closed = False

    async def next_event(self) -> ResponseEvent:
        event = self._events.pop(0)
        if event is None:
            await trio.sleep_forever()
        assert event is not None
        return event

    async def aclose(self) -> None:
        self.closed = True


class FakeMesh:
    peer_id = "self"

    async def disconnect(self, peer_id: str) -> None:
        pass

    def relay_deadline(self, peer_id: str) -> float | None:
        return None  # direct connections only

    async def drop_relayed(self, peer_id: str) -> None:
        pass


class FakeDispatcher:
    """The dispatcher's surface the adapter uses, over scripted providers."""

    def __init__(self, nursery: trio.Nursery, scripts: dict[str, Callable[[], list[ResponseEvent | None]]]) -> None:
        self.background = nursery
        self.mesh = FakeMesh()
        self.router = Router(random.Random(0))
        self.first_bytes = FirstByteHistory()
        self.scripts = scripts
        self.opened: list[FakeExchange] = []
        self.deliveries: list[tuple[str, str, Delivery]] = []

    def delivered(self, peer_id: str, model: str, delivery: Delivery) -> None:
        self.deliveries.append((peer_id, model, delivery))

    async def route(self, request: RouteRequest) -> Routed:
        candidates = [Candidate(p, 1.0, True) for p in self.scripts if self.router.banned_until(p) == 0]
        return Routed(candidates, [], {})

    async def open(self, peer_id: str, addrs, head: RequestHead, model: str, deadline: float) -> FakeExchange:
        exchange = FakeExchange(peer_id, self.scripts[peer_id]())
        self.opened.append(exchange)
        return exchange


def policy(stream: bool) -> RequestPolicy:
    head = RequestHead(request_id="r", path=CHAT, body={"model": "tiny", "stream": stream}, timeout=600)
    return RequestPolicy(
        head,
        "tiny",
        trio.current_time(),
        transcript=None,
        client_stream=stream,
        prompt_tokens=0,
        first_bytes=FirstByteHistory(),
    )


async def test_a_silent_provider_costs_its_first_byte_deadline_on_the_clock_then_the_next_answers(
    autojump_clock: trio.testing.MockClock,
):
    async with trio.open_nursery() as nursery:
        fake = FakeDispatcher(nursery, {"silent": lambda: [None], "good": lambda: [ResponseData(b"x"), END]})
        answer = Answer(fake, RouteRequest("tiny"), policy(stream=True))  # type: ignore[arg-type]
        started = trio.current_time()
        assert await answer.start() is None
        assert answer.providers == ["good"]
        assert FIRST_BYTE_MIN <= trio.current_time() - started < 2 * FIRST_BYTE_MIN
        assert fake.router.banned_until("silent") > 0
        got: list[bytes] = []

        async def emit(data: bytes) -> None:
            got.append(data)

        finish = await answer.run(emit)
        assert finish.error is None and got == [b"x"]
        assert [(p, m) for p, m, _ in fake.deliveries] == [("good", "tiny")]  # what it delivered, for routing
        await trio.testing.wait_all_tasks_blocked()  # the lost one is closed in the background
        assert fake.opened[0].closed and fake.opened[1].closed


async def test_an_answer_whose_first_event_ends_it_is_an_answer(autojump_clock: trio.testing.MockClock):
    async with trio.open_nursery() as nursery:
        fake = FakeDispatcher(nursery, {"p": lambda: [END]})
        answer = Answer(fake, RouteRequest("tiny"), policy(stream=False))  # type: ignore[arg-type]
        assert await answer.start() is None  # a provider answered: the response is a 200
        finish = await answer.run(_nothing)
        assert finish.error is None and finish.body == b""
        assert answer.usage == END.info.usage


async def test_a_round_of_busy_providers_waits_their_retry_after_on_the_clock_then_a_fresh_round_answers(
    autojump_clock: trio.testing.MockClock,
):
    busy = error_info(429, "busy", type="rate_limit_error", code="provider_busy", retryable=True, retry_after=2.0)
    scripts: dict[str, Callable[[], list[ResponseEvent | None]]] = {
        name: lambda: [ResponseFailed(busy)] for name in ("b1", "b2", "b3")
    }
    scripts["good"] = lambda: [ResponseData(b"x"), END]
    async with trio.open_nursery() as nursery:
        fake = FakeDispatcher(nursery, scripts)
        answer = Answer(fake, RouteRequest("tiny"), policy(stream=True))  # type: ignore[arg-type]
        started = trio.current_time()
        assert await answer.start() is None  # no attempt open during the wait: the adapter sleeps
        assert answer.providers == ["good"] and len(fake.opened) == 4
        assert 2.0 <= trio.current_time() - started < 3.0
        got: list[bytes] = []

        async def emit(data: bytes) -> None:
            got.append(data)

        finish = await answer.run(emit)
        assert finish.error is None and got == [b"x"]


async def _nothing(data: bytes) -> None:
    pass
