"""Fuzzing every decoder that reads bytes from the network: only PeerFault, never anything else.

- the frame decoder, against a reference parser, in arbitrary chunkings, with
  its buffer bounded by the frame type's limit plus the header;
- signed capability ads: arbitrary bytes, and valid ads bit-flipped, cut,
  extended, edited and re-signed by another key, or blown up;
- ledger entries, compressed pages (zip bombs included) and the ledger's
  JSON messages, on random and mutated input and on random JSON;
- the request and response state machines on random frame sequences.

Each test counts the inputs it tried; ``pytest -s`` prints the totals.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import tracemalloc
import zlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garage_p2p.core.capabilities import (
    AD_DOMAIN,
    MAX_AD_BYTES,
    AdStale,
    CapabilityAd,
    GpuSpec,
    Hardware,
    ModelOffer,
    make_ad,
    open_ad,
    sign_ad,
)
from garage_p2p.core.errors import PeerFault
from garage_p2p.core.exchange import (
    COSIGN_BYTES,
    RequestReader,
    ResponseData,
    ResponseFailed,
    ResponseReader,
)
from garage_p2p.core.identity import Identity, peer_id_from_public_key, verify
from garage_p2p.core.jobs import JobAnnouncement, JobRequest, LeaseGrant, ResultsAck
from garage_p2p.core.ledger import MAX_ENTRY_BYTES, EntryInvalid, decode_entry
from garage_p2p.core.ledger_sync import (
    MAX_PAGE_BYTES,
    MAX_RANGE_ENTRIES,
    HeadsAnnouncement,
    HeadsPage,
    LedgerRequest,
    PushReply,
    decode_page,
    encode_page,
)
from garage_p2p.core.messages import (
    EndInfo,
    ErrorInfo,
    ErrorReply,
    RequestHead,
    decode_json,
    encode_json,
    error_info,
)
from garage_p2p.core.receipts import ReceiptInvalid, unpack_signed
from garage_p2p.core.wire import (
    DEFAULT_LIMITS,
    HEADER,
    HEADER_SIZE,
    FrameDecoder,
    FrameError,
    FrameType,
    encode_frame,
)
from tools.ledger_builders import chain, identity

TRIED: Counter[str] = Counter()


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def tried(name: str) -> None:
    TRIED[name] += 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    started = time.monotonic()
    yield
    print(f"\nfuzz_codecs: {sum(TRIED.values())} inputs in {time.monotonic() - started:.1f} s")
    for name, count in sorted(TRIED.items()):
        print(f"  {name}: {count}")


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given chunk sizes (cycled), nothing lost."""
    out, offset, i = [], 0, 0
    while offset < len(data):
        size = cuts[i % len(cuts)] if cuts else len(data)
        out.append(data[offset : offset + size])
        offset += size
        i += 1
    return out


cuts = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=16)


# -- (a) the frame decoder ----------------------------------------------------------------

KNOWN = [int(t) for t in FrameType]
limits_st = st.dictionaries(st.sampled_from(list(FrameType)), st.integers(min_value=0, max_value=300), min_size=1)


def reference_frames(data: bytes, limits: dict[FrameType, int]) -> tuple[list[tuple[int, bytes]], str]:
    """Parse ``data`` whole: (frames, "clean" | "partial" | "error")."""
    frames, offset = [], 0
    while len(data) - offset >= HEADER_SIZE:
        length, type_byte = HEADER.unpack_from(data, offset)
        if type_byte not in KNOWN or length < 1 or length - 1 > limits.get(FrameType(type_byte), 0):
            return frames, "error"
        end = offset + HEADER_SIZE - 1 + length
        if len(data) < end:
            return frames, "partial"
        frames.append((type_byte, data[offset + HEADER_SIZE : end]))
        offset = end
    return frames, "clean" if offset == len(data) else "partial"


def raw_frame_st(limits_max: int = 300):
    """Bytes that are often frames, sometimes nearly: a type byte (known or not), a length (honest or not), a
    payload."""
    return st.one_of(
        st.builds(lambda t, p: encode_frame(t, p), st.sampled_from(list(FrameType)), st.binary(max_size=limits_max)),
        st.builds(
            lambda n, t, p: struct.pack(">IB", n, t) + p,
            st.integers(0, 2**32 - 1),
            st.integers(0, 255),
            st.binary(max_size=40),
        ),
        st.binary(max_size=12),
    )


def feed_all(
    decoder: FrameDecoder, pieces: list[bytes], limits: dict[FrameType, int]
) -> tuple[list[tuple[int, bytes]], bool]:
    """Feed chunk by chunk, checking the buffer bound after each; (frames, whether FrameError was raised)."""
    got: list[tuple[int, bytes]] = []
    seen = b""
    for piece in pieces:
        seen += piece
        try:
            got += [(int(f.type), f.payload) for f in decoder.feed(piece)]
        except FrameError:
            with pytest.raises(FrameError):  # a failed decoder stays failed
                decoder.feed(b"")
            return got, True
        pending = decoder.pending
        assert pending <= len(seen)
        if pending >= HEADER_SIZE:
            # What is held is one frame's beginning, its header already checked against its limit.
            length, type_byte = HEADER.unpack_from(seen, len(seen) - pending)
            assert pending < HEADER_SIZE - 1 + length
            assert pending <= HEADER_SIZE + limits.get(FrameType(type_byte), 0)
        else:
            assert pending < HEADER_SIZE
    return got, False


@fuzz(800)
@given(st.binary(max_size=600), cuts, limits_st)
def test_frame_decoder_on_arbitrary_bytes_matches_the_reference(data, sizes, limits):
    tried("frame decoder: arbitrary bytes")
    expected, outcome = reference_frames(data, limits)
    decoder = FrameDecoder(limits)
    got, failed = feed_all(decoder, chunked(data, sizes), limits)
    assert failed == (outcome == "error")
    assert got == expected[: len(got)]
    if not failed:
        assert got == expected
        if outcome == "partial":
            with pytest.raises(FrameError):
                decoder.close()
        else:
            decoder.close()


@fuzz(500)
@given(st.lists(raw_frame_st(), max_size=12).map(b"".join), cuts, limits_st)
def test_frame_decoder_on_near_frames_matches_the_reference(data, sizes, limits):
    tried("frame decoder: near-frames")
    expected, outcome = reference_frames(data, limits)
    got, failed = feed_all(FrameDecoder(limits), chunked(data, sizes), limits)
    assert failed == (outcome == "error")
    assert got == expected[: len(got)] and (failed or got == expected)


@fuzz(600)
@given(st.lists(st.tuples(st.sampled_from(list(FrameType)), st.binary(max_size=300)), max_size=15), cuts)
def test_frames_round_trip_in_any_chunking(items, sizes):
    tried("frame decoder: round trip")
    limits = {t: 300 for t in FrameType}
    wire = b"".join(encode_frame(t, p) for t, p in items)
    got, failed = feed_all(FrameDecoder(limits), chunked(wire, sizes), limits)
    assert not failed and got == [(int(t), p) for t, p in items]


@fuzz(300)
@given(st.sampled_from(list(FrameType)), st.integers(min_value=1, max_value=2**32 - 1 - 1))
def test_an_oversized_frame_is_refused_at_its_header(frame_type, excess):
    """Refused from the five header bytes alone: no payload is awaited or buffered."""
    tried("frame decoder: oversized headers")
    limit = DEFAULT_LIMITS.get(frame_type, 0)
    length = min(2**32 - 1, limit + 1 + excess)
    with pytest.raises(FrameError):
        FrameDecoder().feed(HEADER.pack(length, frame_type))


# -- (b) signed capability ads --------------------------------------------------------------

NOW = 1_800_000_000.0
ALICE = identity("fuzz-alice")
MALLORY = identity("fuzz-mallory")


def full_ad(who: Identity, seq: int = 7) -> CapabilityAd:
    return make_ad(
        who,
        seq=seq,
        now=NOW,
        ttl=30,
        addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{who.peer_id}",),
        models=(ModelOffer(name="tiny", context_length=2048, quantization="fp16", max_concurrency=8),),
        version="fuzz",
        hardware=Hardware(gpus=(GpuSpec(name="RTX 4090", vram_mib=24564, count=2),)),
        region="se-sto",
    )


VALID_AD = sign_ad(ALICE, full_ad(ALICE))


def assert_authentic(data: bytes, ad: CapabilityAd) -> None:
    """An accepted ad is signed by the key it names, which hashes to the peer id it claims."""
    key = bytes.fromhex(ad.public_key)
    assert peer_id_from_public_key(key) == ad.peer_id
    assert verify(key, data[:64], AD_DOMAIN + data[64:])


def open_or_fault(data: bytes) -> CapabilityAd | None:
    try:
        ad = open_ad(data, NOW)
    except (PeerFault, AdStale):  # a fault, or an ad out of its time: dropped
        return None
    assert_authentic(data, ad)
    return ad


@fuzz(600)
@given(
    st.one_of(
        st.binary(max_size=800),
        st.binary(min_size=64, max_size=64).map(lambda s: s + VALID_AD[64:]),
        st.tuples(st.integers(MAX_AD_BYTES - 10, MAX_AD_BYTES + 10), st.binary(min_size=1, max_size=16)).map(
            lambda t: (t[1] * t[0])[: t[0]]
        ),
    )
)
def test_open_ad_on_arbitrary_bytes_only_raises_peer_fault(data):
    tried("open_ad: arbitrary bytes")
    assert open_or_fault(data) is None


def flip(data: bytes, bit: int) -> bytes:
    at, mask = divmod(bit % (len(data) * 8), 8)
    return data[:at] + bytes([data[at] ^ (1 << mask)]) + data[at + 1 :]


def mutated(valid: bytes, *, flips: int, junk: int, insert: int):
    """Bytes of ``valid`` with bits flipped, cut short, junk appended or junk inserted."""

    def apply(mutation: tuple[str, object]) -> bytes:
        kind, arg = mutation
        if kind == "flip":
            data = valid
            for bit in arg:
                data = flip(data, bit)
            return data
        if kind == "cut":
            return valid[:arg]
        if kind == "append":
            return valid + arg
        at, more = arg
        return valid[:at] + more + valid[at:]

    return st.one_of(
        st.lists(st.integers(min_value=0), min_size=1, max_size=flips).map(lambda bits: ("flip", bits)),
        st.integers(min_value=0, max_value=len(valid) - 1).map(lambda n: ("cut", n)),
        st.binary(min_size=1, max_size=junk).map(lambda more: ("append", more)),
        st.tuples(st.integers(min_value=0, max_value=len(valid)), st.binary(min_size=1, max_size=insert)).map(
            lambda x: ("insert", x)
        ),
    ).map(apply)


@fuzz(600)
@given(mutated(VALID_AD, flips=4, junk=200, insert=20))
def test_a_mutated_ad_is_refused_unless_unchanged(data):
    tried("open_ad: bit flips, cuts, junk")
    ad = open_or_fault(data)
    assert ad is None or data == VALID_AD


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25,
)
AD_FIELDS = list(CapabilityAd.model_fields)


@fuzz(350)
@given(
    st.dictionaries(st.sampled_from(AD_FIELDS), json_value, min_size=1, max_size=3),
    st.sampled_from(["wrong key", "our key named", "their id, our key", "ours throughout"]),
)
def test_an_edited_ad_signed_by_another_key_is_refused(edits, who):
    """Mallory edits Alice's ad and signs it. Only an ad that is wholly Mallory's may pass."""
    tried("open_ad: edited and re-signed")
    fields = json.loads(VALID_AD[64:])
    fields.update(edits)
    if who == "our key named":
        fields["public_key"] = MALLORY.public_key.hex()  # Alice's peer id, Mallory's key
        fields["peer_id"] = ALICE.peer_id
    elif who == "their id, our key":
        fields["peer_id"] = ALICE.peer_id
    elif who == "ours throughout":
        fields["peer_id"], fields["public_key"] = MALLORY.peer_id, MALLORY.public_key.hex()
    payload = json.dumps(fields).encode()
    data = MALLORY.sign(AD_DOMAIN + payload) + payload
    ad = open_or_fault(data)
    if ad is not None:
        assert who == "ours throughout" and ad.peer_id == MALLORY.peer_id


@fuzz(200)
@given(
    st.sampled_from(["version", "region", "addrs", "addr", "models", "name", "gpus", "quantization", "padding"]),
    st.integers(min_value=1, max_value=70_000),
    st.booleans(),
)
def test_ads_with_huge_fields_are_refused(field, extra, signed_by_owner):
    """Every field just past its bound, or far past it. Signed by Alice herself (the fields are
    what is wrong) or by Mallory."""
    tried("open_ad: huge fields")
    fields = json.loads(VALID_AD[64:])
    if field == "version":
        fields["version"] = "v" * (64 + extra)
    elif field == "region":
        fields["region"] = "a" * (64 + extra)
    elif field == "addrs":
        fields["addrs"] = ["/ip4/1.2.3.4/tcp/1"] * (32 + min(extra, 3000))
    elif field == "addr":
        fields["addrs"] = ["/ip4/1.2.3.4/tcp/1/" + "x" * (493 + extra)]
    elif field == "models":
        fields["models"] = [{"name": f"m{i}"} for i in range(128 + min(extra, 5000))]
    elif field == "name":
        fields["models"] = [{"name": "n" * (256 + extra)}]
    elif field == "gpus":
        fields["hardware"] = {"gpus": [{"name": "g", "vram_mib": 1}] * (64 + min(extra, 2000))}
    elif field == "quantization":
        fields["models"] = [{"name": "x", "quantization": "q" * (64 + extra)}]
    else:  # valid fields, but the whole ad past 64 KiB
        fields["unknown_field"] = "p" * (MAX_AD_BYTES + extra)
    payload = json.dumps(fields).encode()
    signer = ALICE if signed_by_owner else MALLORY
    assert open_or_fault(signer.sign(AD_DOMAIN + payload) + payload) is None


@pytest.mark.parametrize(
    "edit",
    [
        {"seq": 2**63},
        {"seq": -1},
        {"ttl": 0},
        {"ttl": 24 * 3600 + 1},
        {"issued_at": NOW + 301},
        {"issued_at": NOW - 301},
        {"issued_at": 1e400},
        {"public_key": "zz" * 32},
        {"peer_id": ""},
    ],
)
def test_ads_out_of_range_even_when_signed_by_their_owner(edit):
    tried("open_ad: out of range")
    fields = {**json.loads(VALID_AD[64:]), **edit}
    payload = json.dumps(fields).encode()  # 1e400 is written as Infinity
    assert open_or_fault(ALICE.sign(AD_DOMAIN + payload) + payload) is None


# -- (c) the ledger -----------------------------------------------------------------------------

PROVIDER, CONSUMER = identity("fuzz-provider"), identity("fuzz-consumer")
ENTRIES = chain(PROVIDER, CONSUMER, 3)
VALID_ENTRY = ENTRIES[1].encoded


@fuzz(600)
@given(
    st.one_of(
        st.binary(max_size=MAX_ENTRY_BYTES + 100), st.binary(max_size=200).map(lambda tail: VALID_ENTRY[:111] + tail)
    )
)
def test_decode_entry_on_random_bytes_only_raises_peer_fault(data):
    tried("decode_entry: random bytes")
    with pytest.raises(PeerFault):
        decode_entry(data)


@fuzz(500)
@given(mutated(VALID_ENTRY, flips=3, junk=100, insert=10))
def test_a_mutated_entry_is_refused_unless_unchanged(data):
    tried("decode_entry: mutated entries")
    try:
        entry = decode_entry(data)
    except PeerFault:  # see test_decode_entry_reports_every_problem_as_entry_invalid for which kind
        return
    assert data == VALID_ENTRY and entry.hash == ENTRIES[1].hash


def receipt_entry(raw: bytes) -> bytes:
    """An entry whose receipt bytes are ``raw``, validly signed by its author (not a receipt check)."""
    body = struct.pack(">BQ32s64sH", 1, 1, bytes(32), bytes(64), len(raw)) + raw
    return body + PROVIDER.sign(b"garage-ledger-entry/1\n" + body)


@pytest.mark.parametrize(
    "data",
    [
        receipt_entry(b"{not json"),  # parse_receipt -> decode_json: a bare PeerFault
        receipt_entry(
            ENTRIES[0].raw.replace(PROVIDER.peer_id.encode(), b"12D3KooWQ7RuLhcoiRKmsp8xMCkPmvTsAb2WOiosbSu78DPVxFDQ")
        ),  # peer_key: ReceiptInvalid
    ],
    ids=["malformed receipt JSON", "provider id that is not a key"],
)
def test_decode_entry_reports_every_problem_as_entry_invalid(data):
    """decode_entry's contract: "EntryInvalid (a PeerFault) names the first problem"."""
    tried("decode_entry: contract")
    with pytest.raises(EntryInvalid):
        decode_entry(data)


@fuzz(300)
@given(st.lists(st.sampled_from([e.encoded for e in ENTRIES]) | st.binary(max_size=300), max_size=20))
def test_pages_round_trip(blobs):
    tried("decode_page: round trip")
    assert decode_page(encode_page(blobs)) == blobs


@fuzz(500)
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=3000).map(lambda raw: zlib.compress(raw)),
        st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=100)), max_size=10).map(
            lambda parts: zlib.compress(b"".join(struct.pack(">I", n) + b for n, b in parts))
        ),
    )
)
def test_decode_page_on_random_pages_only_raises_peer_fault(payload):
    tried("decode_page: random pages")
    try:
        blobs = decode_page(payload)
    except PeerFault:
        return
    assert len(blobs) <= MAX_RANGE_ENTRIES and all(len(b) <= MAX_ENTRY_BYTES for b in blobs)


VALID_PAGE = encode_page([e.encoded for e in ENTRIES])


@fuzz(400)
@given(mutated(VALID_PAGE, flips=3, junk=100, insert=10))
def test_a_mutated_page_yields_a_fault_or_entries_that_verify_or_not(data):
    tried("decode_page: mutated pages")
    try:
        blobs = decode_page(data)
    except PeerFault:
        return
    for blob in blobs:
        try:
            decode_entry(blob)
        except EntryInvalid:
            continue
        assert blob in {e.encoded for e in ENTRIES}


@pytest.mark.parametrize("inflated", [MAX_PAGE_BYTES + 1, 16 * MAX_PAGE_BYTES, 64 * MAX_PAGE_BYTES])
def test_zip_bombs_are_refused_within_the_inflate_bound(inflated):
    """A page inflating to 4 MiB + 1 B, 64 MiB or 256 MiB: refused, holding no more than the bound."""
    tried("decode_page: zip bombs")
    compressor = zlib.compressobj(9)
    zeros = bytes(16 * 1024 * 1024)
    parts = []
    left = inflated
    while left:
        step = min(left, len(zeros))
        parts.append(compressor.compress(zeros[:step]))
        left -= step
    bomb = b"".join(parts) + compressor.flush()
    assert len(bomb) < 2 * 1024 * 1024  # fits a LEDGER_ENTRIES frame
    tracemalloc.start()
    try:
        with pytest.raises(PeerFault, match="inflates past"):
            decode_page(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MAX_PAGE_BYTES + len(bomb) + 1024 * 1024


def test_a_page_of_entries_at_the_inflate_bound_still_decodes():
    tried("decode_page: at the bound")
    blob = bytes(MAX_ENTRY_BYTES)
    count = MAX_PAGE_BYTES // (4 + len(blob))
    assert len(decode_page(encode_page([blob] * count))) == count


WIRE_MESSAGES = [
    LedgerRequest,
    HeadsAnnouncement,
    HeadsPage,
    PushReply,
    ErrorReply,
    RequestHead,
    EndInfo,
    ErrorInfo,
    JobRequest,
    JobAnnouncement,
    LeaseGrant,
    ResultsAck,
]
json_any = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["heads", "range", "push", "claim", "results", "x" * 200]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(
            st.text(max_size=10)
            | st.sampled_from(
                [
                    "op",
                    "after",
                    "author",
                    "from_seq",
                    "limit",
                    "receipts",
                    "peer",
                    "heads",
                    "authors",
                    "seq",
                    "hash",
                    "conflict",
                    "status",
                    "error",
                ]
            ),
            inner,
            max_size=6,
        ),
    ),
    max_leaves=40,
)


def encode_any(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity, as a hostile peer may write them


@fuzz(500)
@given(st.sampled_from(WIRE_MESSAGES), st.one_of(json_any.map(encode_any), st.binary(max_size=300)))
def test_wire_messages_decode_or_raise_peer_fault(model, payload):
    tried("JSON messages: random JSON and bytes")
    try:
        message = decode_json(model, payload)
    except PeerFault:
        return
    encode_json(message)  # what was accepted can be passed on


@fuzz(250)
@given(
    st.fixed_dictionaries(
        {"op": st.sampled_from(["heads", "range", "push"])},
        optional={
            "after": json_any,
            "author": json_any,
            "from_seq": st.integers() | json_any,
            "limit": st.integers() | json_any,
            "receipts": st.lists(st.text(max_size=50), max_size=300) | json_any,
        },
    ),
    st.sampled_from([LedgerRequest]),
)
def test_ledger_requests_near_valid(fields, model):
    tried("JSON messages: near-valid ledger requests")
    try:
        request = decode_json(model, encode_any(fields))
    except PeerFault:
        return
    assert request.from_seq >= 1 and 1 <= request.limit <= MAX_RANGE_ENTRIES and len(request.receipts) <= 256


@fuzz(300)
@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
        st.binary(min_size=1, max_size=60).map(lambda j: base64.b64encode(bytes(64) + j).decode()),
    )
)
def test_pushed_receipts_decode_or_raise_peer_fault(blob):
    tried("unpack_signed: random receipts")
    with pytest.raises(PeerFault):
        unpack_signed(blob)


def test_unpack_signed_reports_malformed_receipt_json_as_receipt_invalid():
    """Callers catch ReceiptInvalid (jobs/submitter.py _countersign, ledger/sync.py push): parse_receipt
    lets decode_json's bare PeerFault through for bytes that are not a receipt."""
    tried("unpack_signed: contract")
    with pytest.raises(ReceiptInvalid):
        unpack_signed(base64.b64encode(bytes(64) + b"{not a receipt}").decode())


# -- (d) the request and response state machines ---------------------------------------------

HEAD = RequestHead(request_id="r1", path="/v1/chat/completions", body={"model": "tiny", "messages": []}, timeout=30)
GOOD_PAYLOADS = {
    FrameType.HEAD: [encode_json(HEAD)],
    FrameType.END: [encode_json(EndInfo()), b"{}", b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}'],
    FrameType.ERROR: [encode_json(error_info(429, "busy", type="rate_limit_error", retryable=True, retry_after=1))],
    FrameType.COSIGN: [bytes(COSIGN_BYTES)],
}
frame_st = st.one_of(
    st.builds(
        lambda t, i: encode_frame(t, GOOD_PAYLOADS[t][i % len(GOOD_PAYLOADS[t])]),
        st.sampled_from(list(GOOD_PAYLOADS)),
        st.integers(0, 5),
    ),
    st.builds(encode_frame, st.sampled_from(list(FrameType)), st.binary(max_size=80) | json_any.map(encode_any)),
    st.builds(lambda t: HEADER.pack(DEFAULT_LIMITS.get(t, 0) + 2, t), st.sampled_from(list(FrameType))),  # oversized
    st.binary(min_size=1, max_size=8),
)


def response_reference(wire: bytes) -> tuple[list, bool]:
    """(events, faulted) of a ResponseReader fed ``wire`` at once."""
    reader = ResponseReader()
    try:
        return reader.feed(wire), False
    except PeerFault:
        return [], True


@fuzz(500)
@given(st.lists(frame_st, max_size=8), cuts)
def test_response_reader_on_random_frames(frames, sizes):
    tried("ResponseReader: random frame sequences")
    wire = b"".join(frames)
    reader = ResponseReader()
    events: list = []
    faulted = False
    for piece in chunked(wire, sizes):
        try:
            events += reader.feed(piece)
        except PeerFault:
            faulted = True
            break
    # The grammar: DATA* then at most one END or ERROR, nothing after.
    finals = [i for i, e in enumerate(events) if not isinstance(e, ResponseData)]
    assert finals in ([], [len(events) - 1])
    assert reader.finished == bool(finals) or faulted
    assert reader.received_data == any(isinstance(e, ResponseData) for e in events) or faulted
    if not faulted:
        tail = reader.eof()
        assert (tail is None) == bool(finals)
        if tail is not None:
            assert isinstance(tail, ResponseFailed) and tail.truncated and tail.info.status == 502
    # Chunking changes nothing but how much was delivered before a fault.
    whole, whole_faulted = response_reference(wire)
    assert faulted == whole_faulted
    if not faulted:
        assert events == whole


@fuzz(500)
@given(st.lists(frame_st, max_size=6), cuts)
def test_request_reader_on_random_frames(frames, sizes):
    tried("RequestReader: random frame sequences")
    wire = b"".join(frames)
    reader = RequestReader()
    faulted = False
    for piece in chunked(wire, sizes):
        try:
            head = reader.feed(piece)
        except PeerFault:
            faulted = True
            break
        assert head is reader.head
    if not faulted:
        if reader.head is None:
            with pytest.raises(PeerFault):
                reader.eof()
        else:
            reader.eof()
            # The head is the first frame, and a valid one.
            first = FrameDecoder({FrameType.HEAD: DEFAULT_LIMITS[FrameType.HEAD], FrameType.COSIGN: COSIGN_BYTES}).feed(
                wire
            )[0]
            assert first.type is FrameType.HEAD and decode_json(RequestHead, first.payload) == reader.head
        assert reader.cosig is None or len(reader.cosig) == COSIGN_BYTES
