"""One spot-check of one answer: its evidence, the verifiers asked, the outcome (sans-IO).

**Evidence** is what makes an answer provably a provider's: the request body it received, the
receipt it signed into END (which signs the digest of that body and of the answer's bytes), and
those bytes. Anyone can open it (``open_evidence``): check the provider's signature and both
digests, and read the prompt's and the answer's token ids (the consumer asked every provider for
them: core/continuation.py). The consumer that checks an answer and every bystander that re-checks
a verdict start from the same evidence, through the same function.

**The check** (``SpotCheck``) asks verifiers (other providers of the model) one at a time to score
the answer (core/verification.py) and stops as soon as it can say:

- the first verifier passes it: **passed** (the common case costs one prefill);
- two verifiers fail it *and agree with each other* (``verifiers_agree``: they are one model):
  **refuted**. Two verifiers that fail it but disagree with each other are not evidence (another
  substituted model, or a verifier making numbers up: the random text of a dishonest stand-in
  fails everyone);
- two verifiers pass it: **passed**, and the ones that failed it are *dissenters* (a verifier that
  fails honest answers is itself suspect: the caller counts it);
- MAX_VERIFIERS asked, or no other provider left: **inconclusive** (nobody is blamed).

A verifier whose reply is malformed is the verifier's fault (``verifier_failed``: the caller
penalises it) and uses up one of the check's asks.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from .continuation import Transcript, plan
from .endpoints import GenerationPath
from .errors import PeerFault
from .messages import WireModel, decode_json
from .receipts import Receipt, request_digest, unpack_signed
from .verification import (
    MIN_TOKENS,
    Judgement,
    TokenScore,
    judge_greedy,
    judge_sampled,
    verifiers_agree,
)

MAX_EVIDENCE_BYTES = 2 * 1024 * 1024
"""Evidence of one answer at most (body + answer, base64): larger answers are not checked."""
MAX_VERIFIERS = 3
"""Verifiers one check asks at most (one, and two more only when the first fails the answer)."""
SAMPLED_VOCAB = 2**18
"""The vocabulary size the sampled test assumes (core/verification.py's flat tail): an upper bound on
real vocabularies, because a larger tail only makes honest answers pass more easily."""
MAX_TEMPERATURE = 2.0


class EvidenceInvalid(PeerFault):
    """Evidence that does not prove what it claims (its sender's fault)."""


class Evidence(WireModel):
    """An answer, provably a provider's: what a verdict's ``evidence_digest`` names."""

    path: GenerationPath
    """The endpoint the provider served (only chat and completions answers are checked)."""
    body: dict[str, Any]
    """The request body exactly as the provider received it (RequestHead.body)."""
    receipt: str
    """The provider-signed receipt from the END frame (base64 of signature | receipt bytes)."""
    answer: str = Field(max_length=MAX_EVIDENCE_BYTES)
    """Base64 of the answer's bytes as the provider sent them (its DATA payloads, in order)."""


def encode_evidence(path: GenerationPath, body: dict[str, Any], receipt: str, answer: bytes) -> bytes:
    return (
        Evidence(path=path, body=body, receipt=receipt, answer=base64.b64encode(answer).decode())
        .model_dump_json(exclude_none=True)
        .encode()
    )


@dataclass(frozen=True, slots=True)
class Case:
    """An answer opened from its evidence, ready to be scored."""

    receipt: Receipt
    """The provider's signed receipt."""
    prompt_ids: list[int]
    """The prompt's token ids, as the provider sent them."""
    completion_ids: list[int]
    """The answer's token ids."""
    temperature: float
    """The request's sampling temperature (0: greedy)."""

    @property
    def provider(self) -> str:
        return self.receipt.provider

    @property
    def model(self) -> str:
        return self.receipt.model


def open_evidence(raw: bytes) -> Case:
    """Check evidence bytes and read the answer out of them; EvidenceInvalid saying why not."""
    if len(raw) > MAX_EVIDENCE_BYTES:
        raise EvidenceInvalid(f"evidence of {len(raw)} bytes exceeds {MAX_EVIDENCE_BYTES}")
    try:
        evidence = decode_json(Evidence, raw)
        receipt, _, _ = unpack_signed(evidence.receipt)
        answer = base64.b64decode(evidence.answer, validate=True)
    except (PeerFault, ValueError) as exc:
        raise EvidenceInvalid(f"evidence: {exc}") from None
    if receipt.request_digest != request_digest(evidence.path, evidence.body):
        raise EvidenceInvalid("the receipt does not sign this request")
    if receipt.answer_digest != hashlib.sha256(answer).hexdigest():
        raise EvidenceInvalid("the receipt does not sign this answer")
    if evidence.body.get("model") != receipt.model:
        raise EvidenceInvalid("the request is for another model than the receipt")
    temperature = evidence.body.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise EvidenceInvalid(f"temperature {temperature!r} is not one a provider serves")
    # The provider's own bytes, read the way the consumer read them (the request's plan is the one it
    # was sent with: planning the planned body again changes nothing).
    transcript = Transcript(evidence.path, plan(evidence.path, evidence.body, None))
    transcript.begin()
    fed = transcript.feed(answer)
    if fed.fault is not None:
        raise EvidenceInvalid(f"the answer breaks the protocol: {fed.fault}")
    if not transcript.done or transcript.prompt_ids is None or not transcript.tracking:
        raise EvidenceInvalid("the answer is not a whole answer with its token ids")
    return Case(receipt, transcript.prompt_ids, transcript.ids + transcript.pending, float(temperature))


def checkable(case: Case) -> str:
    """Why a case cannot be judged ("" when it can)."""
    if len(case.completion_ids) < MIN_TOKENS:
        return f"{len(case.completion_ids)} tokens: too short to judge"
    if not 0 <= case.temperature <= MAX_TEMPERATURE:
        return f"temperature {case.temperature} out of range"
    return ""


def judge(case: Case, scores: Sequence[TokenScore]) -> Judgement:
    """One verifier's scores of the case, judged at the request's temperature."""
    if case.temperature == 0:
        return judge_greedy(scores)
    return judge_sampled(scores, case.temperature, SAMPLED_VOCAB)


class Outcome(enum.Enum):
    PASSED = "passed"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"


@dataclass
class SpotCheck:
    """The verifiers of one case and what they said; ``outcome`` once it can be said."""

    case: Case
    """The answer being checked."""
    exclude: frozenset[str] = frozenset()
    """Peers never asked to verify (the checker of a verdict being re-checked)."""
    asked: list[str] = field(default_factory=list)
    """Verifiers asked, in order."""
    failed_by: dict[str, list[TokenScore]] = field(default_factory=dict)
    """Verifier → its scores, for those that failed the answer."""
    passed_by: list[str] = field(default_factory=list)
    """Verifiers that passed the answer."""
    reasons: list[str] = field(default_factory=list)
    """One line per verifier's judgement (the verdict's reason)."""
    outcome: Outcome | None = None
    """Set once the check is over."""
    refuters: tuple[str, ...] = ()
    """The two agreeing verifiers that refuted the answer."""

    def next_verifier(self, candidates: Sequence[str]) -> str | None:
        """The next verifier to ask among ``candidates`` (best first), or None: then the check ends
        inconclusive."""
        if self.outcome is not None:
            return None
        for peer in candidates:
            if peer != self.case.provider and peer not in self.asked and peer not in self.exclude:
                self.asked.append(peer)
                return peer
        self.outcome = Outcome.INCONCLUSIVE
        return None

    def judged(self, verifier: str, scores: Sequence[TokenScore]) -> Judgement:
        """A verifier's scores of the answer; may end the check."""
        judgement = judge(self.case, scores)
        self.reasons.append(f"{verifier[-8:]}: {judgement.reason}")
        if judgement.passed is False:
            for other, theirs in self.failed_by.items():
                if verifiers_agree(scores, theirs):
                    self.refuters = (other, verifier)
                    self.outcome = Outcome.REFUTED
            self.failed_by[verifier] = list(scores)
        else:
            self.passed_by.append(verifier)
            if not self.failed_by or len(self.passed_by) >= 2:
                self.outcome = Outcome.PASSED
        self._out_of_asks()
        return judgement

    def verifier_failed(self, verifier: str, reason: str) -> None:
        """The verifier could not be asked or answered garbage (its ask is used up)."""
        self.reasons.append(f"{verifier[-8:]}: {reason}")
        self._out_of_asks()

    @property
    def dissenters(self) -> list[str]:
        """Verifiers that failed an answer the check passed."""
        return list(self.failed_by) if self.outcome is Outcome.PASSED else []

    def _out_of_asks(self) -> None:
        if self.outcome is None and len(self.asked) >= MAX_VERIFIERS:
            self.outcome = Outcome.INCONCLUSIVE
