"""The consumer's spot-checks, and its re-checks of verdicts it hears: off the request path.

A share ``rate`` of the provider exchanges a consumer opens is *sampled* (``Dispatcher.open``):
their answer bytes are kept, and once the answer's END came (the client has its answer already)
``offer`` queues the answer's evidence here. One task works the queue, one check at a time:

- our own check: open the evidence (core/spot_check.py), ask verifiers (other providers of the
  model, best routed first, never a refuted one) to score the answer through the mesh like any
  request (their work is receipted like any request), and record the outcome in the
  ``VerdictBook``. A refutation is signed and gossiped (mesh/verdicts.py);
- a verdict heard from the mesh: fetch its evidence from the checker, open it, and run the same
  check on our own verifiers (never the checker). Confirmed: the provider is refuted here too.
  Found false: the checker is penalised.

The queue is bounded: when checks cannot keep up, answers go unchecked (counted), requests never wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import trio

from ..core.continuation import COMPLETIONS
from ..core.errors import PeerFault
from ..core.exchange import ResponseData, ResponseEnd
from ..core.identity import Identity
from ..core.messages import RequestHead
from ..core.routing import RouteRequest
from ..core.spot_check import (
    MAX_EVIDENCE_BYTES,
    MAX_VERIFIERS,
    Case,
    Outcome,
    SpotCheck,
    checkable,
    encode_evidence,
    open_evidence,
)
from ..core.verdicts import Take, Verdict, VerdictBook, sign_verdict
from ..core.verification import MAX_TOP, TokenScore, scores_from_prompt_logprobs, verification_body
from ..mesh.host import DialError
from ..mesh.streams import StreamBroken
from ..mesh.verdicts import SERVICE, VerdictGossip
from .dispatch import Dispatcher
from .exchange import FrameExchange

log = logging.getLogger(__name__)

QUEUE = 8
"""Checks waiting at most; more answers offered meanwhile go unchecked."""
CHECK_TIMEOUT = 120.0
"""Seconds one check (every verifier it asks) may take."""
VERIFIERS_WAIT = 20.0
"""Seconds a check waits for its first verifier to be known (a newcomer's table fills in seconds)."""
VERIFIERS_POLL = 0.5
"""Seconds between two looks for that first verifier."""
MAX_REPLY_BYTES = 32 * 1024 * 1024
"""A verifier's reply at most (``prompt_logprobs`` of every position)."""
MAX_EVENTS = 100_000
"""Events of a verifier's reply at most (its size limit comes first)."""


class VerifierUnavailable(Exception):
    """A verifier that could not score the answer (busy, unreachable, its backend refused): nobody's fault."""


@dataclass(frozen=True, slots=True)
class _Job:
    evidence: bytes
    """The evidence of an answer we received (empty for a verdict heard: fetched first)."""
    verdict: Verdict | None = None
    """The verdict to re-check; None for our own check."""
    blob: bytes = b""
    """The verdict as its checker signed it (held and served once confirmed)."""
    source: str = ""
    """The peer that holds the verdict's evidence (its checker, or the peer we caught up from)."""


class SpotChecks:
    def __init__(
        self,
        dispatcher: Dispatcher,
        identity: Identity,
        book: VerdictBook,
        *,
        rate: float,
        rng: random.Random,
    ) -> None:
        self.dispatcher = dispatcher
        self.identity = identity
        self.book = book
        self.rate = rate
        """Share of answers checked (0: none)."""
        self._rng = rng
        self.gossip = VerdictGossip(dispatcher.mesh, self.heard)
        self.counts: Counter[str] = Counter()
        """Checks by outcome (``passed``, ``refuted``, ``inconclusive``, ``unchecked``, ``dropped``) and
        verdicts heard by what became of them (``verdict_confirmed``, ``verdict_false`` …): /metrics."""
        self._send, self._receive = trio.open_memory_channel[_Job](QUEUE)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.gossip.serve)
            task_status.started()
            async for job in self._receive:
                await self._run(job)

    # -- what comes in -------------------------------------------------------------------

    def sample(self) -> bool:
        """Whether to keep the next exchange's answer for a check."""
        return self.rate > 0 and self._rng.random() < self.rate

    def offer(self, head: RequestHead, exchange: FrameExchange) -> None:
        """A sampled exchange ended with its END: queue its answer's check."""
        end = exchange.end
        if exchange.kept is None or end is None or end.receipt is None:
            self.counts["unchecked"] += 1
            return
        evidence = encode_evidence(head.path, head.body, end.receipt, b"".join(exchange.kept))
        if len(evidence) > MAX_EVIDENCE_BYTES:
            self.counts["unchecked"] += 1
            return
        self._queue(_Job(evidence), "dropped")

    def heard(self, verdict: Verdict, blob: bytes, source: str) -> None:
        """A verdict from the mesh (its signature verified); ``source`` holds its evidence."""
        take = self.book.hear(verdict)
        self.counts[f"verdict_{take.value}"] += 1
        if take is Take.RECHECK:
            self._queue(_Job(b"", verdict, blob, source), "verdict_dropped")

    def _queue(self, job: _Job, overflow: str) -> None:
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self.counts[overflow] += 1

    # -- one check -----------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        verdict = job.verdict
        try:
            raw = job.evidence if verdict is None else await self.gossip.fetch(verdict, job.source)
            case = open_evidence(raw)
            if verdict is not None and (case.provider, case.receipt.request_id, case.model) != (
                verdict.provider,
                verdict.request_id,
                verdict.model,
            ):
                raise PeerFault("the evidence is of another answer than the verdict's")
        except PeerFault as exc:
            if verdict is None:  # the provider's own bytes and receipt: the cosigner checked both already
                log.warning("an answer's evidence does not open: %s", exc)
                self.counts["unchecked"] += 1
            else:
                self.counts["verdict_invalid"] += 1
                self.dispatcher.mesh.penalise(job.source, SERVICE, f"verdict: {exc}")
            return
        except (DialError, StreamBroken, trio.TooSlowError) as exc:
            log.info("the evidence of a verdict by %s is out of reach: %s", verdict and verdict.checker, exc)
            self.counts["verdict_unreachable"] += 1
            return
        if verdict is None and self.book.refuted(case.provider):
            self.counts["unchecked"] += 1  # refuted meanwhile (an answer queued before): nothing left to learn
            return
        if why := checkable(case):
            self.counts["unchecked" if verdict is None else "verdict_unjudgeable"] += 1
            if verdict is not None:  # a verdict on an answer nobody can judge is not one
                self.dispatcher.mesh.penalise(verdict.checker, SERVICE, f"verdict on an answer that {why}")
            return
        check = SpotCheck(case, exclude=frozenset() if verdict is None else frozenset({verdict.checker}))
        with trio.move_on_after(CHECK_TIMEOUT):
            await self._verify(check)
        outcome = check.outcome or Outcome.INCONCLUSIVE
        checker = self.identity.peer_id if verdict is None else verdict.checker
        self.book.checked(case.provider, outcome, checker, check.dissenters)
        log.info(
            "spot-check of %s's answer %s: %s (%s)",
            case.provider,
            case.receipt.request_id,
            outcome.value,
            "; ".join(check.reasons),
        )
        if verdict is not None:
            self.counts[
                {Outcome.PASSED: "verdict_false", Outcome.REFUTED: "verdict_confirmed"}.get(
                    outcome, "verdict_inconclusive"
                )
            ] += 1
            if outcome is Outcome.PASSED:
                self.dispatcher.mesh.penalise(verdict.checker, SERVICE, "a verdict our verifiers found false")
            elif outcome is Outcome.REFUTED:
                self.gossip.hold(job.blob, raw)  # for peers that join later
            return
        self.counts[outcome.value] += 1
        if outcome is Outcome.REFUTED:
            await self._publish(case, check, raw)

    async def _verify(self, check: SpotCheck) -> None:
        case = check.case
        for asked in range(MAX_VERIFIERS):
            verifier = None
            # The first verifier may not be known yet: a newcomer re-checks the verdicts it caught up
            # on from its first connections, before their table syncs have told it who serves the
            # model; it found nobody, called the check inconclusive and never looked again.
            # Later verifiers are not waited for; the scope must not expire at once all the same: an
            # expired one cancels the route's own lookup of the model at its first checkpoint.
            with trio.move_on_after(VERIFIERS_WAIT if asked == 0 else math.inf):
                while True:
                    routed = await self.dispatcher.route(RouteRequest(model=case.model, expected_tokens=1))
                    verifier = check.next_verifier([c.peer_id for c in routed.candidates])
                    if verifier is not None or asked > 0:
                        break
                    await trio.sleep(VERIFIERS_POLL)
            if verifier is None:
                return
            try:
                scores = await self._ask(verifier, routed.addrs.get(verifier, ()), case)
            except PeerFault as exc:
                check.verifier_failed(verifier, str(exc))
                self.dispatcher.mesh.penalise(verifier, SERVICE, f"as a verifier: {exc}")
            except (VerifierUnavailable, DialError, StreamBroken) as exc:
                check.verifier_failed(verifier, f"unavailable: {exc}")
            else:
                check.judged(verifier, scores)
            if check.outcome is not None:
                return

    async def _ask(self, verifier: str, addrs: tuple[str, ...], case: Case) -> list[TokenScore]:
        """The verifier's scores of the answer: a prefill of prompt + completion ids."""
        top = 1 if case.temperature == 0 else MAX_TOP
        head = RequestHead(
            request_id=f"check-{uuid.uuid4().hex[:24]}",
            path=COMPLETIONS,
            body=verification_body(case.model, case.prompt_ids, case.completion_ids, top),
            timeout=CHECK_TIMEOUT,
        )
        deadline = trio.current_time() + CHECK_TIMEOUT
        exchange = await self.dispatcher.open(verifier, addrs, head, case.model, deadline, sample=False)
        self.dispatcher.router.started(verifier)
        body = bytearray()
        try:
            for _ in range(MAX_EVENTS):
                event = await exchange.next_event()
                if isinstance(event, ResponseData):
                    body += event.data
                    if len(body) > MAX_REPLY_BYTES:
                        raise PeerFault(f"a verifier's reply over {MAX_REPLY_BYTES} bytes")
                elif isinstance(event, ResponseEnd):
                    break
                elif exchange.protocol_fault is not None:
                    raise PeerFault(exchange.protocol_fault)
                else:
                    raise VerifierUnavailable(event.info.error.message)
        finally:
            await exchange.aclose()  # after END: counter-signed in the background (the check's receipt)
        try:
            rows = json.loads(body)["choices"][0]["prompt_logprobs"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PeerFault("the verifier's reply is not a completion with prompt_logprobs") from None
        return scores_from_prompt_logprobs(rows, len(case.prompt_ids), case.completion_ids, top)

    async def _publish(self, case: Case, check: SpotCheck, evidence: bytes) -> None:
        verdict = Verdict(
            checker=self.identity.peer_id,
            provider=case.provider,
            model=case.model,
            request_id=case.receipt.request_id,
            verifiers=check.refuters,
            reason="; ".join(check.reasons)[:512],
            evidence_digest=hashlib.sha256(evidence).hexdigest(),
            issued_ms=int(time.time() * 1000),
        )
        log.warning("refuted %s: it does not serve %s (%s)", case.provider, case.model, verdict.reason)
        await self.gossip.publish(sign_verdict(self.identity, verdict), evidence)
