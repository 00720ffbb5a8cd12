"""Rate and concurrency limits: what is admitted, what is refused, when to come back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.limits import Limiter, Limits, retry_after_header


def test_requests_per_minute_refuses_the_extra_request_and_says_when():
    limiter = Limiter()
    limits = Limits(rpm=3)
    for _ in range(3):
        assert limiter.admit("k", limits, 0.0).ok
        limiter.done("k", 10, 0.0)
    refused = limiter.admit("k", limits, 0.0)
    assert not refused.ok and refused.limit == "requests per minute"
    assert refused.retry_after == 20.0  # one request per 20 s refills
    assert not limiter.admit("k", limits, 19.9).ok
    assert limiter.admit("k", limits, 20.0).ok


def test_tokens_per_minute_counts_what_was_used_and_blocks_until_paid_back():
    limiter = Limiter()
    limits = Limits(tpm=600)
    assert limiter.admit("k", limits, 0.0).ok
    limiter.done("k", 900, 0.0)  # over the minute's allowance: the bucket is 300 in debt
    refused = limiter.admit("k", limits, 1.0)
    assert not refused.ok and refused.limit == "tokens per minute"
    assert abs(refused.retry_after - 29.0) < 0.01  # 290 tokens still owed at 10 tokens/s
    assert limiter.admit("k", limits, 30.1).ok


def test_concurrency_counts_running_requests_only():
    limiter = Limiter()
    limits = Limits(concurrency=2)
    assert limiter.admit("k", limits, 0).ok and limiter.admit("k", limits, 0).ok
    refused = limiter.admit("k", limits, 0)
    assert not refused.ok and refused.limit == "concurrent requests"
    limiter.done("k", 0, 0)
    assert limiter.admit("k", limits, 0).ok
    assert limiter.running("k") == 2


def test_parties_are_independent_and_unlimited_means_unlimited():
    limiter = Limiter()
    assert limiter.admit("a", Limits(rpm=1), 0).ok
    assert not limiter.admit("a", Limits(rpm=1), 0).ok
    assert limiter.admit("b", Limits(rpm=1), 0).ok
    for _ in range(1000):
        assert limiter.admit("c", Limits(), 0).ok


def test_a_lowered_limit_applies_at_once():
    limiter = Limiter()
    for _ in range(5):
        assert limiter.admit("k", Limits(rpm=100), 0).ok
    assert limiter.admit("k", Limits(rpm=1), 0).ok  # the level is clipped to the new capacity: one left
    assert not limiter.admit("k", Limits(rpm=1), 0).ok


def test_retry_after_header_is_whole_seconds_at_least_one():
    assert retry_after_header(0.01) == "1" and retry_after_header(20.0) == "20" and retry_after_header(20.2) == "21"


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.integers(1, 120),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=300),
)
def test_admitted_requests_never_exceed_the_minutes_allowance(rpm, gaps):
    # In any window of 60 s, at most rpm (the burst) + rpm (the refill) requests start.
    limiter = Limiter()
    now, starts = 0.0, []
    for gap in gaps:
        now += gap
        verdict = limiter.admit("k", Limits(rpm=rpm), now)
        if verdict.ok:
            starts.append(now)
            limiter.done("k", 0, now)
        else:
            assert verdict.retry_after > 0
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 60) <= 2 * rpm
