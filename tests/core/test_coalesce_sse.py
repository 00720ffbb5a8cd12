from garage_p2p.core.coalesce import Coalescer
from garage_p2p.core.sse import SseSplitter, event_data


def test_first_bytes_go_at_once_then_wait_for_the_delay():
    c = Coalescer(max_delay=0.02, max_bytes=100)
    assert c.push(b"first", 0.0) == b"first"
    assert c.push(b"a", 0.005) is None
    assert c.push(b"b", 0.010) is None
    assert c.deadline == 0.02
    assert c.due(0.019) is None
    assert c.due(0.020) == b"ab"
    assert c.deadline is None


def test_size_forces_a_flush_and_flush_empties():
    c = Coalescer(max_delay=1.0, max_bytes=10)
    c.push(b"x", 0.0)
    assert c.push(b"0123456789", 0.001) == b"0123456789"
    assert c.push(b"tail", 0.002) is None
    assert c.flush(0.003) == b"tail"
    assert c.flush(0.004) is None


def test_sse_splitter_handles_any_split_and_crlf():
    stream = b"data: one\r\n\r\ndata: two\n\ndata: [DONE]\n\n"
    for cut in range(1, len(stream)):
        s = SseSplitter()
        events = s.feed(stream[:cut]) + s.feed(stream[cut:])
        assert [event_data(e) for e in events] == [b"one", b"two", b"[DONE]"]
        assert s.rest() == b""


def test_sse_rest_keeps_an_unfinished_event():
    s = SseSplitter()
    assert s.feed(b"data: whole\n\ndata: part") == [b"data: whole\n\n"]
    assert s.rest() == b"data: part"
