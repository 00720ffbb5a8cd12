import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.gpu_meter import GpuMeter
from garage_p2p.core.receipts import (
    ReceiptInvalid,
    check_cosignature,
    cosign_receipt,
    encode_receipt,
    expected_receipt_problem,
    pack_signed,
    sign_receipt,
    unpack_signed,
)

from .ledger_helpers import identity, receipt

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
