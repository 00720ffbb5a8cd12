"""Serve inference requests that arrive over the mesh (or from our own gateway).

One request per stream: read the HEAD, admit it (concurrency limit, drain
state), forward it to the backend with httpx, pass the response bytes back in
coalesced DATA frames and finish with exactly one END or ERROR frame.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import httpx
import trio

from ..core.admission import Admission, Outcome
from ..core.backend_answer import FINISHING, metered_body, rename_model, stamp_fingerprint
from ..core.coalesce import Coalescer
from ..core.errors import PeerFault
from ..core.exchange import RequestReader, data_frame, end_frame, error_frame
from ..core.gpu_meter import GpuMeter, ReceiptClock
from ..core.identity import Identity
from ..core.limits import Limits
from ..core.messages import MAX_ERROR_BODY, EndInfo, ErrorInfo, Load, RequestHead, Timings, Usage, error_info
from ..core.multipart import MultipartError, replace_field
from ..core.penalties import Penalise
from ..core.receipts import (
    AnswerDigest,
    Receipt,
    ReceiptInvalid,
    encode_receipt,
    gpu_us_of,
    pack_signed,
    request_digest,
    sign_receipt,
)
from ..core.sse import SseSplitter, event_data
from ..mesh.streams import PeerStream, StreamBroken, close_quietly, read_some, write_all
from ..trio_util import single_exceptions
from .backend import Backend
from .usage import answer_type, body_usage, event_usage

if TYPE_CHECKING:
    from ..gateway.metrics import Metrics

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
COSIGN_TIMEOUT = 10.0
"""How long a provider waits for the consumer's counter-signature after END."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DATA_FRAME_MAX = 256 * 1024

SendFrame = Callable[[bytes], Awaitable[None]]


class ReceiptSink(Protocol):
    """Where counter-signed receipts go (the ledger); None disables receipts."""

    async def append_own(self, raw: bytes, cosig: bytes) -> object: ...

    async def note_refusal(self, consumer: str) -> None: ...


@dataclass
class _Outcome:
    """How a served request ended: what ``/metrics`` counts."""

    status: int = 499
    """200 for an END; an error's status; 499 while unfinished (the consumer went away)."""
    usage: Usage | None = None
    """The usage the backend reported."""

    def error(self, info: ErrorInfo) -> bytes:
        """The ERROR frame for ``info``, noting its status."""
        self.status = info.status
        return error_frame(info)


@dataclass
class _Relay:
    """How one answer is relayed: what is changed back (core/backend_answer.py), what is held."""

    strip_usage: bool
    """Drop the usage-only chunk: the client did not ask for it (the provider did, to meter)."""
    backend_model: str
    """The model name the backend answers with."""
    model: str
    """The name the client asked for (differs for a model served under an alias)."""
    finishing: int = 1
    """Finish chunks still to come before the answer's end is held back."""
    held: list[bytes] = field(default_factory=list)
    """Events from the answer's end on, sent with END."""
    usage: Usage | None = None
    """The usage the backend reported."""
    fingerprint: str | None = None
    """The dropped usage chunk's ``system_fingerprint``, for the held finish chunks."""
    read_usage: Callable[[bytes], Usage | None] | None = None
    """How a path other than chat and completions reports its usage in its body or an event
    (provider/usage.py); None: chat's and completions' way."""


@dataclass
class _Metering:
    """One request's GPU accounting, from admission to END."""

    consumer: str | None
    meter: GpuMeter
    mark: float
    start_ms: int
    receipt: bytes | None = None
    """The receipt bytes signed into the END frame, if any."""
    tokens: int = 0
    """Prompt + completion tokens the backend reported (charged to the consumer's rate)."""
    outcome: _Outcome = field(default_factory=_Outcome)
    """Where the request's status and usage are noted (the metrics read them)."""
    answer: AnswerDigest = field(default_factory=AnswerDigest)
    """The bytes of every DATA frame sent: the receipt signs their digest (the answer, provably ours)."""
    generating: str | None = None
    """The model whose load (``in_flight``) counts the request until its backend answered it."""


DONE_EVENT = b"data: [DONE]"
"""The stream's last event (trailing newlines aside)."""
SERVICE = "openai"
"""Faults on ``/garage/openai/1.0.0`` are counted under this name."""
LOCAL = "local"
"""The admission party of requests from this peer itself (its own users and job lines)."""
QUEUE_WAIT = 2.0
"""Seconds a request waits for a slot before a 429: the consumer would rather try another provider."""


class ProviderService:
    def __init__(
        self,
        backends: dict[str, Backend],
        client: httpx.AsyncClient,
        *,
        identity: Identity | None = None,
        receipts: ReceiptSink | None = None,
        max_concurrency: int = 64,
        peer_limits: Limits = Limits(),
        contributor: Callable[[str], bool] = lambda peer: False,
        max_head_bytes: int = 4 * 1024 * 1024 + 64 * 1024,
        coalesce_delay: float = 0.020,
        coalesce_bytes: int = 16 * 1024,
        penalise: Penalise = lambda peer, service, reason: None,
    ) -> None:
        self.backends = backends
        self.client = client
        self.identity = identity
        self.receipts = receipts
        self.meters: dict[str, GpuMeter] = {}
        """Time-weighted GPU accounting per backend."""
        self.clock = ReceiptClock()
        """Receipt times on the meters' clock (see ``ReceiptClock``)."""
        self.max_concurrency = max_concurrency
        self.admission = Admission(max_concurrency, peer_limits)
        """Slots shared among consumer peers: per-peer limits, a fair line, contributors first."""
        self.contributor = contributor
        """Whether a peer gave the mesh more GPU time than it used (its ledger balance)."""
        self._started: dict[object, trio.Event] = {}
        self.max_head_bytes = max_head_bytes
        self.coalesce_delay = coalesce_delay
        self.coalesce_bytes = coalesce_bytes
        self.in_flight = 0
        self.in_flight_by_model: dict[str, int] = {}
        """Requests being served per model (advertised as live load)."""
        self.backend_load: dict[str, Load] = {}
        """Each backend's latest scraped load (vLLM's /metrics), by model."""
        self.draining = False
        self.penalise = penalise
        """Where protocol violations go (``Mesh.penalise``: counted per service, enough of them ban the peer)."""
        self.metrics: Metrics | None = None
        """Where served requests are counted (``/metrics``); None counts nothing."""
        self._idle = trio.Event()
        self._idle.set()
        self._cuttable: set[trio.CancelScope] = set()
        """The backend calls in flight, for ``release_in_flight``."""
        self._released: set[trio.CancelScope] = set()

    def live_load(self, model: str) -> Load:
        """The live load of ``model``'s backend, as ads, END frames and busy replies carry it."""
        load = self.backend_load.get(model) or Load()
        return load.model_copy(update={"in_flight": self.in_flight_by_model.get(model, 0)})

    def serves(self, model: str) -> bool:
        backend = self.backends.get(model)
        return backend is not None and backend.healthy

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()

    def release_in_flight(self) -> int:
        """Cut every answer in flight with a retryable 503 (its consumer fails over); how many were cut."""
        for scope in self._cuttable:
            self._released.add(scope)
            scope.cancel()
        return len(self._cuttable)

    # -- the mesh side --------------------------------------------------------

    async def handle_stream(self, stream: PeerStream) -> None:
        """libp2p stream handler for ``/garage/openai/1.0.0``."""
        consumer = stream.peer_id
        reader = RequestReader(self.max_head_bytes)
        try:
            head = None
            with trio.move_on_after(HEAD_TIMEOUT):
                while head is None:
                    data = await read_some(stream)
                    if not data:
                        reader.eof()
                    head = reader.feed(data)
            if head is None:
                raise PeerFault("no request head within the time limit")
        except PeerFault as exc:
            self._penalise(consumer, str(exc))
            with trio.move_on_after(2):
                try:
                    await write_all(
                        stream,
                        error_frame(error_info(400, f"bad request frame: {exc}", code="bad_frame")),
                    )
                except StreamBroken:
                    pass
            await close_quietly(stream, reset=True)
            return
        except StreamBroken:
            await close_quietly(stream, reset=True)
            return

        async def send(frame: bytes) -> None:
            await write_all(stream, frame)

        try:
            receipt = await self.serve(head, send, consumer=consumer)
        except StreamBroken:
            log.info("consumer %s went away during %s", consumer, head.request_id)
            await close_quietly(stream, reset=True)
            return
        if receipt is not None:
            await self._collect_cosignature(stream, reader, consumer, receipt)
        await close_quietly(stream)

    async def _collect_cosignature(self, stream, reader: RequestReader, consumer: str, receipt: bytes) -> None:
        """Wait for the consumer's COSIGN frame and log the receipt; remember a consumer that refuses."""
        assert self.receipts is not None
        try:
            with trio.move_on_after(COSIGN_TIMEOUT):
                while reader.cosig is None:
                    data = await read_some(stream)
                    if not data:
                        break
                    reader.feed(data)
        except PeerFault as exc:
            self._penalise(consumer, str(exc))
        except StreamBroken:
            pass
        if reader.cosig is None:
            await self.receipts.note_refusal(consumer)
            return
        try:
            await self.receipts.append_own(receipt, reader.cosig)
        except ReceiptInvalid as exc:
            self._penalise(consumer, f"bad counter-signature: {exc}")
            await self.receipts.note_refusal(consumer)

    def _penalise(self, peer: str, reason: str) -> None:
        self.penalise(peer, SERVICE, reason)

    # -- serving --------------------------------------------------------------

    async def serve(self, head: RequestHead, send: SendFrame, consumer: str | None = None) -> bytes | None:
        """Serve one request, sending frames through ``send``; StreamBroken passes up.

        For a remote ``consumer`` (and a configured receipt sink) the END frame
        carries a signed receipt; its bytes are returned, to be counter-signed.
        """
        model = head.body.get("model")
        outcome = _Outcome()
        if self.metrics is None:
            return await self._serve(head, send, consumer, outcome)
        live = self.metrics.begin(
            "provider", head.request_id, model if isinstance(model, str) else "", head.stream, consumer
        )

        async def observed(frame: bytes) -> None:
            self.metrics.data(live, frame)
            await send(frame)

        try:
            return await self._serve(head, observed, consumer, outcome)
        finally:
            usage = outcome.usage
            self.metrics.end(
                live, outcome.status, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0
            )

    async def _serve(self, head: RequestHead, send: SendFrame, consumer: str | None, outcome: _Outcome) -> bytes | None:
        start = trio.current_time()
        model = head.body.get("model")
        backend = self.backends.get(model) if isinstance(model, str) else None
        if self.draining:
            await send(
                outcome.error(error_info(503, "provider is shutting down", code="provider_draining", retryable=True))
            )
            return None
        if backend is None or not backend.healthy:
            await send(
                outcome.error(
                    error_info(
                        404,
                        f"this provider does not serve model {model!r}",
                        param="model",
                        code="model_not_found",
                        retryable=True,
                    )
                )
            )
            return None
        party = consumer or LOCAL
        refusal = await self._admit(party)
        if refusal is not None:
            # The queue that made us refuse, for the consumer's router (its ad of us may be old).
            await send(outcome.error(refusal.model_copy(update={"load": self.live_load(backend.name)})))
            return None
        meter = self.meters.setdefault(backend.name, GpuMeter(backend.gpus))
        meter.gpus = backend.gpus
        now = trio.current_time()
        if all(m.running == 0 for m in self.meters.values()):
            self.clock.follow(now, time.time())
        # GPU time counts from admission; the request's timings (queue_ms) from its arrival.
        metering = _Metering(
            consumer if self.receipts is not None else None,
            meter,
            meter.begin(now),
            self.clock.wall_ms(now, time.time()),
            outcome=outcome,
        )
        try:
            return await self._serve_admitted(head, send, backend, metering, start)
        finally:
            self._release(party, metering.tokens)

    def _release(self, party: str, tokens: int) -> None:
        """A slot of ``party`` frees: start whoever the line says is next."""
        for ticket in self.admission.release(party, tokens, trio.current_time()):
            self._started.pop(ticket).set()

    async def _admit(self, party: str) -> ErrorInfo | None:
        """A slot now, or after a wait in line (QUEUE_WAIT at most); else the error to answer with."""
        ticket = object()
        contributor = party == LOCAL or self.contributor(party)
        decision = self.admission.request(party, ticket, trio.current_time(), contributor=contributor)
        if decision.outcome is Outcome.REFUSE:
            verdict = decision.verdict
            return error_info(
                429,
                f"provider limit reached for this peer: {verdict.limit}",
                code="provider_busy",
                retryable=True,
                retry_after=max(1.0, verdict.retry_after),
            )
        if decision.outcome is Outcome.START:
            return None
        started = self._started[ticket] = trio.Event()
        try:
            with trio.move_on_after(QUEUE_WAIT):
                await started.wait()
        except BaseException:
            # Cancelled in line (the stream broke, the peer stops): give the place, or the slot, back.
            if started.is_set():
                self._release(party, 0)
            else:
                self._started.pop(ticket, None)
                self.admission.cancel(ticket)
            raise
        if started.is_set():
            return None
        self._started.pop(ticket, None)
        self.admission.cancel(ticket)
        return error_info(
            429,
            f"provider is at its concurrency limit ({self.max_concurrency} requests)",
            code="provider_busy",
            retryable=True,
            retry_after=1.0,
        )

    async def _serve_admitted(
        self, head: RequestHead, send: SendFrame, backend: Backend, metering: _Metering, start: float
    ) -> bytes | None:
        meter = metering.meter
        self.in_flight += 1
        self.in_flight_by_model[backend.name] = self.in_flight_by_model.get(backend.name, 0) + 1
        metering.generating = backend.name
        self._idle = trio.Event() if self.in_flight == 1 else self._idle
        try:
            with trio.move_on_after(head.timeout) as scope:
                self._cuttable.add(scope)
                try:
                    frame = await self._forward(head, backend, send, start, metering)
                finally:
                    self._cuttable.discard(scope)
            if scope in self._released:
                # Cut for the owner (provider/owner_watch.py): a 503 mid-answer is "provider lost", so
                # the consumer continues the answer on another provider; no receipt for a cut answer.
                self._released.discard(scope)
                metering.receipt = None
                frame = metering.outcome.error(
                    error_info(
                        503, "the provider stepped aside for its owner", code="provider_draining", retryable=True
                    )
                )
            elif scope.cancelled_caught:
                metering.receipt = None
                frame = metering.outcome.error(
                    error_info(
                        504,
                        f"the provider did not finish within {head.timeout:.0f} s",
                        code="deadline_exceeded",
                    )
                )
            await send(frame)
            return metering.receipt
        finally:
            if metering.mark >= 0:
                meter.end(metering.mark, trio.current_time())
            self.in_flight -= 1
            self._answered(metering)
            if self.in_flight == 0:
                self._idle.set()

    async def _forward(
        self, head: RequestHead, backend: Backend, send: SendFrame, start: float, metering: _Metering
    ) -> bytes:
        """Run the backend call; returns the final END or ERROR frame to send."""
        backend_model = backend.backend_model or backend.name
        body = {**head.body, "model": backend_model}
        strip_usage = False
        raw = head.raw is not None
        content_type = None
        if raw:
            content, headers = raw_request(head, backend)
        elif head.stream:
            # Meter every stream: ask for the usage chunk, and hide it again
            # from a client that did not ask for it (core/backend_answer.py).
            body, strip_usage = metered_body(body)
        if not raw:
            content, headers = json.dumps(body, separators=(",", ":")).encode(), {"content-type": "application/json"}
        read_usage = (event_usage if head.stream else body_usage) if raw else None
        relay = _Relay(strip_usage, backend_model, backend.name, read_usage=read_usage)
        queue_ms = (trio.current_time() - start) * 1000
        try:
            async with self.client.stream(
                "POST",
                backend.url(head.path),
                content=content,
                headers=headers,
                timeout=httpx.Timeout(connect=5.0, read=head.timeout, write=30.0, pool=5.0),
            ) as response:
                first_byte_ms = (trio.current_time() - start) * 1000
                if response.status_code >= 400:
                    return metering.outcome.error(await _backend_error(response))
                if head.stream:
                    n = body.get("n")
                    choices = n if isinstance(n, int) and 1 <= n <= 128 else 1
                    usage, tail = await self._relay_stream(response, send, relay, metering.answer, choices)
                else:
                    if raw:
                        content_type = answer_type(response.headers.get("content-type"))
                    # Only a JSON answer names the model; any other (content_type) passes as it is.
                    usage, tail = await self._relay_body(response, relay, metering.answer, rename=content_type is None)
        except httpx.ConnectError as exc:
            backend.healthy = False
            return metering.outcome.error(
                error_info(
                    502,
                    f"the provider's backend is unreachable: {exc}",
                    code="backend_unavailable",
                    retryable=True,
                )
            )
        except httpx.HTTPError as exc:
            return metering.outcome.error(
                error_info(502, f"the provider's backend failed: {exc}", code="backend_error")
            )
        timings = Timings(
            queue_ms=queue_ms,
            first_byte_ms=first_byte_ms,
            total_ms=(trio.current_time() - start) * 1000,
        )
        signed = self._receipt(head, backend, usage, metering)
        self._answered(metering)
        # The last data and END go in one write: one muxer frame fewer per request.
        end = EndInfo(
            usage=usage, timings=timings, receipt=signed, load=self.live_load(backend.name), content_type=content_type
        )
        return tail + end_frame(end)

    def _answered(self, metering: _Metering) -> None:
        """The backend is done with the request: the load END frames carry stops counting it. Its
        own END reports the others (a consumer knows its own requests), and two answers ending
        together do not count each other while their ENDs are written."""
        if metering.generating is not None:
            self.in_flight_by_model[metering.generating] -= 1
            metering.generating = None

    def _receipt(self, head: RequestHead, backend: Backend, usage: Usage | None, metering: _Metering) -> str | None:
        """End the request's GPU metering; for a remote consumer, the signed receipt for END."""
        now = trio.current_time()
        gpu_seconds = metering.meter.end(metering.mark, now)
        metering.mark = -1.0
        metering.tokens = (usage.prompt_tokens + usage.completion_tokens) if usage else 0
        metering.outcome.status, metering.outcome.usage = 200, usage
        if metering.consumer is None or self.identity is None:
            return None
        end_ms = max(metering.start_ms, self.clock.wall_ms(now, time.time()))
        receipt = Receipt(
            request_id=head.request_id,
            consumer=metering.consumer,
            provider=self.identity.peer_id,
            model=backend.name,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            gpus=backend.gpus,
            # Two clocks: never claim more than the wall time the receipt shows.
            gpu_us=min(gpu_us_of(gpu_seconds), (end_ms - metering.start_ms) * 1000 * backend.gpus),
            start_ms=metering.start_ms,
            end_ms=end_ms,
            answer_digest=metering.answer.hexdigest(),
            request_digest=request_digest(head.path, head.body, head.raw),
        )
        raw = encode_receipt(receipt)
        metering.receipt = raw
        return pack_signed(raw, sign_receipt(self.identity, raw))

    async def _relay_body(
        self, response: httpx.Response, relay: _Relay, answer: AnswerDigest, rename: bool = True
    ) -> tuple[Usage | None, bytes]:
        """Read the whole body; (usage, its DATA frames). ``rename``: give the model the client's
        name (a JSON answer)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise httpx.DecodingError("backend response exceeds the size limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        if rename:
            body = rename_model(body, relay.backend_model, relay.model)
        answer.update(body)
        frames = b"".join(data_frame(body[i : i + DATA_FRAME_MAX]) for i in range(0, len(body), DATA_FRAME_MAX))
        if relay.read_usage is not None:
            return relay.read_usage(body), frames
        try:
            usage = _usage(json.loads(body).get("usage"))
        except (ValueError, AttributeError):
            usage = None
        return usage, frames

    async def _relay_stream(
        self, response: httpx.Response, send: SendFrame, relay: _Relay, answer: AnswerDigest, choices: int = 1
    ) -> tuple[Usage | None, bytes]:
        """Pass events on as they come; (usage, the DATA frame still to send)."""
        coalescer = Coalescer(self.coalesce_delay, self.coalesce_bytes)
        splitter = SseSplitter()
        chunks_send, chunks_receive = trio.open_memory_channel[bytes](64)

        async def pump() -> None:
            # Reading the backend in its own task keeps a cancelled read (the
            # coalescing timer below) from tearing an httpx stream in half.
            async with chunks_send:
                try:
                    async for chunk in response.aiter_bytes():
                        await chunks_send.send(chunk)
                except trio.BrokenResourceError:
                    pass  # the loop below stopped reading: the answer is over, nothing to pass on

        with single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                # Held back from the last choice's finish chunk on (``n`` choices finish one by one);
                # from the first one when the usage chunk is dropped: the finish chunks then get
                # its system_fingerprint, which comes last.
                relay.finishing = 1 if relay.strip_usage else choices
                await self._coalesce_loop(chunks_receive, coalescer, splitter, send, relay, answer)
        # The finish chunk, the usage and [DONE] go out with END, in one write: a provider killed
        # between them left its consumer a whole answer (it ends an answer at its finish chunk) and
        # no receipt to counter-sign (CI: test_ledger_crash and the soak lost receipts to SIGKILLs).
        held = relay.held
        if relay.fingerprint is not None:
            held = [stamp_fingerprint(event, relay.fingerprint) for event in held]
        tail = (coalescer.flush(trio.current_time()) or b"") + b"".join(held) + splitter.rest()
        answer.update(tail)
        return relay.usage, (data_frame(tail) if tail else b"")

    @staticmethod
    async def _coalesce_loop(
        chunks: trio.MemoryReceiveChannel[bytes],
        coalescer: Coalescer,
        splitter: SseSplitter,
        send: SendFrame,
        relay: _Relay,
        answer: AnswerDigest,
    ) -> None:
        async with chunks:
            while True:
                deadline = coalescer.deadline
                chunk = None
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    try:
                        chunk = await chunks.receive()
                    except trio.EndOfChannel:
                        return
                now = trio.current_time()
                if chunk is None:
                    out = coalescer.due(now)
                else:
                    kept = []
                    for event in splitter.feed(chunk):
                        event = rename_model(event, relay.backend_model, relay.model)
                        if relay.read_usage is not None:
                            found, usage_only = relay.read_usage(event), None
                        else:
                            found, usage_only = _stream_usage(event)
                        if found is not None:
                            relay.usage = found
                        if relay.strip_usage and usage_only is not None:
                            fingerprint = usage_only.get("system_fingerprint")
                            relay.fingerprint = fingerprint if isinstance(fingerprint, str) else None
                            continue
                        relay.finishing -= event.count(FINISHING)
                        if relay.held or relay.finishing <= 0 or event.rstrip() == DONE_EVENT:
                            relay.held.append(event)  # the answer's end: held for the tail, sent with END
                        else:
                            kept.append(event)
                    out = coalescer.push(b"".join(kept), now) if kept else coalescer.due(now)
                if out:
                    answer.update(out)
                    await send(data_frame(out))


def raw_request(head: RequestHead, backend: Backend) -> tuple[bytes, dict[str, str]]:
    """The backend request of a path other than chat and completions: the client's bytes and
    content type, with only the model's name changed if the backend knows it by another name."""
    assert head.raw is not None
    content = head.raw
    ours, theirs = head.body.get("model"), backend.backend_model or backend.name
    if ours != theirs:
        content = renamed(content, head.content_type, theirs)
    return content, ({"content-type": head.content_type} if head.content_type else {})


def renamed(content: bytes, content_type: str | None, model: str) -> bytes:
    """A raw body naming ``model`` instead (a JSON object re-encoded, a multipart field replaced;
    a body that is neither is sent as it is, and the backend says what is wrong with it)."""
    try:
        if content_type is not None and content_type.lower().startswith("multipart/"):
            return replace_field(content, content_type, "model", model)
        body = json.loads(content)
    except (MultipartError, ValueError):
        return content
    if not isinstance(body, dict):
        return content
    body["model"] = model
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Usage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0), completion_tokens=int(raw.get("completion_tokens") or 0)
        )
    except (TypeError, ValueError):
        return None


def _stream_usage(event: bytes) -> tuple[Usage | None, dict | None]:
    """(usage, the chunk if it is a usage-only chunk) for one SSE event."""
    if b'"usage"' not in event or b'"prompt_tokens"' not in event:
        return None, None
    data = event_data(event)
    try:
        chunk = json.loads(data) if data else None
    except ValueError:
        return None, None
    if not isinstance(chunk, dict):
        return None, None
    return _usage(chunk.get("usage")), (chunk if chunk.get("choices") == [] else None)


async def _backend_error(response: httpx.Response) -> ErrorInfo:
    """A backend's HTTP error for the ERROR frame: its body to pass on unchanged (a JSON object)
    and an OpenAI error summarising it (vLLM has used two shapes)."""
    raw = b""
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) > MAX_ERROR_BODY:
            break
    status = response.status_code
    message, type_, code, param, passed = f"backend answered HTTP {status}", None, None, None, None
    try:
        payload = json.loads(raw[:MAX_ERROR_BODY])
        error = payload.get("error", payload) if isinstance(payload, dict) else {}
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            type_ = error.get("type") if isinstance(error.get("type"), str) else None
            code = str(error["code"]) if error.get("code") is not None else None
            param = error.get("param") if isinstance(error.get("param"), str) else None
        if isinstance(payload, dict) and len(raw) <= MAX_ERROR_BODY:
            passed = raw.decode()
    except ValueError:  # UnicodeDecodeError included
        if raw:
            message = raw[:500].decode(errors="replace")
    status = status if 400 <= status <= 599 else 502
    info = error_info(status, message, type=type_, code=code, param=param, retryable=status in (429, 502, 503, 504))
    return info.model_copy(update={"body": passed})
