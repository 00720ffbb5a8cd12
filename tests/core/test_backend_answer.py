"""core/backend_answer.py: the provider's edits to a backend's request and answer change exactly
what they must (issue 20's fidelity drifts), byte for byte everywhere else."""

from __future__ import annotations

import json

from garage_p2p.core.backend_answer import metered_body, rename_model, stamp_fingerprint

FINISH = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"tiny","choices":[{"index":0,'
    b'"delta":{"content":" m"},"logprobs":null,"finish_reason":"length","stop_reason":null,"token_ids":null}]}\n\n'
)
"""vLLM 0.32's finish chunk of a stream with the usage chunk on (no fingerprint on it)."""


def test_continuous_usage_is_turned_off_with_the_forced_usage_chunk():
    body = {"model": "tiny", "stream": True, "stream_options": {"continuous_usage_stats": True}}
    sent, strip = metered_body(body)
    assert strip and sent["stream_options"] == {"include_usage": True}
    assert body["stream_options"] == {"continuous_usage_stats": True}  # the client's body is not touched


def test_a_client_that_asked_for_usage_gets_its_options_unchanged():
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {"model": "tiny", "stream": True, "stream_options": options}
    assert metered_body(body) == (body, False)
    assert metered_body({"model": "tiny", "stream": True}) == (
        {"model": "tiny", "stream": True, "stream_options": {"include_usage": True}},
        True,
    )


def test_the_fingerprint_goes_last_on_finish_chunks_only():
    stamped = stamp_fingerprint(FINISH, "vllm-0.32.0-2bfcb1d2")
    assert stamped == FINISH[:-3] + b',"system_fingerprint":"vllm-0.32.0-2bfcb1d2"}\n\n'
    assert json.loads(stamped[6:])["system_fingerprint"] == "vllm-0.32.0-2bfcb1d2"
    running = FINISH.replace(b'"finish_reason":"length"', b'"finish_reason":null')
    assert stamp_fingerprint(running, "fp") == running
    assert stamp_fingerprint(b"data: [DONE]\n\n", "fp") == b"data: [DONE]\n\n"
    assert stamp_fingerprint(stamped, "other") == stamped  # never twice


def test_an_aliased_model_is_renamed_once_and_nothing_else():
    event = FINISH.replace(b'" m"', b'"\\"model\\":\\"tiny\\""')  # the pattern inside the text, escaped
    renamed = rename_model(event, "tiny", "my/alias")
    assert json.loads(renamed[6:])["model"] == "my/alias"
    assert json.loads(renamed[6:])["choices"][0]["delta"]["content"] == '"model":"tiny"'
    assert rename_model(event, "tiny", "tiny") is event
