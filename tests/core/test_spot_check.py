"""Spot-checks and verdicts (core/spot_check.py, core/verdicts.py): evidence that proves an answer is a
provider's, the rule that needs two agreeing verifiers to refute, and verdicts that cannot be forged."""

from __future__ import annotations

import hashlib
import json

import pytest

from garage_p2p.core.continuation import CHAT, plan
from garage_p2p.core.receipts import encode_receipt, pack_signed, request_digest, sign_receipt
from garage_p2p.core.spot_check import (
    EvidenceInvalid,
    Outcome,
    SpotCheck,
    checkable,
    encode_evidence,
    open_evidence,
)
from garage_p2p.core.verdicts import (
    MAX_VERDICT_BYTES,
    Take,
    Verdict,
    VerdictBook,
    VerdictInvalid,
    open_verdict,
    sign_verdict,
)
from garage_p2p.core.verification import TokenScore
from tools.ledger_builders import identity, receipt

PROVIDER, CONSUMER, OTHER = identity("provider"), identity("consumer"), identity("other")
PROMPT = [1, 2, 3, 4]
ANSWER_IDS = list(range(100, 120))


def _answer_bytes(ids: list[int]) -> bytes:
    """A vLLM-shaped chat stream with token ids (what every provider is asked for)."""
    events = []
    for i, token in enumerate(ids):
        chunk: dict = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "tiny",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f" t{token}"},
                    "token_ids": [token],
                    "finish_reason": "length" if i == len(ids) - 1 else None,
                }
            ],
        }
        if i == 0:
            chunk["prompt_token_ids"] = PROMPT
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    usage = {"prompt_tokens": len(PROMPT), "completion_tokens": len(ids), "total_tokens": len(PROMPT) + len(ids)}
    events.append(b"data: " + json.dumps({"id": "chatcmpl-1", "choices": [], "usage": usage}).encode() + b"\n\n")
    return b"".join(events) + b"data: [DONE]\n\n"


def _evidence(temperature: float = 0.0, *, signer=PROVIDER, body_change=None, answer_change=None) -> bytes:
    body = plan(
        CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": temperature}, None
    ).body
    answer = _answer_bytes(ANSWER_IDS)
    raw = encode_receipt(
        receipt(
            PROVIDER,
            CONSUMER,
            "req-1",
            answer_digest=hashlib.sha256(answer).hexdigest(),
            request_digest=request_digest(CHAT, body),
        )
    )
    if body_change:
        body = {**body, **body_change}
    return encode_evidence(CHAT, body, pack_signed(raw, sign_receipt(signer, raw)), answer_change or answer)


def test_evidence_opens_to_the_provider_s_prompt_and_answer_ids():
    case = open_evidence(_evidence(0.8))
    assert case.provider == PROVIDER.peer_id and case.receipt.request_id == "req-1"
    assert case.prompt_ids == PROMPT and case.completion_ids == ANSWER_IDS and case.temperature == 0.8
    assert checkable(case) == ""


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"answer_change": _answer_bytes(ANSWER_IDS[:-1])}, "does not sign this answer"),
        ({"body_change": {"temperature": 0.0}}, "does not sign this request"),  # a sampled answer passed off as greedy
        ({"signer": OTHER}, "provider's signature"),
    ],
)
def test_evidence_that_does_not_prove_its_answer_is_refused(change, reason):
    with pytest.raises(EvidenceInvalid, match=reason):
        open_evidence(_evidence(0.8, **change))


def _scores(tokens: list[int], favourite: list[int]) -> list[TokenScore]:
    """A verifier whose favourite token at each position is ``favourite[i]``."""
    return [
        TokenScore(-0.1 if t == f else -5.0, (-0.1,) if t == f else (-0.1, -5.0), f)
        for t, f in zip(tokens, favourite, strict=True)
    ]


MODEL = ANSWER_IDS  # the advertised model's greedy answer
ELSEWHERE = [t + 1 for t in ANSWER_IDS]  # another model's favourites
NOISE = [(t * 7) % 13 for t in ANSWER_IDS]  # a verifier making numbers up


def _check() -> SpotCheck:
    return SpotCheck(open_evidence(_evidence(0.0)))


def test_an_honest_answer_passes_on_the_first_verifier():
    check = _check()
    assert check.next_verifier([PROVIDER.peer_id, "v1", "v2"]) == "v1"  # never the provider itself
    check.judged("v1", _scores(ANSWER_IDS, MODEL))
    assert check.outcome is Outcome.PASSED and check.asked == ["v1"]


def test_two_agreeing_verifiers_refute_a_substituted_model():
    check = SpotCheck(open_evidence(_evidence(0.0)))
    answer = ELSEWHERE  # the provider served another model's tokens
    for verifier in ("v1", "v2"):
        assert check.next_verifier(["v1", "v2", "v3"]) == verifier
        check.judged(verifier, _scores(answer[:20], MODEL))
    assert check.outcome is Outcome.REFUTED and check.refuters == ("v1", "v2")


def test_an_honest_answer_is_never_refuted_by_two_dishonest_verifiers_that_disagree():
    check = _check()
    check.next_verifier(["x", "y", "v"])
    check.judged("x", _scores(ANSWER_IDS, ELSEWHERE))
    check.next_verifier(["x", "y", "v"])
    check.judged("y", _scores(ANSWER_IDS, NOISE))
    assert check.outcome is None  # two failures, not one model: ask a third
    check.next_verifier(["x", "y", "v"])
    check.judged("v", _scores(ANSWER_IDS, MODEL))
    assert check.outcome is Outcome.INCONCLUSIVE and check.refuters == ()


def test_a_verifier_that_fails_an_answer_two_others_pass_is_a_dissenter():
    check = _check()
    for verifier, favourite in (("x", ELSEWHERE), ("v1", MODEL), ("v2", MODEL)):
        check.next_verifier([verifier])
        check.judged(verifier, _scores(ANSWER_IDS, favourite))
    assert check.outcome is Outcome.PASSED and check.dissenters == ["x"]


def test_with_no_verifier_left_nobody_is_blamed():
    check = _check()
    assert check.next_verifier([PROVIDER.peer_id]) is None
    assert check.outcome is Outcome.INCONCLUSIVE
    check = _check()
    for verifier in ("a", "b", "c"):
        check.next_verifier([verifier])
        check.verifier_failed(verifier, "unavailable")
    assert check.outcome is Outcome.INCONCLUSIVE


def _verdict(checker=CONSUMER, **fields) -> Verdict:
    values = dict(
        checker=checker.peer_id,
        provider=PROVIDER.peer_id,
        model="tiny",
        request_id="req-1",
        verifiers=("v1", "v2"),
        reason="20 of 20 tokens not the top choice",
        evidence_digest="ab" * 32,
        issued_ms=1,
    )
    values.update(fields)
    return Verdict(**values)


def test_verdicts_are_signed_by_their_checker_and_forgeries_refused():
    verdict = _verdict()
    assert open_verdict(sign_verdict(CONSUMER, verdict)) == verdict
    with pytest.raises(VerdictInvalid, match="signature"):
        open_verdict(sign_verdict(OTHER, verdict))  # signed by someone else than the checker it names
    with pytest.raises(VerdictInvalid, match="own checker or verifier"):
        open_verdict(sign_verdict(CONSUMER, _verdict(verifiers=(PROVIDER.peer_id, "v2"))))
    with pytest.raises(VerdictInvalid, match="exceeds"):
        open_verdict(b"A" * (MAX_VERDICT_BYTES + 1))
    with pytest.raises(VerdictInvalid):
        open_verdict(b"not base64!")


def test_the_book_rechecks_a_verdict_once_and_ignores_discredited_checkers():
    book = VerdictBook(CONSUMER.peer_id, discredited=lambda peer: peer == OTHER.peer_id)
    heard = _verdict(checker=identity("checker"))
    assert book.hear(heard) is Take.RECHECK
    assert book.hear(heard) is Take.KNOWN
    assert book.hear(_verdict(checker=OTHER)) is Take.IGNORED  # banned or fork-flagged
    assert book.hear(_verdict(checker=OTHER, provider=CONSUMER.peer_id)) is Take.IGNORED
    assert not book.refuted(PROVIDER.peer_id)
    book.checked(PROVIDER.peer_id, Outcome.PASSED, heard.checker, [])  # our re-check found it false
    assert not book.refuted(PROVIDER.peer_id) and book.records[PROVIDER.peer_id].false_verdicts == 1
    book.checked(PROVIDER.peer_id, Outcome.REFUTED, CONSUMER.peer_id, ["x"])
    assert book.refuted(PROVIDER.peer_id) and book.records["x"].dissents == 1
    assert book.hear(_verdict(checker=identity("third"), request_id="req-2")) is Take.KNOWN  # refuted already
