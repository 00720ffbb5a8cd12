import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.gpu_meter import GpuMeter, ReceiptClock
from garage_p2p.core.ledger import overclaims
from garage_p2p.core.receipts import (
    Observed,
    ReceiptInvalid,
    check_cosignature,
    cosign_receipt,
    encode_receipt,
    expected_receipt_problem,
    observed_receipt_problem,
    pack_signed,
    sign_receipt,
    unpack_signed,
)
from tools.ledger_builders import identity, receipt

A, B, C = identity("a"), identity("b"), identity("c")


def test_signed_receipt_round_trip_and_cosign():
    raw = encode_receipt(receipt(A, B, "req-1"))
    blob = pack_signed(raw, sign_receipt(A, raw))
    parsed, raw2, _ = unpack_signed(blob)
    assert raw2 == raw and parsed.request_id == "req-1"
    assert (
        expected_receipt_problem(parsed, consumer=B.peer_id, provider=A.peer_id, request_id="req-1", model="tiny")
        is None
    )
    check_cosignature(parsed, raw, cosign_receipt(B, raw))


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda raw: raw.replace(b'"completion_tokens":20', b'"completion_tokens":99'), "signature"),
        (lambda raw: raw.replace(b'"gpu_us":500000', b'"gpu_us":5000000'), "more than the wall time"),
        (lambda raw: raw[:-1], "invalid Receipt"),
    ],
)
def test_tampered_receipt_is_rejected_with_reason(change, reason):
    raw = encode_receipt(receipt(A, B, "req-1"))
    blob = pack_signed(change(raw), sign_receipt(A, raw))
    with pytest.raises(PeerFault, match=reason):
        unpack_signed(blob)


def test_wrong_signer_and_wrong_cosigner_are_rejected():
    raw = encode_receipt(receipt(A, B, "req-1"))
    with pytest.raises(ReceiptInvalid, match="provider's signature"):
        unpack_signed(pack_signed(raw, sign_receipt(C, raw)))
    parsed, _, _ = unpack_signed(pack_signed(raw, sign_receipt(A, raw)))
    with pytest.raises(ReceiptInvalid, match="counter-signature does not verify"):
        check_cosignature(parsed, raw, cosign_receipt(C, raw))
    with pytest.raises(ReceiptInvalid, match="missing counter-signature"):
        check_cosignature(parsed, raw, b"")
    # A provider signature is not a counter-signature (domain separation).
    with pytest.raises(ReceiptInvalid):
        check_cosignature(parsed, raw, sign_receipt(B, raw))


def test_consumer_refuses_receipts_that_are_not_its_own():
    r = receipt(A, B, "req-1")
    assert expected_receipt_problem(r, consumer=C.peer_id, provider=A.peer_id, request_id="req-1", model="tiny")
    assert expected_receipt_problem(r, consumer=B.peer_id, provider=C.peer_id, request_id="req-1", model="tiny")
    assert expected_receipt_problem(r, consumer=B.peer_id, provider=A.peer_id, request_id="req-2", model="tiny")
    assert expected_receipt_problem(r, consumer=B.peer_id, provider=A.peer_id, request_id="req-1", model="big")


def test_consumer_vouches_only_for_what_it_observed():
    r = receipt(A, B, "req-1", gpus=1, gpu_us=500_000, prompt_tokens=10, completion_tokens=20)
    assert observed_receipt_problem(r, Observed(wall_s=0.5, gpus=1, completion_tokens=20, prompt_tokens=10)) is None
    assert observed_receipt_problem(r, Observed(wall_s=0.5, gpus=1)) is None  # counts unknown: time only
    # Ten times the time we waited, or GPUs the ad never claimed: refused.
    assert "we waited 0.050 s" in observed_receipt_problem(r, Observed(wall_s=0.05, gpus=1))
    eight = receipt(A, B, "req-1", gpus=8, gpu_us=4_000_000)
    assert "claims 8 GPUs" in observed_receipt_problem(eight, Observed(wall_s=0.5, gpus=1))
    assert observed_receipt_problem(eight, Observed(wall_s=0.5, gpus=8)) is None
    # Tokens other than those received: refused.
    assert "21" in observed_receipt_problem(
        receipt(A, B, "req-1", completion_tokens=21), Observed(wall_s=1, gpus=1, completion_tokens=20)
    )
    assert observed_receipt_problem(
        receipt(A, B, "req-1", prompt_tokens=99), Observed(wall_s=1, gpus=1, prompt_tokens=10)
    )


def test_self_dealing_receipt_is_invalid():
    raw = encode_receipt(receipt(A, A, "req-1"))
    with pytest.raises(ReceiptInvalid, match="same peer"):
        unpack_signed(pack_signed(raw, sign_receipt(A, raw)))


requests = st.lists(
    st.tuples(st.floats(0, 100, allow_nan=False), st.floats(0.001, 50, allow_nan=False)), min_size=1, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(requests, st.integers(1, 8))
def test_gpu_seconds_never_exceed_wall_time_times_gpus(spans, gpus):
    """The physical invariant: over any interval, claimed GPU-seconds ≤ interval × GPUs."""
    events = []
    for i, (start, length) in enumerate(spans):
        events.append((start, 1, i))
        events.append((start + length, 0, i))
    events.sort()
    meter = GpuMeter(gpus)
    marks, used = {}, {}
    for now, kind, i in events:
        if kind == 1:
            marks[i] = meter.begin(now)
        else:
            used[i] = meter.end(marks[i], now)
    for i, (_start, length) in enumerate(spans):
        assert used[i] <= length * gpus + 1e-9
    lo = min(start for start, _ in spans)
    hi = max(start + length for start, length in spans)
    assert sum(used.values()) <= (hi - lo) * gpus + 1e-6
    # Busy all the time from lo to the end of the union of spans: exact.
    covered, end = 0.0, lo
    for start, length in sorted(spans):
        if start + length > end:
            covered += start + length - max(start, end)
            end = start + length
    assert sum(used.values()) == pytest.approx(covered * gpus, rel=1e-6, abs=1e-6)


def receipt_at(request_id, **fields):
    return receipt(A, B, request_id, **fields)


@settings(max_examples=200, deadline=None)
@given(requests, st.floats(0.9, 1.1), st.floats(-5.0, 5.0))
def test_receipt_times_show_no_overclaim_under_a_slewing_or_stepped_wall_clock(spans, rate, step):
    """Receipt times come off the meter's clock, so a wall clock running 10 % off (chrony slews up to 8 %)
    or stepped between busy periods never makes an honest provider's receipts look like an over-claim."""
    events = []
    for i, (start, length) in enumerate(spans):
        events.append((start, 1, i))
        events.append((start + length, 0, i))
    events.sort()
    meter, clock = GpuMeter(2), ReceiptClock()
    marks, starts, made = {}, {}, []
    for now, kind, i in events:
        # The wall clock runs at ``rate`` and is stepped by ``step`` seconds half-way through.
        wall = 1_800_000_000 + now * rate + (step if now > 50 else 0.0)
        if kind == 1:
            if meter.running == 0:
                clock.follow(now, wall)
            marks[i], starts[i] = meter.begin(now), clock.wall_ms(now, wall)
        else:
            gpu_s = meter.end(marks[i], now)
            end_ms = max(starts[i], clock.wall_ms(now, wall))
            gpu_us = min(int(gpu_s * 1e6), (end_ms - starts[i]) * 1000 * 2)
            made.append(receipt_at(f"r{i}", gpus=2, gpu_us=gpu_us, start_ms=starts[i], end_ms=end_ms))
    assert overclaims(made) == []
