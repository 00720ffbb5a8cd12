"""core/deadlines.py with an injected clock: a silent provider is lost after its first-byte or
stall deadline, a live one never is, and neither deadline passes the request's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from garage_p2p.core.deadlines import (
    FIRST_BYTE_MIN,
    STALL_FACTOR,
    STALL_FLOOR,
    STALL_SAMPLES,
    FirstByteHistory,
    StreamDeadlines,
    first_byte_timeout,
    prompt_estimate,
)


def test_first_byte_deadline_follows_the_ad_and_what_was_delivered():
    assert first_byte_timeout(0.5, None, 0, 600) == FIRST_BYTE_MIN  # a default provider: seconds, not 600
    slow_ad = first_byte_timeout(3.0, None, 0, 600)
    assert slow_ad > FIRST_BYTE_MIN
    assert first_byte_timeout(0.5, 3.0, 0, 600) == slow_ad  # it delivered slower than it advertised
    assert first_byte_timeout(0.5, None, 100_000, 600) > 100  # a long prompt takes long to prefill
    assert first_byte_timeout(30.0, None, 0, 7.0) == 7.0  # never past the request's deadline


def test_a_silent_provider_is_lost_at_its_first_byte_deadline():
    d = StreamDeadlines(started=100.0, first_byte=5.0, end=700.0)
    assert d.get_timer() == 105.0
    assert d.handle_timer(104.9) is None
    lost = d.handle_timer(105.0)
    assert lost is not None and lost.kind == "first_byte" and lost.limit == 5.0


@given(st.lists(st.floats(0.001, 0.2), min_size=STALL_SAMPLES, max_size=200))
def test_a_stream_is_lost_only_after_a_silence_beyond_its_own_pace(gaps):
    d = StreamDeadlines(started=0.0, first_byte=5.0, end=1e9)
    now = 1.0
    d.on_data(now)
    for gap in gaps:
        now += gap
        assert d.handle_timer(now) is None  # a live stream at its own pace
        d.on_data(now)
    limit = d.stall_limit()
    assert STALL_FLOOR <= limit <= max(STALL_FLOOR, STALL_FACTOR * max(gaps))
    assert d.handle_timer(now + limit - 0.01) is None
    lost = d.handle_timer(now + limit)
    assert lost is not None and lost.kind == "stall"


def test_a_slow_pace_stretches_the_stall_deadline_past_the_floor():
    d = StreamDeadlines(started=0.0, first_byte=5.0, end=1e9)
    for i in range(STALL_SAMPLES + 1):
        d.on_data(float(i))  # one frame a second
    assert d.stall_limit() == STALL_FACTOR * 1.0


def test_time_spent_on_a_slow_client_is_not_the_providers_silence():
    d = StreamDeadlines(started=0.0, first_byte=5.0, end=1e9)
    d.on_data(1.0)
    d.waiting(30.0)  # the client took 29 s to read
    assert d.handle_timer(31.0) is None and d.get_timer() > 31.0


def test_the_requests_own_deadline_is_not_a_lost_provider():
    d = StreamDeadlines(started=0.0, first_byte=5.0, end=3.0)
    assert d.get_timer() == 3.0 and d.handle_timer(3.0) is None


def test_first_byte_history_is_a_bounded_moving_average():
    h = FirstByteHistory()
    h.record("a", 1.0)
    h.record("a", 2.0)
    assert 1.0 < (h.get("a") or 0) < 2.0 and h.get("b") is None
    for i in range(1000):
        h.record(f"p{i}", 1.0)
    assert len(h.seconds) <= 256 and h.get("a") is None


def test_a_long_prompt_is_estimated_long():
    short = prompt_estimate({"messages": [{"role": "user", "content": "hi"}]})
    assert 0 < short < 20 and prompt_estimate({"prompt": "x" * 30_000}) >= 10_000
    assert prompt_estimate({}) == 0
