"""What a provider reads of the answers of paths other than chat and completions, and where it sends them."""

from __future__ import annotations

import json

from garage_p2p.core.messages import Usage
from garage_p2p.provider.backend import Backend
from garage_p2p.provider.service import renamed
from garage_p2p.provider.usage import answer_type, body_usage, event_usage


def test_each_kind_reports_its_usage_its_own_way():
    embeddings = {"object": "list", "data": [], "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    assert body_usage(json.dumps(embeddings).encode()) == Usage(prompt_tokens=7)
    responses = {"object": "response", "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13}}
    assert body_usage(json.dumps(responses).encode()) == Usage(prompt_tokens=9, completion_tokens=4)
    assert body_usage(b'{"results": [], "usage": {"total_tokens": 11}}') == Usage(prompt_tokens=11)  # rerank
    assert body_usage(b'{"count": 5, "max_model_len": 512, "tokens": [1, 2, 3, 4, 5]}') == Usage(prompt_tokens=5)
    assert body_usage(b'{"prompt": "hi"}') is None  # /detokenize: GPU time alone
    assert body_usage(b"plain text") is None
    assert body_usage(b'{"usage": {"prompt_tokens": -1}}') == Usage()  # not believed


def test_a_streamed_responses_answer_reports_its_usage_in_its_last_event():
    created = {"type": "response.created", "response": {"usage": None}}
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 2}}}
    assert event_usage(b"event: response.created\ndata: " + json.dumps(created).encode() + b"\n\n") is None
    event = b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n"
    assert event_usage(event) == Usage(prompt_tokens=3, completion_tokens=2)


def test_only_a_plain_content_type_travels_back():
    assert answer_type("application/json") is None
    assert answer_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    assert answer_type("text/vtt") == "text/vtt"
    assert answer_type('text/html; onload="x"') is None


def test_root_paths_go_to_the_servers_root():
    backend = Backend("tiny", "http://127.0.0.1:8001/v1")
    assert backend.url("/v1/embeddings") == "http://127.0.0.1:8001/v1/embeddings"
    assert backend.url("/tokenize") == "http://127.0.0.1:8001/tokenize"
    assert backend.url("/openapi.json") == "http://127.0.0.1:8001/openapi.json"


def test_a_json_body_is_renamed_only_in_its_model():
    assert json.loads(renamed(b'{"model": "alias", "input": "hi"}', "application/json", "tiny")) == {
        "model": "tiny",
        "input": "hi",
    }
    assert renamed(b"not json", "application/json", "tiny") == b"not json"  # the backend says what is wrong
