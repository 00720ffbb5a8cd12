"""Verdicts: a refuted answer, signed by the peer that checked it, and what a peer makes of them.

A consumer whose spot-check refuted an answer (core/spot_check.py: two agreeing verifiers failed
it) signs a ``Verdict`` and gossips it (``garage/verdicts/1``). The verdict names the answer's
evidence by digest; the evidence itself (kilobytes) is fetched from the checker on demand.

A peer that hears a verdict does not take the checker's word: it fetches the evidence, opens it
(the provider's own signature binds the request and the answer) and runs the same spot-check on
verifiers of its own choosing. Only if its own check refutes the answer does it route around the
provider; if its check passes the answer, the verdict was false and the checker pays a penalty.
So one hostile peer cannot get an honest provider routed around: it would have to make honest
verifiers fail an honest answer. Verdicts from banned or fork-flagged checkers are dropped unread.

``VerdictBook`` keeps, per provider, the checks we ran and their outcomes, the verdicts we
confirmed (the provider is then *refuted*: routed around, its receipts no longer count as
contribution: core/credit.py) and the verifiers that failed answers the others passed.
Passing checks are not gossiped: they would cost every peer bandwidth for no decision.
"""

from __future__ import annotations

import base64
import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field

from .errors import PeerFault
from .gossip_guard import TopicRule
from .identity import Identity, verify
from .limits import Limits
from .messages import WireModel, decode_json
from .receipts import peer_key
from .spot_check import Outcome

TOPIC_VERDICTS = "garage/verdicts/1"
VERDICT_GOSSIP = TopicRule("verdicts", Limits(rpm=6))
"""A checker publishes a verdict per refuted provider: a few a minute is already a flood (each one
costs every hearer an evidence fetch and two prefills)."""
PROTOCOL_EVIDENCE = "/garage/evidence/1.0.0"
VERDICT_DOMAIN = b"garage-verdict/1\n"
MAX_VERDICT_BYTES = 2048
MAX_HELD = 1024
"""Verdicts a peer holds (confirmed, refused or pending), oldest forgotten first."""


class EvidenceRequest(WireModel):
    """Asks a peer for the evidence of a verdict it holds, or (no digest) for the verdicts it holds."""

    digest: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    """The verdict's ``evidence_digest``; None: list the verdicts held (a newcomer catching up)."""


MAX_LISTED = 64
"""Verdicts one reply lists at most (the newest): refuted providers are few."""


class VerdictList(WireModel):
    """The verdicts a peer holds (its own and those it confirmed), as they were gossiped."""

    verdicts: tuple[str, ...] = Field(max_length=MAX_LISTED)
    """Signed verdicts (base64, ``sign_verdict``)."""


class VerdictInvalid(PeerFault):
    """A verdict that must not be accepted (forged, malformed): its sender's fault."""


class Verdict(WireModel):
    """An answer a checker refuted, and who refuted it."""

    checker: str = Field(min_length=1, max_length=128)
    """Peer id of the consumer that checked the answer; the verdict's signer."""
    provider: str = Field(min_length=1, max_length=128)
    """Peer id of the provider whose answer was refuted."""
    model: str = Field(min_length=1, max_length=256)
    """The model the provider claimed to serve."""
    request_id: str = Field(min_length=1, max_length=64)
    """The answer's request id (its receipt's)."""
    verifiers: tuple[str, ...] = Field(min_length=2, max_length=3)
    """The agreeing verifiers that failed the answer."""
    reason: str = Field(max_length=512)
    """Their judgements, one line each."""
    evidence_digest: str = Field(pattern="^[0-9a-f]{64}$")
    """SHA-256 (hex) of the evidence bytes (core/spot_check.py ``Evidence``), fetched from the checker."""
    issued_ms: int = Field(ge=0)
    """When the checker signed it (ms since the Unix epoch, its clock)."""


def sign_verdict(identity: Identity, verdict: Verdict) -> bytes:
    """The verdict as it travels: base64(signature | verdict bytes)."""
    raw = verdict.model_dump_json(exclude_none=True).encode()
    return base64.b64encode(identity.sign(VERDICT_DOMAIN + raw) + raw)


def open_verdict(blob: bytes) -> Verdict:
    """A gossiped verdict, its checker's signature verified; VerdictInvalid if it is not one."""
    if len(blob) > MAX_VERDICT_BYTES:
        raise VerdictInvalid(f"verdict of {len(blob)} bytes exceeds {MAX_VERDICT_BYTES}")
    try:
        data = base64.b64decode(blob, validate=True)
    except ValueError:
        raise VerdictInvalid("verdict is not base64") from None
    signature, raw = data[:64], data[64:]
    try:
        verdict = decode_json(Verdict, raw)
    except PeerFault as exc:
        raise VerdictInvalid(str(exc)) from None
    if not verify(peer_key(verdict.checker), signature, VERDICT_DOMAIN + raw):
        raise VerdictInvalid("the checker's signature does not verify")
    if verdict.provider == verdict.checker or verdict.provider in verdict.verifiers:
        raise VerdictInvalid("a provider cannot be its own checker or verifier")
    return verdict


@dataclass
class Record:
    """What we know of one provider's answers."""

    passed: int = 0
    """Our checks it passed."""
    inconclusive: int = 0
    """Our checks that could not say."""
    refuted: int = 0
    """Our checks (or re-checks of others' verdicts) that refuted it."""
    refuted_by: set[str] = field(default_factory=set)
    """Checkers whose verdicts against it we confirmed (ourselves included)."""
    false_verdicts: int = 0
    """Verdicts against it that our re-check found false."""
    dissents: int = 0
    """Answers of others it failed as a verifier that the check passed."""

    def view(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "inconclusive": self.inconclusive,
            "refuted": self.refuted,
            "refuted_by": sorted(self.refuted_by),
            "false_verdicts": self.false_verdicts,
            "dissents": self.dissents,
        }


class Take(enum.Enum):
    """What to do with a verdict heard."""

    RECHECK = "recheck"
    """New and credible: fetch the evidence and check the answer ourselves."""
    KNOWN = "known"
    """Held already (a duplicate, or the provider is refuted already)."""
    IGNORED = "ignored"
    """From a checker that counts for nothing (banned, fork-flagged), or about ourselves."""


class VerdictBook:
    """Per provider: our checks, the verdicts we confirmed; the verdicts we heard."""

    def __init__(self, own_peer_id: str, discredited: Callable[[str], bool] = lambda peer_id: False) -> None:
        self.own = own_peer_id
        self.discredited = discredited
        """Peers whose verdicts count for nothing (banned, or their ledger log forked)."""
        self.records: dict[str, Record] = {}
        self._heard: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        """(checker, provider, request id) of the verdicts taken for a re-check, oldest first (a set)."""

    def record(self, provider: str) -> Record:
        return self.records.setdefault(provider, Record())

    def refuted(self, provider: str) -> bool:
        """Whether we confirmed that ``provider`` served something else than its model."""
        record = self.records.get(provider)
        return record is not None and record.refuted > 0

    def refuted_count(self) -> int:
        return sum(1 for record in self.records.values() if record.refuted)

    def checked(self, provider: str, outcome: Outcome, checker: str, dissenters: list[str]) -> None:
        """The outcome of a check (ours, or our re-check of ``checker``'s verdict)."""
        record = self.record(provider)
        if outcome is Outcome.PASSED:
            if checker == self.own:
                record.passed += 1
            else:
                record.false_verdicts += 1
        elif outcome is Outcome.REFUTED:
            record.refuted += 1
            record.refuted_by.add(checker)
        else:
            record.inconclusive += 1
        for verifier in dissenters:
            self.record(verifier).dissents += 1

    def hear(self, verdict: Verdict) -> Take:
        """A verdict from the mesh (signature checked): re-check it, or not."""
        key = (verdict.checker, verdict.provider, verdict.request_id)
        if verdict.provider == self.own or self.discredited(verdict.checker):
            return Take.IGNORED
        if key in self._heard or self.refuted(verdict.provider):
            return Take.KNOWN
        self._heard[key] = None
        while len(self._heard) > MAX_HELD:
            self._heard.popitem(last=False)
        return Take.RECHECK

    def views(self) -> dict[str, dict[str, object]]:
        """Provider → its record (``garage peers``, the admin API)."""
        return {peer: record.view() for peer, record in sorted(self.records.items())}
