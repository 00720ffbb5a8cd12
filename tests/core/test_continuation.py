"""core/continuation.py: an answer cut at any byte of its stream and continued elsewhere is the
uninterrupted answer, byte for byte, with one [DONE], one chunk id and the right usage.

The "model" is a fixed sequence of tokens (byte strings, multi-byte characters split across
tokens as byte-level BPE does); a provider streams it as vLLM 0.32 does with
``return_token_ids`` (one chunk per token, empty text while the detokenizer holds back an
incomplete UTF-8 piece), and a continuation from ids regenerates the rest, as at temperature 0.
"""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.continuation import CHAT, COMPLETIONS, MAX_FAILOVERS, Transcript, continuation_seed, plan

PROMPT_IDS = [7, 8, 9, 10]


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def provider_stream(path: str, tokens: list[bytes], start: int, *, usage_prompt: int, finish: str = "length") -> bytes:
    """What vLLM streams for tokens[start:] (ids = their indices + 100), chat or completions."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    chat = path == CHAT
    rid, kind = ("chatcmpl-p", "chat.completion.chunk") if chat else ("cmpl-p", "text_completion")
    prompt = PROMPT_IDS + [100 + i for i in range(start)]
    out = []
    head = {"id": rid, "object": kind, "created": 5, "model": "tiny"}
    if chat:
        out.append(
            event(
                {
                    **head,
                    "prompt_token_ids": prompt,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
        )
    else:
        out.append(
            event(
                {
                    **head,
                    "choices": [
                        {"index": 0, "text": "", "prompt_token_ids": prompt, "token_ids": [], "finish_reason": None}
                    ],
                }
            )
        )
    for i in range(start, len(tokens)):
        text = decoder.decode(tokens[i], final=i == len(tokens) - 1)
        fin = finish if i == len(tokens) - 1 else None
        choice = {"index": 0, "finish_reason": fin, "token_ids": [100 + i]}
        choice.update({"delta": {"content": text}} if chat else {"text": text})
        out.append(event({**head, "choices": [choice]}))
    usage = {"prompt_tokens": usage_prompt, "completion_tokens": len(tokens) - start}
    out.append(event({**head, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def client_view(out: bytes) -> tuple[str, list[dict], int]:
    """(text, chunks, number of [DONE]) of what the client received."""
    chunks, done, text = [], 0, []
    for block in out.split(b"\n\n"):
        if not block:
            continue
        data = block.removeprefix(b"data: ")
        if data == b"[DONE]":
            done += 1
            continue
        chunk = json.loads(data)
        chunks.append(chunk)
        for choice in chunk["choices"]:
            text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text), chunks, done


TOKENS = st.lists(
    st.one_of(
        st.sampled_from([b"a", b" b", b"cd", b"\n"]),
        st.sampled_from(["é", "漢", "🙂"])
        .map(lambda c: c.encode())
        .flatmap(lambda raw: st.integers(1, len(raw)).map(lambda k: [raw[:k], raw[k:]] if k < len(raw) else [raw])),
    ),
    min_size=1,
    max_size=30,
).map(lambda items: [t for item in items for t in (item if isinstance(item, list) else [item])])


def run_with_cuts(path: str, tokens: list[bytes], cuts: list[int], stream: bool = True) -> tuple[Transcript, bytes]:
    """The answer, its provider lost after ``cuts[i]`` bytes of attempt i's stream."""
    body = {"model": "tiny", "max_tokens": len(tokens), "temperature": 0, "stream": stream}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"})
    transcript = Transcript(path, plan(path, body, None))
    transcript.begin()
    wire = provider_stream(path, tokens, 0, usage_prompt=len(PROMPT_IDS))
    out = []
    for cut in cuts:
        out.append(transcript.feed(wire[:cut]).out)
        if transcript.done:
            return transcript, b"".join(out)
        assert transcript.can_continue() == ""
        if transcript.ended():
            out.append(transcript.finish_here())
            return transcript, b"".join(out)
        restart = transcript.prompt_ids is None
        sent = transcript.continuation()
        transcript.begin()
        if restart:  # lost before anything reached the client: the request again
            assert sent == transcript.plan.body
            wire = provider_stream(path, tokens, 0, usage_prompt=len(PROMPT_IDS))
            continue
        k = transcript.generated
        assert sent["prompt"] == PROMPT_IDS + [100 + i for i in range(k)]
        assert sent["max_tokens"] == len(tokens) - k and "stop" not in sent and sent["n"] == 1
        wire = provider_stream(COMPLETIONS, tokens, k, usage_prompt=len(PROMPT_IDS) + k)
    out.append(transcript.feed(wire).out)
    return transcript, b"".join(out)


@settings(max_examples=300, deadline=None)
@given(tokens=TOKENS, path=st.sampled_from([CHAT, COMPLETIONS]), data=st.data())
def test_a_cut_at_any_byte_continues_into_the_uninterrupted_answer(tokens, path, data):
    expected = b"".join(tokens).decode("utf-8", "replace")
    whole = len(provider_stream(path, tokens, 0, usage_prompt=4))
    cuts = data.draw(st.lists(st.integers(0, whole), min_size=0, max_size=MAX_FAILOVERS))
    transcript, out = run_with_cuts(path, tokens, cuts)
    text, chunks, done = client_view(out)
    assert text == expected
    assert done == 1
    assert {c["id"] for c in chunks} == {"chatcmpl-p" if path == CHAT else "cmpl-p"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if path == CHAT else "text_completion"}
    assert all("token_ids" not in json.dumps(c) for c in chunks)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["length"]
    assert transcript.usage is not None
    assert (transcript.usage.prompt_tokens, transcript.usage.completion_tokens) == (len(PROMPT_IDS), len(tokens))
    if path == CHAT:
        assert sum(1 for c in chunks for ch in c["choices"] if "role" in ch["delta"]) == 1


@settings(max_examples=100, deadline=None)
@given(tokens=TOKENS, path=st.sampled_from([CHAT, COMPLETIONS]), data=st.data())
def test_a_non_streamed_answer_is_assembled_across_providers(tokens, path, data):
    whole = len(provider_stream(path, tokens, 0, usage_prompt=4))
    cuts = data.draw(st.lists(st.integers(0, whole), max_size=MAX_FAILOVERS))
    transcript, out = run_with_cuts(path, tokens, cuts, stream=False)
    assert out == b""
    answer = transcript.assemble()
    choice = answer["choices"][0]
    text = choice["message"]["content"] if path == CHAT else choice["text"]
    assert text == b"".join(tokens).decode("utf-8", "replace")
    assert choice["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": len(tokens), "total_tokens": 4 + len(tokens)}


def test_the_clean_boundary_backs_off_over_held_back_pieces():
    tokens = [b"a", "漢".encode()[:1], "漢".encode()[1:2]]  # the character is still incomplete
    transcript = Transcript(CHAT, plan(CHAT, {"model": "t", "messages": [{}], "max_tokens": 9}, None))
    transcript.begin()
    events = provider_stream(CHAT, tokens + [b"z"], 0, usage_prompt=4).split(b"\n\n")
    transcript.feed(b"\n\n".join(events[:4]) + b"\n\n")  # the role chunk and three tokens
    assert transcript.generated == 1  # only "a": the two pieces after it carried no text
    assert transcript.continuation()["prompt"] == PROMPT_IDS + [100]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"n": 2}, "n is not 1"),
        ({"stop": ["\n"]}, "stop is set"),
        ({"tools": [{"type": "function"}]}, "tools is set"),
        ({"response_format": {"type": "json_object"}}, "response_format is set"),
        ({"frequency_penalty": 0.5}, "frequency or presence penalty"),
        ({"logprobs": True}, "logprobs is set"),
        ({"stream_options": {"continuous_usage_stats": True}}, "continuous usage stats"),
    ],
)
def test_requests_whose_continuation_is_not_exact_go_out_unchanged(body, reason):
    full = {"model": "t", "messages": [{"role": "user", "content": "x"}], **body}
    decided = plan(CHAT, full, None)
    assert not decided.failover and decided.reason == reason and decided.body is full


def test_the_header_turns_failover_off_and_the_body_is_unchanged():
    body = {"model": "t", "messages": [{"role": "user", "content": "x"}]}
    assert plan(CHAT, body, "off").body is body
    on = plan(CHAT, body, None)
    assert on.failover and on.body == {
        **body,
        "stream": True,
        "return_token_ids": True,
        "stream_options": {"include_usage": True},
    }
    assert plan(COMPLETIONS, {"model": "t", "prompt": ["a", "b"]}, None).reason == "prompt is a batch"


def test_a_sampled_continuation_gets_a_seed_of_its_own_cut():
    body = {"model": "t", "prompt": "x", "seed": 42, "temperature": 0.9, "max_tokens": 8, "min_tokens": 5}
    transcript = Transcript(COMPLETIONS, plan(COMPLETIONS, body, None))
    transcript.begin()
    events = provider_stream(COMPLETIONS, [b"a", b"b", b"c"], 0, usage_prompt=4).split(b"\n\n")
    transcript.feed(b"\n\n".join(events[:3]) + b"\n\n")  # the first chunk and two tokens
    k = transcript.generated
    sent = transcript.continuation()
    assert sent["seed"] == continuation_seed(42, k) != 42
    assert (sent["min_tokens"], sent["max_tokens"], sent["temperature"]) == (5 - k, 8 - k, 0.9)


def one_chat_chunk(text: str, **choice) -> dict:
    """A chat chunk carrying ``text``, with ``choice``'s fields added to its one choice."""
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "t",
        "choices": [{"index": 0, "delta": {"content": text}, **choice}],
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"token_ids": ["x"]},
        {"token_ids": [-1]},
        {"token_ids": [True]},
        {"token_ids": list(range(5000))},
        {"token_ids": 3},
    ],
)
def test_malformed_ids_are_the_providers_fault(bad):
    transcript = Transcript(CHAT, plan(CHAT, {"model": "t", "messages": [{}]}, None))
    transcript.begin()
    assert transcript.feed(event(one_chat_chunk("a", **bad))).fault is not None
    assert transcript.generated == 0 and transcript.text == []  # the bad chunk changed nothing


@pytest.mark.parametrize(
    "wire",
    [
        b"data: {oops\n\n",
        b"data: [1]\n\n",
        b'data: {"choices": [{}, {}]}\n\n',
        b'data: {"prompt_token_ids": "x", "choices": []}\n\n',
    ],
)
def test_malformed_chunks_are_the_providers_fault(wire):
    transcript = Transcript(CHAT, plan(CHAT, {"model": "t", "messages": [{}]}, None))
    transcript.begin()
    assert transcript.feed(wire).fault is not None


def test_a_backend_without_token_ids_is_served_but_not_failed_over():
    transcript = Transcript(CHAT, plan(CHAT, {"model": "t", "messages": [{}], "stream": True}, None))
    transcript.begin()
    assert b'"a"' in transcript.feed(event(one_chat_chunk("a"))).out
    assert transcript.can_continue() == "the provider sent no token ids"


def test_a_backend_error_in_the_stream_ends_the_answer_without_failover():
    transcript = Transcript(CHAT, plan(CHAT, {"model": "t", "messages": [{}]}, None))
    transcript.begin()
    transcript.feed(event({"error": {"message": "context too long", "type": "BadRequestError", "code": 400}}))
    assert transcript.done and transcript.can_continue() == "the answer had ended"
    failure = transcript.backend_failure()
    assert failure is not None and failure.status == 400 and failure.error.message == "context too long"


@settings(max_examples=200, deadline=None)
@given(tokens=TOKENS, path=st.sampled_from([CHAT, COMPLETIONS]), data=st.data())
def test_a_provider_that_breaks_the_rules_mid_frame_loses_nothing_before_the_fault(tokens, path, data):
    """Its events before the bad one reach the client, in whatever frames they came; the answer
    continues from them."""
    body = {"model": "tiny", "max_tokens": len(tokens), "temperature": 0, "stream": True, "prompt": "hi"}
    transcript = Transcript(path, plan(path, {**body, "messages": [{}]} if path == CHAT else body, None))
    transcript.begin()
    events = provider_stream(path, tokens, 0, usage_prompt=len(PROMPT_IDS)).split(b"\n\n")[:-1]
    bad = data.draw(st.integers(1, len(tokens)))  # a token chunk (event 0 holds the prompt ids)
    events[bad] = events[bad].replace(b'"token_ids": [', b'"token_ids": [-5, ')
    wire = b"".join(e + b"\n\n" for e in events[: bad + 1])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))
    out, fault = [], None
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        fed = transcript.feed(wire[a:b])
        out.append(fed.out)
        fault = fault or fed.fault
    assert fault is not None and not transcript.done
    k = transcript.generated
    if transcript.prompt_ids is not None:
        transcript.continuation()
        transcript.begin()
        out.append(transcript.feed(provider_stream(COMPLETIONS, tokens, k, usage_prompt=len(PROMPT_IDS) + k)).out)
    else:  # nothing had reached the client: the request again
        transcript.continuation()
        transcript.begin()
        out.append(transcript.feed(provider_stream(path, tokens, 0, usage_prompt=len(PROMPT_IDS))).out)
    text, _, done = client_view(b"".join(out))
    assert text == b"".join(tokens).decode("utf-8", "replace") and done == 1


def with_fingerprint(wire: bytes, fingerprint: str) -> bytes:
    """A provider stream whose usage chunk carries ``system_fingerprint``, as vLLM's does."""
    events = []
    for block in wire.split(b"\n\n")[:-1]:
        data = block.removeprefix(b"data: ")
        if data != b"[DONE]" and json.loads(data)["choices"] == []:
            block = event({**json.loads(data), "system_fingerprint": fingerprint})[:-2]
        events.append(block + b"\n\n")
    return b"".join(events)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_the_hidden_usage_chunks_fingerprint_goes_on_the_finish_chunk(path):
    """vLLM writes system_fingerprint on the usage chunk, or on the finish chunk when the client
    did not ask for usage: the transcript (which forces the usage chunk) moves it there."""
    tokens = [b"a", b" b", b"cd"]
    wire = with_fingerprint(provider_stream(path, tokens, 0, usage_prompt=4), "fp-1")
    body = {"model": "tiny", "max_tokens": 3, "stream": True}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"})
    for options, usage_chunk in ({}, False), ({"stream_options": {"include_usage": True}}, True):
        transcript = Transcript(path, plan(path, {**body, **options}, None))
        transcript.begin()
        _, chunks, done = client_view(transcript.feed(wire).out)
        stamped = [c for c in chunks if c.get("system_fingerprint") == "fp-1"]
        assert len(stamped) == 1 and done == 1
        assert (stamped[0]["choices"] == []) is usage_chunk  # the usage chunk when asked, else the finish chunk
    whole = Transcript(path, plan(path, {**body, "stream": False}, None))
    whole.begin()
    whole.feed(wire)
    assert whole.assemble()["system_fingerprint"] == "fp-1"
