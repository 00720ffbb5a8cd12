"""One client request across providers: attempts, deadlines, bans, failover and errors (sans-IO).

The gateway (gateway/answer.py) and the simulator (sim/world.py) drive the same ``RequestPolicy``,
the aioquic way: they tell it what happened (``routed``, ``opened``, ``open_failed``,
``received``, ``handle_timer``), each with ``now`` on their monotonic clock, and execute the
commands it queues (``commands()``): ``Route``, ``Open``, ``Close``, ``Ban``, ``Moved``,
``Answering``, ``Delivered``, ``Emit``, ``Finish``. ``get_timer()`` says when to call ``handle_timer`` next.

The rules it owns:

- A routing round tries at most MAX_ATTEMPTS providers, best first. A provider that cannot be
  dialled, is busy (429), fails with a retryable error, or sends nothing within its first-byte
  deadline (``core.deadlines``) before its first byte is banned and the next one is tried. A
  failure that is not retryable (the request's own 4xx) ends the request at once.
- A round whose candidates all failed that way is followed by a fresh one (the router banned them,
  so it ranks others), up to MAX_ROUNDS per start of the answer: at once when none was busy, after
  the shortest ``retry_after`` when some were (``Route`` then comes from ``handle_timer``), as an
  OpenAI client does on a 429 with Retry-After, if that wait is at most MAX_BUSY_WAIT and ends
  before the request's deadline. A busy mesh costs the client a second, not an error it would
  retry itself.
- The last round that finds nobody answers 404 (nobody serves the model), 503 (none eligible or none
  reachable), 429 ``providers_busy`` with the shortest ``retry_after`` (every one tried was
  busy) or 504 (the request's deadline passed). A fresh round with nobody eligible left answers what
  the round before it found.
- Once a provider answers, its stream is watched for stalls (``StreamDeadlines``). A provider
  lost mid-answer (``continuation.lost``: cut, stalled, broken, failed backend) is banned; with a
  ``Transcript`` (failover on) the answer continues at another provider from its clean boundary,
  in a new round; without one (``x-garage-failover: off`` or a request that would not continue
  exactly) the answer ends with the provider's error. "No provider could continue" says both why
  the provider was lost and why no other took over.
- A streamed attempt that ends (its END came) reports what the provider delivered: its TTFT and
  tokens/s (``Delivered``, for ``Router.delivered``: routing believes delivery over benchmarks).
- A loss at the relay's limit (``core.relaying``: the attempt's connection was relayed and the
  relay's announced deadline came) after the attempt brought tokens is no fault of the provider:
  ``Moved`` instead of ``Ban`` (the relayed connection is dropped, so the continuation dials a new
  circuit or takes a direct connection, possibly to the same provider), and it does not count
  against ``MAX_FAILOVERS``.

Without a transcript the provider's bytes pass through untouched (a non-streamed client gets
the provider's body); with one, the client's bytes are the transcript's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from .capabilities import CapabilityAd
from .continuation import Transcript, lost
from .deadlines import Expired, FirstByteHistory, StreamDeadlines, first_byte_timeout
from .delivery import Delivery, attempt_delivery
from .exchange import ResponseData, ResponseEnd, ResponseEvent, ResponseFailed, truncated_failure
from .messages import EndpointPath, ErrorInfo, RequestHead, Usage, dumps, error_info, vllm_error
from .relaying import cut_by_relay
from .routing import Candidate, RouteRequest

MAX_ATTEMPTS = 3
"""Providers tried per routing round."""
MAX_ROUNDS = 3
"""Routing rounds per start of the answer (its first byte, and each continuation)."""
MAX_BUSY_WAIT = 5.0
"""Seconds the policy waits at most for busy providers before a fresh round; a longer
``retry_after`` goes to the client as the 429 it is."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""A passed-through non-streamed body larger than this is refused (the endpoint's response limit)."""
FIRST_BYTE_PARTS = ("rtt", "relay", "ttft")
"""The router's estimate terms that make up a provider's advertised time to first byte."""


# -- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Rank the providers for the next round and call ``routed``."""

    expected_tokens: int | None
    """Tokens the round is to generate (a continuation's remainder); None: the client's request."""


@dataclass(frozen=True, slots=True)
class Open:
    """Open a stream to ``provider`` and send ``head``; then call ``opened`` or ``open_failed``."""

    attempt: int
    """The attempt's number (events of an older attempt are ignored)."""
    provider: str
    """The provider's peer id."""
    head: RequestHead
    """The request head to send."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the attempt's stream: reset it if unfinished (the provider stops generating)."""

    attempt: int
    """The attempt to close."""
    provider: str
    """Its provider."""


@dataclass(frozen=True, slots=True)
class Ban:
    """The provider failed this request: ban it for a while (``Router.failed``)."""

    provider: str
    """The provider's peer id."""
    disconnect: bool
    """True when its connection sent nothing at all: close it, the next dial finds another path."""


@dataclass(frozen=True, slots=True)
class Moved:
    """The provider's relay cut its connection at the relay's limit (core/relaying.py): not the
    provider's fault. Close our relayed connections to it, so the continuation dials a new circuit
    (or takes a direct connection); the provider is not banned and may continue the answer."""

    provider: str
    """The provider's peer id."""


@dataclass(frozen=True, slots=True)
class Answering:
    """The attempt's provider sent its first event (``Router.succeeded``)."""

    provider: str
    """The provider's peer id."""
    first: bool
    """True for the answer's first provider: the client's response may begin."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """The attempt's provider finished a streamed answer: what it delivered (``Router.delivered``)."""

    provider: str
    """The provider's peer id."""
    delivery: Delivery
    """Its TTFT and tokens/s as we measured them (durations: no clock to convert)."""


@dataclass(frozen=True, slots=True)
class Emit:
    """Bytes for a streaming client."""

    data: bytes
    """Server-sent events, in order."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The request is over; nothing more comes."""

    error: ErrorInfo | None
    """The error to end with (an SSE error event once streaming, else the response), or None."""
    body: bytes | None = None
    """A non-streamed client's response body (None for a stream or an error)."""


Command = Route | Open | Close | Ban | Moved | Answering | Delivered | Emit | Finish


def no_candidate_error(known: Sequence[CapabilityAd], request: RouteRequest) -> ErrorInfo:
    """Why a round found no provider to try: nobody serves the model (404), or none is eligible."""
    if not known:
        # As vLLM answers a model it does not serve (no peer in the mesh does).
        return vllm_error(404, f"The model `{request.model}` does not exist.", type="NotFoundError", param="model")
    offers = [offer for ad in known for offer in ad.models if offer.name == request.model]
    if offers and not any(offer.serves(request.path) for offer in offers):
        return error_info(
            404,
            f"no provider of the model {request.model!r} serves {request.path}",
            param="model",
            code="path_not_served",
        )
    pinned = [o for ad in known if ad.peer_id == request.pinned_peer for o in ad.models if o.name == request.model]
    if request.pinned_peer is not None and not any(o.serves(request.path) for o in pinned):
        on = f" on {request.path}" if pinned else ""
        return error_info(
            503,
            f"peer {request.pinned_peer} does not serve {request.model!r}{on} (x-garage-peer)",
            code="pinned_peer_unavailable",
        )
    if request.region is not None:
        regions = sorted({ad.region or "unset" for ad in known})
        return error_info(
            503,
            f"no provider of {request.model!r} in region {request.region!r} (x-garage-region); "
            f"providers are in: {', '.join(regions)}",
            code="no_provider_in_region",
        )
    return error_info(
        503,
        f"every provider of {request.model!r} failed recently; try again shortly",
        code="no_provider_available",
    )


def deadline_error(timeout: float, *, answered: bool) -> ErrorInfo:
    """The request's own deadline passed: before any provider answered, or mid-answer."""
    message = (
        f"no complete answer within {timeout:.0f} s" if answered else f"no provider answered within {timeout:.0f} s"
    )
    return error_info(504, message, code="deadline_exceeded")


def _first_byte_error(limit: float) -> ErrorInfo:
    return error_info(
        504,
        f"the provider sent nothing within {limit:.1f} s",
        code="first_byte_deadline",
        retryable=True,
    )


@dataclass(slots=True)
class _Round:
    """Providers tried for one start of the answer (the first, or a continuation)."""

    head: RequestHead
    """The head every attempt of the round sends."""
    prompt_tokens: int
    """The prompt's length (estimated, or exact for a continuation), for the first-byte deadline."""
    candidates: list[Candidate]
    """The providers to try, best first (MAX_ATTEMPTS at most)."""
    tried: int = 0
    """Candidates tried so far."""
    busy: float | None = None
    """The shortest ``retry_after`` of the busy providers (None: none was busy)."""
    last: ErrorInfo | None = None
    """The latest failure."""
    expected_tokens: int | None = None
    """What ``Route`` asks the router for (a continuation's remainder; None: the client's request)."""
    number: int = 1
    """The round's number within its start of the answer (MAX_ROUNDS at most)."""
    before: ErrorInfo | None = None
    """The error of the round before it, if it is a fresh round after one that failed."""


class RequestPolicy:
    """One client request, from routing to its last byte or error."""

    def __init__(
        self,
        head: RequestHead,
        model: str,
        now: float,
        *,
        transcript: Transcript | None,
        client_stream: bool,
        prompt_tokens: int,
        first_bytes: FirstByteHistory,
    ) -> None:
        self.head = head
        """The client's request as the first provider gets it."""
        self.model = model
        self.transcript = transcript
        """The answer across providers (failover on), or None (bytes pass through)."""
        self.client_stream = client_stream
        self.first_bytes = first_bytes
        """What each provider delivered to us before (shared by the consumer's requests)."""
        self.end = now + head.timeout
        """The request's own deadline (absolute)."""
        self.providers: list[str] = []
        """Every provider that answered part of the request, in order."""
        self.attempts = 0
        """Attempts opened (or tried to open)."""
        self.failovers = 0
        """Continuations begun at another provider after a loss mid-answer."""
        self.finished: Finish | None = None
        """The request's end, once it came."""
        self.end_usage: Usage | None = None
        """The usage the last provider's END reported (the client's when nothing failed over)."""
        self.end_content_type: str | None = None
        """The content type the last provider's END gave its whole answer (None: JSON)."""
        self._commands: deque[Command] = deque()
        self._round = _Round(head, prompt_tokens, [])
        self._routing = True
        self._resume_at: float | None = None
        """When a fresh round starts after busy providers' ``retry_after`` (None: not waiting)."""
        self._provider: str | None = None
        self._relay_deadline: float | None = None
        """When a relay cuts the current attempt's connection (None: direct, or no limit)."""
        self._generated_at_open = 0
        """Tokens the answer had when the current attempt opened (a move must have made progress)."""
        self._deadlines: StreamDeadlines | None = None
        self._sent = 0.0
        self._first_at = 0.0
        """When the current attempt's first event came."""
        self._lost: ErrorInfo | None = None
        self._body: list[bytes] = []
        self._size = 0
        if transcript is not None:
            transcript.begin()
        self._commands.append(Route(None))

    # -- what the driver reads ----------------------------------------------------------------

    def commands(self) -> list[Command]:
        """The commands queued since the last call, in order."""
        out = list(self._commands)
        self._commands.clear()
        return out

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def pausing(self) -> bool:
        """True while no attempt is open and the policy waits for its timer (busy providers'
        ``retry_after``) before the next round."""
        return self._resume_at is not None and not self.done

    @property
    def answered(self) -> bool:
        """True once a provider answered: the client's response has begun."""
        return bool(self.providers)

    @property
    def usage(self) -> Usage | None:
        """The client's usage (every provider's tokens), once the answer finished."""
        return self.transcript.usage if self.transcript is not None else self.end_usage

    def get_timer(self) -> float | None:
        """When to call ``handle_timer`` (absolute), or None once done."""
        if self.done:
            return None
        if self._resume_at is not None:
            return min(self._resume_at, self.end)
        if self._deadlines is None:
            return self.end  # routing or dialling: the driver bounds a dial by its own timeout
        return self._deadlines.get_timer()

    # -- events ----------------------------------------------------------------------------------

    def routed(
        self, candidates: Sequence[Candidate], known: Sequence[CapabilityAd], request: RouteRequest, now: float
    ) -> None:
        """The ranked candidates of the round ``Route`` asked for; ``known``: every provider of the
        model the driver knows (to say why there is nobody to try)."""
        if self.done or not self._routing:
            return
        self._routing = False
        self._round.candidates = list(candidates[:MAX_ATTEMPTS])
        if not self._round.candidates:
            return self._round_failed(self._round.before or no_candidate_error(known, request))
        self._next(now)

    def opened(self, attempt: int, now: float, relay_deadline: float | None = None) -> None:
        """The attempt's stream is open and its head sent: its first-byte deadline starts.
        ``relay_deadline``: when the relay carrying it will cut its connection, if it is relayed."""
        if self.done or attempt != self.attempts or self._deadlines is not None:
            return
        self._relay_deadline = relay_deadline
        self._generated_at_open = self.transcript.generated if self.transcript is not None else 0
        remaining = max(0.0, self.end - now)
        limit = remaining
        if self._round.head.stream:
            candidate = self._round.candidates[self._round.tried - 1]
            advertised = sum(candidate.parts.get(part, 0.0) for part in FIRST_BYTE_PARTS)
            delivered = self.first_bytes.get(candidate.peer_id)
            limit = first_byte_timeout(advertised, delivered, self._round.prompt_tokens, remaining)
        self._sent = now
        self._deadlines = StreamDeadlines(started=now, first_byte=limit, end=self.end)

    def open_failed(self, attempt: int, reason: str, now: float) -> None:
        """The attempt's provider could not be reached (no route, refused, dial timeout)."""
        if self.done or attempt != self.attempts or self._deadlines is not None:
            return
        assert self._provider is not None
        self._commands.append(Ban(self._provider, disconnect=False))
        self._round.last = error_info(503, f"provider unreachable: {reason}", code="provider_unreachable")
        self._next(now)

    def received(self, attempt: int, event: ResponseEvent, now: float) -> None:
        """An event of the attempt's exchange."""
        if self.done or attempt != self.attempts or self._deadlines is None:
            return
        if self._deadlines.last is None:
            if isinstance(event, ResponseFailed):
                return self._refused(event.info, event.truncated, now)
            self._first_event(now)
        if isinstance(event, ResponseData):
            self._deadlines.on_data(now)
            self._data(event.data, now)
        elif isinstance(event, ResponseEnd):
            self.end_usage = event.info.usage
            self.end_content_type = event.info.content_type
            self._delivered(event, now)
            if self.transcript is not None and not self.transcript.done:
                # An END without the stream's [DONE]: the answer is not whole.
                self._lose(truncated_failure("the answer ended without its last event"), now)
            else:
                self._complete()
        else:
            self._lose(event, now)

    def waiting(self, now: float) -> None:
        """The driver starts waiting for the next event at ``now`` (time it spent on a slow
        client before is not the provider's silence)."""
        if self._deadlines is not None:
            self._deadlines.waiting(now)

    def handle_timer(self, now: float) -> None:
        """A timer of ``get_timer`` fired (early is fine: nothing happens)."""
        if self.done:
            return
        if now >= self.end:
            if self._provider is not None and self._deadlines is not None:
                self._commands.append(Close(self.attempts, self._provider))
            answering = self._deadlines is not None and self._deadlines.last is not None
            return self._finish(self._with_loss(deadline_error(self.head.timeout, answered=answering)))
        if self._resume_at is not None:
            if now >= self._resume_at:
                self._resume_at = None
                self._route()
            return
        if self._deadlines is None:
            return
        expired = self._deadlines.handle_timer(now)
        if expired is None:
            return
        if self._deadlines.last is None:
            # Silent past its first-byte deadline: lost, as if it had failed (its connection may be
            # fine, the liveness pings judge that).
            return self._refused(_first_byte_error(expired.limit), False, now)
        self._lose(_stalled(expired), now)

    # -- before the first byte -------------------------------------------------------------------

    def _next(self, now: float) -> None:
        """Open the round's next candidate, or fail the round."""
        self._deadlines = None
        self._provider = None
        rnd = self._round
        if now >= self.end:
            return self._round_failed(deadline_error(self.head.timeout, answered=False))
        if rnd.tried >= len(rnd.candidates):
            return self._round_exhausted(now)
        candidate = rnd.candidates[rnd.tried]
        rnd.tried += 1
        self.attempts += 1
        self._provider = candidate.peer_id
        self._commands.append(Open(self.attempts, candidate.peer_id, rnd.head))

    def _refused(self, info: ErrorInfo, truncated: bool, now: float) -> None:
        """The attempt failed before its first event: the next candidate, if the failure allows."""
        assert self._provider is not None
        self._commands.append(Close(self.attempts, self._provider))
        if not info.retryable:
            return self._round_failed(info)
        # No answer at all on a truncated stream: the connection is dead though it looks open.
        self._commands.append(Ban(self._provider, disconnect=truncated))
        if info.status == 429:
            retry = info.retry_after or 1.0
            self._round.busy = retry if self._round.busy is None else min(self._round.busy, retry)
        self._round.last = info
        self._next(now)

    def _exhausted(self) -> ErrorInfo:
        """The error of a round whose candidates all failed."""
        rnd = self._round
        if rnd.busy is not None:
            return error_info(
                429,
                "every provider of this model is busy",
                code="providers_busy",
                retry_after=rnd.busy,
            )
        detail = f" (last: {rnd.last.error.message})" if rnd.last else ""
        return error_info(
            503,
            f"no provider of {self.model!r} could be reached{detail}",
            code="no_provider_available",
        )

    def _round_exhausted(self, now: float) -> None:
        """Every candidate of the round failed before its first byte: a fresh round (at once, or
        after the busy providers' ``retry_after``) if the rules allow one, else the request's error."""
        rnd = self._round
        info = self._exhausted()
        wait = rnd.busy or 0.0
        if rnd.number >= MAX_ROUNDS or wait > MAX_BUSY_WAIT or now + wait >= self.end:
            return self._round_failed(info)
        self._round = _Round(
            rnd.head, rnd.prompt_tokens, [], expected_tokens=rnd.expected_tokens, number=rnd.number + 1, before=info
        )
        if wait > 0:
            self._resume_at = now + wait
        else:
            self._route()

    def _route(self) -> None:
        """Ask the driver for the round's candidates."""
        self._routing = True
        self._commands.append(Route(self._round.expected_tokens))

    def _round_failed(self, info: ErrorInfo) -> None:
        """Nobody started this round: the request's error (with the loss that began it, if any)."""
        self._finish(self._with_loss(info))

    def _with_loss(self, info: ErrorInfo) -> ErrorInfo:
        """``info`` as the end of a continuation: the lost provider's error, saying why nobody took over."""
        if self._lost is None:
            return info
        message = f"{self._lost.error.message}; no provider could continue the answer: {info.error.message}"
        error = self._lost.error.model_copy(update={"message": message[:8192]})
        return self._lost.model_copy(update={"error": error, "body": None})  # the backend's body says less

    def _first_event(self, now: float) -> None:
        assert self._provider is not None
        self.first_bytes.record(self._provider, now - self._sent)
        self._first_at = now
        self._commands.append(Answering(self._provider, first=not self.providers))
        self.providers.append(self._provider)
        self._lost = None

    # -- answering -------------------------------------------------------------------------------

    def _delivered(self, end: ResponseEnd, now: float) -> None:
        """The attempt's END: what its provider delivered, if the answer was streamed (a body's
        first byte is its last: no TTFT nor pace to read)."""
        assert self._provider is not None
        rnd = self._round
        if not rnd.head.stream:
            return
        if self.transcript is not None:
            tokens = self.transcript.generated - self._generated_at_open  # counted by us
        else:
            tokens = end.info.usage.completion_tokens if end.info.usage else 0
        rtt = rnd.candidates[rnd.tried - 1].parts.get("rtt", 0.0)
        delivery = attempt_delivery(
            sent=self._sent, first=self._first_at, ended=now, rtt=rtt, tokens=tokens, end=end.info
        )
        if delivery is not None:
            self._commands.append(Delivered(self._provider, delivery))

    def _data(self, data: bytes, now: float) -> None:
        if self.transcript is None:
            if self.client_stream:
                self._commands.append(Emit(data))
                return
            self._size += len(data)
            if self._size > MAX_RESPONSE_BYTES:
                assert self._provider is not None
                self._commands.append(Close(self.attempts, self._provider))
                return self._finish(error_info(502, "the provider's response is too large", code="response_too_large"))
            self._body.append(data)
            return
        fed = self.transcript.feed(data)
        if fed.out:
            self._commands.append(Emit(fed.out))
        if fed.fault is not None:
            failure = error_info(
                502,
                f"the provider sent an invalid response: {fed.fault}",
                code="provider_protocol_error",
            )
            self._lose(ResponseFailed(failure), now)

    def _lose(self, failure: ResponseFailed, now: float) -> None:
        """The answering provider failed: fail over if it is lost and the answer can go on."""
        provider = self._provider
        assert provider is not None
        self._commands.append(Close(self.attempts, provider))
        if not lost(failure.info, failure.truncated):
            return self._finish(failure.info)
        transcript = self.transcript
        # A move that brought no token is no move: a relay cutting at once would otherwise loop.
        progressed = transcript is None or transcript.generated > self._generated_at_open
        if progressed and cut_by_relay(self._relay_deadline, now):
            self._commands.append(Moved(provider))
            if transcript is not None:
                transcript.moves += 1  # a move is no failover: it does not count against MAX_FAILOVERS
        else:
            self._commands.append(Ban(provider, disconnect=False))
        if transcript is None:
            return self._finish(failure.info)
        if transcript.done:
            return self._complete()  # lost after its [DONE]: the client has the whole answer
        if transcript.can_continue():
            return self._finish(failure.info)
        if transcript.ended():
            # The answer is whole (its finish chunk came, or every token asked for): end it here.
            out = transcript.finish_here()
            if out:
                self._commands.append(Emit(out))
            return self._complete()
        self._continue(failure.info, now)

    def _continue(self, lost_info: ErrorInfo, now: float) -> None:
        """A new round that continues the answer from the transcript's clean boundary."""
        assert self.transcript is not None
        self._lost = lost_info
        self.failovers += 1
        body = self.transcript.continuation()
        path = self.transcript.attempt_path  # the client's own path when nothing had arrived yet
        self.transcript.begin()
        self._deadlines = None
        self._provider = None
        remaining = self.end - now
        if remaining <= 0:
            return self._round_failed(deadline_error(self.head.timeout, answered=True))
        head = RequestHead(
            request_id=f"{self.head.request_id}.{self.transcript.attempts - 1}"[:64],
            path=cast(EndpointPath, path),
            body=body,
            timeout=min(remaining, self.head.timeout),
        )
        left = body.get("max_tokens")
        prompt = body.get("prompt")
        self._round = _Round(
            head,
            len(prompt) if isinstance(prompt, list) else 0,
            [],
            expected_tokens=left if isinstance(left, int) else None,
        )
        self._route()

    def _complete(self) -> None:
        """The answer is whole."""
        if self.client_stream:
            return self._finish(None)
        if self.transcript is None:
            return self._finish(None, b"".join(self._body))
        failure = self.transcript.backend_failure()
        if failure is not None:
            return self._finish(failure)
        self._finish(None, dumps(self.transcript.assemble()))

    def _finish(self, error: ErrorInfo | None, body: bytes | None = None) -> None:
        self._deadlines = None
        self._resume_at = None
        self.finished = Finish(error, body)
        self._commands.append(self.finished)


def _stalled(expired: Expired) -> ResponseFailed:
    return truncated_failure(f"{expired.kind}: nothing for {expired.waited:.1f} s")
