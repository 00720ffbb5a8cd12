import json

import pytest

from garage_p2p.core.errors import PeerFault
from garage_p2p.core.exchange import (
    RequestReader,
    ResponseData,
    ResponseEnd,
    ResponseFailed,
    ResponseReader,
    data_frame,
    end_frame,
    error_frame,
    head_frame,
)
from garage_p2p.core.messages import EndInfo, Load, RequestHead, Usage, encode_json, error_body, error_info
from garage_p2p.core.wire import FrameType, encode_frame

HEAD = RequestHead(request_id="r1", path="/v1/chat/completions", body={"model": "m", "stream": True}, timeout=30)


def test_data_then_end():
    reader = ResponseReader()
    events = reader.feed(
        data_frame(b"a") + data_frame(b"b") + end_frame(EndInfo(usage=Usage(prompt_tokens=1, completion_tokens=2)))
    )
    assert events[:2] == [ResponseData(b"a"), ResponseData(b"b")]
    assert isinstance(events[2], ResponseEnd) and events[2].info.usage.completion_tokens == 2
    assert reader.eof() is None


def test_eof_without_end_is_a_truncation_never_a_success():
    reader = ResponseReader()
    reader.feed(data_frame(b"partial"))
    failure = reader.eof()
    assert isinstance(failure, ResponseFailed) and failure.truncated
    assert failure.info.status == 502


def test_error_frame():
    reader = ResponseReader()
    [event] = reader.feed(error_frame(error_info(429, "busy", type="rate_limit_error", retryable=True, retry_after=1)))
    assert isinstance(event, ResponseFailed) and event.info.retryable and not event.truncated


def test_a_backends_error_body_reaches_the_client_whole_and_must_be_a_json_object():
    vllm = '{"error":{"message":"too long","type":"BadRequestError","param":"max_tokens","code":400}}'
    info = error_info(400, "too long", code="400").model_copy(update={"body": vllm})
    [event] = ResponseReader().feed(error_frame(info))
    assert error_body(event.info) == {
        "error": {"message": "too long", "type": "BadRequestError", "param": "max_tokens", "code": 400}
    }
    for bad in ("[1]", "not json"):
        summary = encode_json(error_info(400, "too long", code="400"))
        frame = encode_frame(FrameType.ERROR, summary[:-1] + b',"body":' + json.dumps(bad).encode() + b"}")
        with pytest.raises(PeerFault):
            ResponseReader().feed(frame)


def test_anything_after_end_is_a_fault():
    reader = ResponseReader()
    with pytest.raises(PeerFault):
        reader.feed(end_frame(EndInfo()) + data_frame(b"late"))


def test_provider_may_not_send_head():
    with pytest.raises(PeerFault):
        ResponseReader().feed(head_frame(HEAD))


@pytest.mark.parametrize("payload", [b"not json", b"{}", b'{"status": 200, "error": {"message": "x", "type": "y"}}'])
def test_malformed_error_frame_is_a_fault(payload):
    with pytest.raises(PeerFault):
        ResponseReader().feed(encode_frame(FrameType.ERROR, payload))


def test_end_and_busy_frames_carry_the_providers_live_load_validated():
    [end] = ResponseReader().feed(end_frame(EndInfo(load=Load(running=2, waiting=5, kv_cache_usage=0.5))))
    assert isinstance(end, ResponseEnd) and end.info.load == Load(running=2, waiting=5, kv_cache_usage=0.5)
    busy = error_info(429, "busy", type="rate_limit_error", retryable=True).model_copy(update={"load": Load(waiting=9)})
    [refused] = ResponseReader().feed(error_frame(busy))
    assert isinstance(refused, ResponseFailed) and refused.info.load == Load(waiting=9)
    for load in ('{"waiting": -1}', '{"running": 1e7}', '{"kv_cache_usage": 1.5}', '{"waiting": NaN}', "[]"):
        with pytest.raises(PeerFault, match="load"):
            ResponseReader().feed(encode_frame(FrameType.END, b'{"load": %s}' % load.encode()))


def test_request_head_round_trip_and_unknown_fields_ignored():
    reader = RequestReader()
    assert reader.feed(head_frame(HEAD)) == HEAD
    extended = encode_frame(FrameType.HEAD, HEAD.model_dump_json().encode()[:-1] + b',"future_field":1}')
    assert RequestReader().feed(extended) == HEAD


@pytest.mark.parametrize(
    "body",
    [
        b'{"request_id": "r", "path": "/v1/embeddings", "body": {}, "timeout": 1}',
        b'{"request_id": "r", "path": "/v1/completions", "body": {}, "timeout": -1}',
        b'{"request_id": "", "path": "/v1/completions", "body": {}, "timeout": 1}',
        b"[]",
    ],
)
def test_invalid_heads_are_faults(body):
    with pytest.raises(PeerFault):
        RequestReader().feed(encode_frame(FrameType.HEAD, body))


def test_second_frame_and_short_stream_are_faults():
    with pytest.raises(PeerFault):
        RequestReader().feed(head_frame(HEAD) + head_frame(HEAD))
    reader = RequestReader()
    reader.feed(head_frame(HEAD)[:5])
    with pytest.raises(PeerFault):
        reader.eof()


def test_head_size_limit():
    with pytest.raises(PeerFault, match="exceeds"):
        RequestReader(max_head_bytes=100).feed(head_frame(HEAD.model_copy(update={"body": {"x": "y" * 200}})))
