"""Drive one client request through ``core.request_policy``: the trio side of the policy.

``Answer`` executes the policy's commands (route a round, open a provider's stream, close it,
ban a provider, hand bytes to the client) and feeds it what happens, each read of a provider's
stream bounded by the policy's timer (first byte, stall, the request's end). Every request takes
this one path, whether it may fail over (a ``Transcript``) or not (``x-garage-failover: off``, a
request that would not continue exactly: the provider's bytes pass through).

``start`` runs until a provider answers or the request is over, so the endpoint can choose its
response (an error status, or a stream); ``run`` goes on to the end. Each attempt is its own
exchange; a continuation has its own request id (``<id>.<n>``), receipt and counter-signature:
a provider's receipt covers what it generated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from ..core.messages import RequestHead, Usage
from ..core.request_policy import (
    Answering,
    Ban,
    Close,
    Command,
    Delivered,
    Emit,
    Finish,
    Moved,
    Open,
    RequestPolicy,
    Route,
)
from ..core.routing import RouteRequest
from ..mesh.host import DialError
from .dispatch import Dispatcher
from .exchange import FrameExchange

log = logging.getLogger(__name__)

MAX_STEPS = 10_000_000
"""Events of one request at most (a bound on the loop; the answer's size limit comes first)."""
CLOSE_TIMEOUT = 5.0
"""Seconds to close a lost provider's exchange (a reset), shielded from the answer's cancellation."""

Emitter = Callable[[bytes], Awaitable[None]]


class Answer:
    """One client request, its attempts and the provider currently answering it."""

    def __init__(self, dispatcher: Dispatcher, route: RouteRequest, policy: RequestPolicy) -> None:
        self._dispatcher = dispatcher
        self._route = route
        self.policy = policy
        self.exchange: FrameExchange | None = None
        """The exchange of the current attempt."""
        self._attempt = 0
        self._addrs: dict[str, tuple[str, ...]] = {}
        self._early: list[bytes] = []
        """Client bytes of the first event, held until ``run`` has somewhere to send them."""

    @property
    def head(self) -> RequestHead:
        return self.policy.head

    @property
    def providers(self) -> list[str]:
        """Every provider that answered part of the request, in order."""
        return self.policy.providers

    @property
    def usage(self) -> Usage | None:
        """The client's usage (every provider's tokens), once the answer finished."""
        return self.policy.usage

    async def start(self) -> Finish | None:
        """Run until a provider answers (None) or the request is over without one (its end)."""
        return await self._drive(None)

    async def run(self, emit: Emitter) -> Finish:
        """Run the answer to its end, handing the client's bytes to ``emit``."""
        for data in self._early:
            await emit(data)
        self._early = []
        finish = await self._drive(emit)
        assert finish is not None
        return finish

    async def aclose(self) -> None:
        """Close the current attempt's exchange (a reset unless its answer ended)."""
        if self.exchange is not None:
            await self.exchange.aclose()

    async def _drive(self, emit: Emitter | None) -> Finish | None:
        policy = self.policy
        for _ in range(MAX_STEPS):
            while commands := policy.commands():
                for command in commands:
                    await self._execute(command, emit)
            if emit is None and policy.answered:
                return None  # the response begins; ``run`` goes on (or finds the answer already whole)
            if policy.finished is not None:
                if policy.finished.error is None:
                    await self.aclose()  # END after the answer: counter-signed in the background
                return policy.finished
            if policy.pausing:
                # Busy providers asked for a moment (their retry_after): no attempt is open.
                timer = policy.get_timer()
                assert timer is not None
                await trio.sleep_until(timer)
                policy.handle_timer(trio.current_time())
                continue
            exchange = self.exchange
            assert exchange is not None, "the policy waits for an attempt that is not open"
            policy.waiting(trio.current_time())
            timer = policy.get_timer()
            event = None
            with trio.move_on_at(timer if timer is not None else trio.current_time()):
                event = await exchange.next_event()
            if event is None:
                policy.handle_timer(trio.current_time())
            else:
                policy.received(self._attempt, event, trio.current_time())
        raise AssertionError("a request of more steps than MAX_STEPS")  # the size limits end it first

    async def _execute(self, command: Command, emit: Emitter | None) -> None:
        policy = self.policy
        dispatcher = self._dispatcher
        if isinstance(command, Route):
            route = self._route
            if command.expected_tokens is not None:
                route = replace(route, expected_tokens=command.expected_tokens)
            routed = await dispatcher.route(route)
            self._addrs.update(routed.addrs)
            policy.routed(routed.candidates, routed.known, route, trio.current_time())
        elif isinstance(command, Open):
            await self._open(command)
        elif isinstance(command, Close):
            if self.exchange is not None and self.exchange.provider == command.provider:
                # Closed in the background: resetting a frozen provider's stream may wait on its
                # full window, and the answer should not.
                dispatcher.background.start_soon(_close, self.exchange)
        elif isinstance(command, Ban):
            log.info("%s: provider %s failed", self.head.request_id, command.provider)
            dispatcher.router.failed(command.provider, time.time())
            if command.disconnect and command.provider != dispatcher.mesh.peer_id:
                # No answer at all: the connection is dead (a relay that vanished, a link that
                # dropped) though it still looks open. Close it, so the next dial finds another path.
                await dispatcher.mesh.disconnect(command.provider)
        elif isinstance(command, Moved):
            log.info(
                "%s: the relay's limit cut the connection to %s; moving the answer",
                self.head.request_id,
                command.provider,
            )
            await dispatcher.mesh.drop_relayed(command.provider)
        elif isinstance(command, Answering):
            dispatcher.router.succeeded(command.provider)
            if not command.first:
                log.info("%s: continued at %s", self.head.request_id, command.provider)
        elif isinstance(command, Delivered):
            dispatcher.delivered(command.provider, self._route.model, command.delivery)
        elif isinstance(command, Emit):
            if emit is None:
                self._early.append(command.data)
            else:
                await emit(command.data)
        elif isinstance(command, Finish) and command.error is not None and policy.answered:
            log.warning("%s failed on %s: %s", self.head.request_id, policy.providers, command.error.error.message)

    async def _open(self, command: Open) -> None:
        policy = self.policy
        self._attempt = command.attempt
        self.exchange = None
        try:
            exchange = await self._dispatcher.open(
                command.provider,
                self._addrs.get(command.provider, ()),
                command.head,
                self._route.model,
                policy.end,
            )
        except DialError as exc:
            log.info("provider %s unreachable: %s", command.provider, exc)
            policy.open_failed(command.attempt, str(exc), trio.current_time())
            return
        self._dispatcher.router.started(command.provider)
        self.exchange = exchange
        policy.opened(command.attempt, trio.current_time(), self._dispatcher.mesh.relay_deadline(command.provider))


async def _close(exchange: FrameExchange) -> None:
    """Close (reset) a lost provider's exchange, within CLOSE_TIMEOUT."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        await exchange.aclose()
