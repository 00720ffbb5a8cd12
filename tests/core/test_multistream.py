import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.utils.varint import encode_delim

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.multistream import LazySelectReader, ProtocolRefused, delimited, lazy_proposal

P = "/garage/openai/1.0.0"


def test_encoding_matches_libp2p():
    assert delimited(P) == encode_delim(P.encode())
    assert lazy_proposal(P) == encode_delim(b"/multistream/1.0.0") + encode_delim(P.encode())
    long = "/x" * 100
    assert delimited(long) == encode_delim(long.encode())


@given(st.integers(min_value=1, max_value=60), st.binary(max_size=50))
def test_echoes_are_stripped_at_any_split(cut, rest):
    wire = lazy_proposal(P) + rest
    reader = LazySelectReader(P)
    out = reader.feed(wire[:cut]) + reader.feed(wire[cut:])
    assert reader.done and out == rest
    assert reader.feed(b"more") == b"more"


def test_refused_protocol():
    with pytest.raises(ProtocolRefused):
        LazySelectReader(P).feed(delimited("/multistream/1.0.0") + delimited("na"))


@pytest.mark.parametrize("wire", [delimited("/other/1.0.0") + delimited(P), b"\xff" * 12, b"\x00", b"\x05abcde"])
def test_garbage_is_a_peer_fault(wire):
    with pytest.raises(PeerFault):
        LazySelectReader(P).feed(wire)
