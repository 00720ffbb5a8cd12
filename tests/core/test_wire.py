import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.wire import HEADER, FrameDecoder, FrameError, FrameType, encode_frame

frames = st.lists(st.tuples(st.sampled_from(list(FrameType)), st.binary(max_size=2048)), max_size=20)


@given(frames, st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=50))
def test_round_trip_at_any_split(items, cuts):
    wire = b"".join(encode_frame(t, p) for t, p in items)
    decoder = FrameDecoder({t: 4096 for t in FrameType})
    got = []
    offset = 0
    for cut in cuts * (len(wire) // max(1, sum(cuts)) + 1):
        if offset >= len(wire):
            break
        got += decoder.feed(wire[offset : offset + cut])
        offset += cut
    got += decoder.feed(wire[offset:])
    assert [(f.type, f.payload) for f in got] == items
    decoder.close()


@given(st.binary(max_size=4096))
@settings(max_examples=500)
def test_garbage_only_ever_raises_frame_error(data):
    decoder = FrameDecoder()
    try:
        decoder.feed(data)
        decoder.close()
    except FrameError:
        pass


def test_truncated_frame_is_an_error_at_close():
    decoder = FrameDecoder()
    wire = encode_frame(FrameType.DATA, b"hello world")
    assert decoder.feed(wire[:-3]) == []
    with pytest.raises(FrameError, match="inside a frame"):
        decoder.close()


def test_oversized_frame_rejected_from_its_header_alone():
    decoder = FrameDecoder({FrameType.DATA: 100})
    with pytest.raises(FrameError, match="exceeds"):
        decoder.feed(HEADER.pack(1 + 101, FrameType.DATA))
    assert issubclass(FrameError, PeerFault)


def test_unknown_type_and_empty_frame_rejected():
    with pytest.raises(FrameError, match="unknown frame type"):
        FrameDecoder().feed(HEADER.pack(2, 99) + b"x")
    with pytest.raises(FrameError, match="empty"):
        FrameDecoder().feed(HEADER.pack(0, 1))


def test_a_failed_decoder_stays_failed():
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(HEADER.pack(2, 99) + b"x")
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(FrameType.DATA, b"ok"))


def test_type_without_a_limit_is_refused():
    decoder = FrameDecoder({FrameType.HEAD: 10})
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(FrameType.DATA, b"x"))
