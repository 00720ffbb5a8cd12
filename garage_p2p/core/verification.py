"""Spot-check one answer against another provider of the same model (sans-IO).

A consumer re-verifies a random sample of the answers it received: another provider (the
verifier) prefills the prompt plus the completion, token ids as the first provider sent them, and
returns its own log-probability of every completion token (vLLM's ``prompt_logprobs`` on
``/v1/completions``, ``verification_body``). Teacher forcing: each position is scored given the
provider's own prefix, so one early disagreement does not cascade.

- **Temperature 0** (``judge_greedy``): every completion token should be the verifier's top
  choice. Honest numeric differences (another dtype, another GPU, batch order) turn near-ties
  around; so a token counts as a *miss* only when the verifier's top choice beats it by more than
  GREEDY_TOLERANCE nats, and the answer fails when misses exceed GREEDY_MISS_SHARE of its tokens
  (at least one).
- **Sampled** (``judge_sampled``): a one-sided likelihood test. Under an honest provider each
  token was drawn from the model's distribution at the request's temperature, so the sum over
  tokens of (its log-probability − that log-probability's expectation) is about normal with mean
  0; tokens from another model or random text sit far below. The verifier returns only its top-k
  per position; the rest of the vocabulary is taken as spread evenly over the remaining mass
  (a model's tail is flat next to its head), which only widens the expectation's error, so the
  threshold is a generous SAMPLED_Z standard deviations. Top-p / top-k sampling by the provider
  raises the likelihood: it can only pass more easily (one-sided).

Neither verdict blames anyone alone: a failure is escalated to a third provider (the caller's
job); ``Judgement`` says what was seen.

The rate: a substituted model fails a check with probability ``per_check`` (~1 at temperature 0,
measured); checking a share ``rate`` of answers refutes it within ``within`` answers with
probability 1 − (1 − rate · per_check) ** within. ``rate_for`` inverts that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import PeerFault

GREEDY_TOLERANCE = 0.1
"""Nats by which the verifier's top choice may beat a temperature-0 token before it is a miss."""
GREEDY_MISS_SHARE = 0.05
"""Share of a temperature-0 answer's tokens that may be misses (at least one) before it fails."""
SAMPLED_Z = 6.0
"""Standard deviations below its expectation a sampled answer's likelihood may fall before it fails."""
MIN_TOKENS = 8
"""Answers shorter than this are not judged (too little evidence either way)."""
MAX_TOP = 20
"""Top log-probabilities per position read from a verifier (vLLM's default ``max_logprobs``)."""
VERIFIERS_DIFFER_SHARE = 0.1
"""Share of positions at which two verifiers of one model may prefer different tokens (near-ties
across dtypes and GPUs) and still count as the same model."""
MAX_TOKENS = 8192
"""Completion tokens judged at most (a bound on the work a verifier's reply can cause)."""


@dataclass(frozen=True, slots=True)
class TokenScore:
    """What the verifier thought of one completion token."""

    logprob: float
    """The verifier's log-probability of the token the provider sent (temperature 1)."""
    top: tuple[float, ...]
    """The verifier's highest log-probabilities at that position, descending (at least one)."""
    top_id: int = -1
    """The token the verifier likes best there (two verifiers of one model agree on it)."""


@dataclass(frozen=True, slots=True)
class Judgement:
    """The outcome of one spot-check."""

    passed: bool | None
    """True: consistent with the verifier; False: not; None: too short to judge."""
    tokens: int
    """Completion tokens judged."""
    statistic: float
    """Temperature 0: the share of misses; sampled: the z-score of the answer's likelihood."""
    reason: str
    """One line for logs and the verdict's evidence."""


def verification_body(
    model: str, prompt_ids: Sequence[int], completion_ids: Sequence[int], top: int = 1
) -> dict[str, Any]:
    """The verifier's request: a prefill of prompt + completion returning each token's log-probability
    (one token generated: vLLM needs at least one)."""
    return {
        "model": model,
        "prompt": [*prompt_ids, *completion_ids],
        "max_tokens": 1,
        "temperature": 0,
        "prompt_logprobs": top,
    }


def scores_from_prompt_logprobs(
    rows: Any, prompt_len: int, completion_ids: Sequence[int], top: int = MAX_TOP
) -> list[TokenScore]:
    """Parse vLLM's ``prompt_logprobs`` (one row per prompt position: token id → {logprob, rank})
    for the completion's positions; PeerFault if the verifier's reply is malformed."""
    if not isinstance(rows, list) or len(rows) < prompt_len + len(completion_ids):
        raise PeerFault("the verifier's prompt_logprobs do not cover the completion")
    scores: list[TokenScore] = []
    for i, token in enumerate(completion_ids[:MAX_TOKENS]):
        row = rows[prompt_len + i]
        if not isinstance(row, Mapping) or not 0 < len(row) <= top + 1:
            raise PeerFault(f"the verifier's prompt_logprobs row {prompt_len + i} is malformed")
        values: dict[int, float] = {}
        for key, entry in row.items():
            try:
                logprob = float(entry["logprob"])
                values[int(key)] = logprob
            except (KeyError, TypeError, ValueError) as exc:
                raise PeerFault(f"the verifier's prompt_logprobs row {prompt_len + i}: {exc}") from None
            if not -1e4 <= logprob <= 0:  # also catches NaN
                raise PeerFault(f"the verifier's log-probability {logprob} is not one")
        if token not in values:
            raise PeerFault(f"the verifier did not score token {token} at position {prompt_len + i}")
        best = max(values, key=lambda k: (values[k], -k))
        scores.append(TokenScore(values[token], tuple(sorted(values.values(), reverse=True)), best))
    return scores


def judge_greedy(scores: Sequence[TokenScore]) -> Judgement:
    """A temperature-0 answer: were its tokens the verifier's top choices (within tolerance)?"""
    if len(scores) < MIN_TOKENS:
        return Judgement(None, len(scores), 0.0, f"{len(scores)} tokens: too short to judge")
    misses = sum(1 for s in scores if s.top[0] - s.logprob > GREEDY_TOLERANCE)
    allowed = max(1, math.floor(GREEDY_MISS_SHARE * len(scores)))
    share = misses / len(scores)
    passed = misses <= allowed
    word = "within" if passed else "over"
    return Judgement(
        passed, len(scores), share, f"{misses} of {len(scores)} tokens not the top choice ({word} {allowed})"
    )


def judge_sampled(scores: Sequence[TokenScore], temperature: float, vocab_size: int) -> Judgement:
    """A sampled answer: is its likelihood under the verifier plausible for draws at ``temperature``?"""
    if len(scores) < MIN_TOKENS:
        return Judgement(None, len(scores), 0.0, f"{len(scores)} tokens: too short to judge")
    if not 0 < temperature <= 2:
        raise ValueError(f"temperature {temperature} out of range")
    total = variance = 0.0
    for score in scores:
        mean, var = _expected_logprob(score.top, temperature, vocab_size)
        total += score.logprob - mean
        variance += var
    z = total / math.sqrt(max(variance, 1e-9))
    passed = z >= -SAMPLED_Z
    return Judgement(passed, len(scores), z, f"likelihood {z:+.1f} standard deviations from its expectation")


def _expected_logprob(top: tuple[float, ...], temperature: float, vocab_size: int) -> tuple[float, float]:
    """Mean and variance of log p(token) for a token drawn at ``temperature``, from the top-k and a
    flat tail over the rest of the vocabulary."""
    head = [math.exp(lp) for lp in top]
    tail_mass = max(0.0, 1.0 - sum(head))
    tail_count = max(1, vocab_size - len(top))
    support = list(top)
    weights = [p ** (1 / temperature) for p in head]
    if tail_mass > 0:
        tail_lp = math.log(tail_mass / tail_count)
        support.append(tail_lp)
        weights.append(tail_count * (tail_mass / tail_count) ** (1 / temperature))
    norm = sum(weights)
    mean = sum(w * lp for w, lp in zip(weights, support, strict=True)) / norm
    var = sum(w * (lp - mean) ** 2 for w, lp in zip(weights, support, strict=True)) / norm
    return mean, var


def verifiers_agree(a: Sequence[TokenScore], b: Sequence[TokenScore]) -> bool:
    """Whether two verifiers scored an answer as one model would: their favourite tokens differ at no
    more than VERIFIERS_DIFFER_SHARE of the positions (at least one). Two honest GPUs of one model
    differ only at near-ties; another model, or a verifier making numbers up, differs almost
    everywhere. Two failing verdicts refute a provider only when their verifiers agree."""
    if len(a) != len(b) or not a:
        return False
    differ = sum(1 for x, y in zip(a, b, strict=True) if x.top_id != y.top_id)
    return differ <= max(1, math.floor(VERIFIERS_DIFFER_SHARE * len(a)))


def detection_within(rate: float, per_check: float, within: int) -> float:
    """Probability that a provider failing each check with ``per_check`` is refuted within ``within``
    answers when a share ``rate`` of answers is checked."""
    return 1.0 - (1.0 - rate * per_check) ** within


def rate_for(target: float, per_check: float, within: int) -> float:
    """The smallest check rate that refutes such a provider within ``within`` answers with ``target``."""
    if not 0 < target < 1 or not 0 < per_check <= 1 or within < 1:
        raise ValueError("target in (0, 1), per_check in (0, 1], within >= 1")
    needed: float = (1.0 - (1.0 - target) ** (1.0 / within)) / per_check
    return min(1.0, needed)
