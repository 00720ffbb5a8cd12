"""Fidelity: the mesh must not change what the backend said (issue 20).

The same requests, raw HTTP and the official ``openai`` client, go straight to a real vLLM-CPU
server and through two garage-peer processes (the client → B → A → that vLLM), and the answers
are diffed. Before the diff, ``normalise`` removes only what legitimately differs:

- ``id`` of a completion, a chunk, a tool call or a model permission, and every ``created``:
  vLLM draws a fresh random id and reads the clock for each answer, so two answers of vLLM
  itself differ there;
- ``providers`` in ``/v1/models``: the mesh's own field (which peers serve the model);
- the difference between a ``null`` and an absent field: OpenAI clients read both as None, and a
  non-streamed answer that may fail over is built by the mesh from the stream
  (docs/protocol.md), which cannot know which null fields a vLLM version writes;
- the order of an object's keys (JSON objects are unordered), and an error's ``message`` (prose);
- where a stream's chunks begin and end (``fold``): vLLM sends one token per chunk, or several
  when its reader lags, so two streams of vLLM itself differ there.

Everything else must be equal: text, token counts, finish and stop reasons, logprobs, tool
calls, ``system_fingerprint``, the model name, the error's status, ``type``, ``param`` and
``code`` (with its JSON type). Generation is deterministic: temperature 0, or a ``seed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.testkit import wait_until

ALIAS = "tiny-alias"
"""Peer A also serves vLLM's ``tiny`` under this name."""
MESSAGES = [{"role": "user", "content": "Say something about peers."}]
CHAT = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
TEXT = {"model": "tiny", "prompt": "def main(", "max_tokens": 4, "temperature": 0}
JSON = {"content-type": "application/json"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        },
    },
}
RANDOM_IDS = ("chatcmpl-", "cmpl-", "chatcmpl-tool-", "modelperm-")


@dataclass(frozen=True)
class Pair:
    """Where the same request goes twice: straight to vLLM and to the mesh's endpoint."""

    direct: str
    """vLLM's OpenAI base URL."""
    mesh: str
    """Peer B's OpenAI base URL (B serves nothing: every answer crosses to A)."""


@pytest.fixture(scope="module")
def pair(vllm, tmp_path_factory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("fidelity")
    a = PeerProcess(root / "a", peer_args(backends={"tiny": vllm.base_url, ALIAS: vllm.base_url})).start()
    b = None
    try:
        a.wait_ready()
        b = PeerProcess(root / "b", peer_args(bootstrap=[a.addr])).start()
        b.wait_ready()

        def knows_both() -> bool:
            data = httpx.get(b.api_url + "/models", timeout=5).json()["data"]
            return {"tiny", ALIAS} <= {m["id"] for m in data}

        wait_until(knows_both, 60, "B seeing A serve tiny and its alias")
        yield Pair(vllm.base_url, b.api_url)
    finally:
        for peer in (b, a):
            if peer is not None:
                peer.stop()


# -- normalising and comparing ---------------------------------------------------------------


def normalise(value: Any) -> Any:
    """``value`` without what legitimately differs between two answers (module docstring)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if item is None or key in ("created", "providers"):
                continue
            if key == "id" and isinstance(item, str) and item.startswith(RANDOM_IDS):
                continue
            out[key] = normalise(item)
        return out
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


def differences(direct: Any, mesh: Any, where: str = "") -> list[str]:
    """Where two normalised answers differ (for the failure message)."""
    if isinstance(direct, dict) and isinstance(mesh, dict):
        return [
            d
            for k in sorted(direct.keys() | mesh.keys())
            for d in differences(direct.get(k), mesh.get(k), f"{where}.{k}")
        ]
    if isinstance(direct, list | tuple) and isinstance(mesh, list | tuple) and len(direct) == len(mesh):
        return [
            d for i, (x, y) in enumerate(zip(direct, mesh, strict=True)) for d in differences(x, y, f"{where}[{i}]")
        ]
    return [] if direct == mesh else [f"{where or 'answer'}: vLLM {direct!r}, mesh {mesh!r}"]


@dataclass
class Answer:
    """One HTTP answer, parsed: a JSON body or the events of a stream."""

    status: int
    media_type: str
    body: Any
    """The JSON body, or the list of events (parsed JSON, or the string ``[DONE]``)."""

    def normalised(self) -> tuple[int, str, Any]:
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = {"error": {k: v for k, v in body["error"].items() if k != "message"}}
        if isinstance(body, list):
            body = fold(body)
        return self.status, self.media_type, normalise(body)


def fold(events: list[Any]) -> dict[str, Any]:
    """A stream as one object: its chunks merged per choice (their strings joined, their lists
    appended), the other fields' last values, and where ``[DONE]`` came. vLLM itself sends a
    token per chunk or several (when its reader lags), so chunk boundaries differ from run to run."""
    top: dict[str, Any] = {}
    choices: dict[int, Any] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        for key, value in event.items():
            if key == "choices":
                for choice in value:
                    choices[choice["index"]] = merge(choices.get(choice["index"]), choice)
            elif value is not None:
                top[key] = value
    done = [i for i, event in enumerate(events) if event == "[DONE]"]
    return {**top, "choices": [choices[i] for i in sorted(choices)], "done": done == [len(events) - 1]}


def merge(old: Any, new: Any) -> Any:
    """Chunk ``new`` folded into what came before: strings joined, lists appended (a list of
    indexed objects, such as tool calls, merged by index), other values replaced."""
    if old is None or new is None:
        return new if old is None else old
    if isinstance(old, str) and isinstance(new, str):
        return old + new
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: merge(old.get(k), new.get(k)) for k in old.keys() | new.keys()}
    if isinstance(old, list) and isinstance(new, list):
        if all(isinstance(x, dict) and "index" in x for x in old + new):
            by_index = {x["index"]: x for x in old}
            for x in new:
                by_index[x["index"]] = merge(by_index.get(x["index"]), x)
            return [by_index[i] for i in sorted(by_index)]
        return old + new
    return new


def parse(response: httpx.Response) -> Answer:
    media_type = response.headers.get("content-type", "").split(";")[0]
    if media_type == "text/event-stream":
        events: list[Any] = []
        for block in response.text.split("\n\n"):
            if block.startswith("data: "):
                data = block[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert not block.strip(), f"not an SSE data event: {block!r}"
        return Answer(response.status_code, media_type, events)
    return Answer(response.status_code, media_type, response.json())


def both(pair: Pair, method: str, path: str, **kwargs: Any) -> tuple[Answer, Answer]:
    """The same HTTP request to vLLM and through the mesh."""
    answers = []
    for base in (pair.direct, pair.mesh):
        response = httpx.request(method, base + path, timeout=120, **kwargs)
        answers.append(parse(response))
    return answers[0], answers[1]


def same(pair: Pair, method: str, path: str, **kwargs: Any) -> Answer:
    """Assert the mesh answers the request as vLLM does; vLLM's answer."""
    direct, mesh = both(pair, method, path, **kwargs)
    assert mesh.normalised() == direct.normalised(), differences(direct.normalised(), mesh.normalised())
    return direct


def post(pair: Pair, path: str, body: dict[str, Any]) -> Answer:
    return same(pair, "POST", path, json=body)


# -- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_plain_chat_and_text_completions(pair, stream):
    chat = post(pair, "/chat/completions", {**CHAT, "stream": stream})
    text = post(pair, "/completions", {**TEXT, "stream": stream})
    assert chat.status == text.status == 200


@pytest.mark.parametrize("stream", [False, True])
def test_n_logprobs_and_seed(pair, stream):
    sampled = {"temperature": 1.0, "seed": 7, "stream": stream}
    post(pair, "/chat/completions", {**CHAT, **sampled, "n": 2})
    post(pair, "/completions", {**TEXT, **sampled, "n": 2})
    post(pair, "/chat/completions", {**CHAT, "stream": stream, "logprobs": True, "top_logprobs": 2})
    post(pair, "/completions", {**TEXT, "stream": stream, "logprobs": 2})


@pytest.mark.parametrize("stream", [False, True])
def test_tools_and_json_schema(pair, stream):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    called = post(
        pair,
        "/chat/completions",
        {**CHAT, "max_tokens": 24, "stream": stream, "tools": [WEATHER], "tool_choice": forced},
    )
    structured = post(
        pair, "/chat/completions", {**CHAT, "max_tokens": 24, "stream": stream, "response_format": SCHEMA}
    )
    if not stream:
        assert called.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert "ok" in json.loads(structured.body["choices"][0]["message"]["content"])


def test_stream_usage_only_when_asked(pair):
    for path, body in (("/chat/completions", CHAT), ("/completions", TEXT)):
        asked = post(pair, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
        assert asked.body[-2]["usage"]["completion_tokens"] == 4
        both_on = {"include_usage": True, "continuous_usage_stats": True}
        post(pair, path, {**body, "stream": True, "stream_options": both_on})


def test_continuous_usage_without_include_usage_adds_no_usage(pair):
    """vLLM sends continuous usage only with include_usage; the provider forces include_usage to
    meter the request, which must not turn continuous usage on."""
    for path, body in (("/chat/completions", CHAT), ("/completions", TEXT)):
        answer = post(pair, path, {**body, "stream": True, "stream_options": {"continuous_usage_stats": True}})
        assert not any(isinstance(e, dict) and e.get("usage") for e in answer.body)


def test_system_fingerprint_of_a_stream_without_usage(pair):
    """vLLM stamps it on the finish chunk, or on the usage chunk when it sends one (which the mesh
    hides from a client that did not ask for usage)."""
    for path, body in (("/chat/completions", CHAT), ("/completions", TEXT)):
        for extra in ({}, {"n": 2, "temperature": 1.0, "seed": 3}):
            answer = post(pair, path, {**body, **extra, "stream": True})
            assert any(isinstance(e, dict) and e.get("system_fingerprint") for e in answer.body)


def test_a_model_served_under_an_alias_answers_with_that_name(pair):
    for stream in (False, True):
        for path, body in (("/chat/completions", CHAT), ("/completions", TEXT)):
            direct = parse(httpx.post(pair.direct + path, json={**body, "stream": stream}, timeout=120))
            mesh = parse(httpx.post(pair.mesh + path, json={**body, "model": ALIAS, "stream": stream}, timeout=120))
            events = mesh.body if stream else [mesh.body]
            assert {e["model"] for e in events if isinstance(e, dict)} == {ALIAS}
            renamed = [{**e, "model": "tiny"} if isinstance(e, dict) else e for e in events]
            mesh.body = renamed if stream else renamed[0]
            assert mesh.normalised() == direct.normalised()


# -- models ----------------------------------------------------------------------------------


def test_models_list_the_backends_card(pair):
    direct, mesh = both(pair, "GET", "/models")
    (card,) = [m for m in direct.body["data"] if m["id"] == "tiny"]
    (listed,) = [m for m in mesh.body["data"] if m["id"] == "tiny"]
    assert card["max_model_len"] == 512 and card["root"]
    assert normalise(listed) == normalise(card)
    models = [
        {m.id: normalise(m.model_dump()) for m in openai.OpenAI(base_url=url, api_key="unused").models.list()}
        for url in (pair.direct, pair.mesh)
    ]
    assert models[1]["tiny"] == models[0]["tiny"]


# -- errors ----------------------------------------------------------------------------------


def test_backend_errors_pass_through_unchanged(pair):
    """vLLM's own error (max_tokens over the context): its integer code, type and param."""
    answer = post(pair, "/chat/completions", {**CHAT, "max_tokens": 4096})
    assert answer.status == 400 and answer.body["error"]["code"] == 400


def test_a_body_that_is_not_declared_json_is_refused_as_vllm_refuses_it(pair):
    body = json.dumps(CHAT).encode()
    answer = same(pair, "POST", "/chat/completions", content=body, headers={"content-type": "text/plain"})
    assert answer.status == 400
    same(pair, "POST", "/chat/completions", content=body)  # no content type at all
    same(pair, "POST", "/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"})


@pytest.mark.parametrize(
    "path, body",
    [
        ("/chat/completions", {**CHAT, "model": "no-such-model"}),
        ("/chat/completions", {"model": "tiny", "max_tokens": 4}),
        ("/chat/completions", {**CHAT, "messages": []}),
        ("/chat/completions", {**CHAT, "messages": "hi"}),
        ("/chat/completions", {**CHAT, "stream": [1]}),
        ("/completions", {"model": "tiny", "max_tokens": 4}),
    ],
    ids=["unknown model", "no messages", "empty messages", "messages not a list", "stream not a bool", "no prompt"],
)
def test_errors_of_bad_requests_are_vllms(pair, path, body):
    assert post(pair, path, body).status in (400, 404)


def test_errors_of_bodies_that_are_not_json_objects_are_vllms(pair):
    same(pair, "POST", "/chat/completions", content=b'{"model": "tiny", "messages": [', headers=JSON)
    same(pair, "POST", "/chat/completions", content=b'["a list"]', headers=JSON)


# -- the official client ---------------------------------------------------------------------


def test_the_openai_client_sees_the_same_objects(pair):
    clients = [
        openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) for url in (pair.direct, pair.mesh)
    ]

    def dumped(make) -> list[Any]:
        return [normalise(make(client)) for client in clients]

    chat = dumped(lambda c: c.chat.completions.create(**CHAT).model_dump())
    assert chat[0] == chat[1]
    text = dumped(lambda c: c.completions.create(**TEXT).model_dump())
    assert text[0] == text[1]
    chunks = dumped(lambda c: fold([x.model_dump() for x in c.chat.completions.create(**CHAT, stream=True)]))
    assert chunks[0] == chunks[1]

    def refused(client: openai.OpenAI, **body) -> tuple[type, Any, Any, Any]:
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(**{**CHAT, **body})
        return type(exc.value), exc.value.code, exc.value.type, exc.value.param

    for bad in ({"max_tokens": 4096}, {"model": "no-such-model"}):
        direct, mesh = (refused(client, **bad) for client in clients)
        assert mesh == direct
