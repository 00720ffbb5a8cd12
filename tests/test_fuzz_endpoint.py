"""Schemathesis against the OpenAI-compatible endpoint of real in-process peers.

The OpenAPI document is built from the official one (tests/data/openai/openapi.json):
only the operations a peer serves (POST /chat/completions, POST /completions,
GET /models, under the server base /v1) and every schema they reference. The
changes are all about what the document expects back, none about what is sent:

- every status but 200 is declared as an OpenAI ``ErrorResponse`` (the
  official document declares only 429), so an error of any other shape fails
  the response checks;
- POST /completions may answer an event stream (the official document lists
  only JSON, though the API streams text completions too);
- choices may lack ``logprobs`` and a chat message ``refusal``, and a stream
  chunk's ``finish_reason`` may be null: the peer passes the backend's body
  through unchanged, and the stand-in backend (a measuring instrument, not a
  model) writes neither field (vLLM writes null). The stand-in's usage chunk of
  a text-completion stream is labelled as a chat chunk; that one is relabelled
  before checking (and has a failing test of its own, at the end).

No union is pruned: schemathesis generates from the full request schemas.

Cases run against two peers, A (serving "tiny" from a stand-in) and C (a
consumer that reaches A over the mesh), positive and negative generation for
each operation. A third of the JSON-object bodies are pointed at model "tiny"
so they reach the backend through the mesh (the rest get 404s); for those the
stand-in's own limits are respected (``max_tokens`` small, ``stream_options`` an
object): it is not the system under test, and it crashes or loops on others.

Checks on every response: never a 5xx; every error is an OpenAI error object
(``{"error": {"message", "type", "param", "code"}}``); a 200 conforms to the
document (schemathesis' response checks, and for event streams every chunk
against the stream schema); afterwards both peers still answer a chat.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from garage_p2p.core.penalties import THRESHOLD

from .conftest import OPENAPI, first_addr, running_peer, standin_backend, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

SERVED = {"/chat/completions": "post", "/completions": "post", "/models": "get"}
EXAMPLES = {
    # Chat requests are slow to generate (the messages union): ~0.1 s each.
    ("POST /chat/completions", GenerationMode.POSITIVE): 120,
    ("POST /chat/completions", GenerationMode.NEGATIVE): 60,
    ("POST /completions", GenerationMode.POSITIVE): 150,
    ("POST /completions", GenerationMode.NEGATIVE): 100,
    ("GET /models", GenerationMode.POSITIVE): 20,
}
"""max_examples per operation and generation mode (hypothesis stops earlier when it runs out)."""
STREAM_SCHEMA = {"/chat/completions": "CreateChatCompletionStreamResponse", "/completions": "CreateCompletionResponse"}
ERROR_KEYS = {"message", "type", "param", "code"}


def _referenced(document: dict[str, Any], root: Any) -> dict[str, dict[str, Any]]:
    """Every component ``root`` references, transitively: kind → name → definition."""
    found: dict[str, dict[str, Any]] = {}
    todo = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                _, _, kind, name = ref.split("/", 3)
                if name not in found.setdefault(kind, {}):
                    found[kind][name] = copy.deepcopy(document["components"][kind][name])
                    todo.append(found[kind][name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def _relax_passthrough(schemas: dict[str, Any]) -> None:
    """Let through what the stand-in backend omits (see the module docstring)."""

    def drop_required(schema: dict[str, Any], name: str) -> None:
        if name in schema.get("required", []):
            schema["required"] = [r for r in schema["required"] if r != name]

    for name in ("CreateChatCompletionResponse", "CreateCompletionResponse", "CreateChatCompletionStreamResponse"):
        items = schemas[name]["properties"]["choices"]["items"]
        drop_required(items, "logprobs")
        if name == "CreateChatCompletionStreamResponse":
            items["properties"]["finish_reason"] = {"anyOf": [items["properties"]["finish_reason"], {"type": "null"}]}
    drop_required(schemas["ChatCompletionResponseMessage"], "refusal")
    # Text-completion chunks reuse CreateCompletionResponse; theirs have no final reason yet either.
    items = schemas["CreateCompletionResponse"]["properties"]["choices"]["items"]
    items["properties"]["finish_reason"] = {"anyOf": [items["properties"]["finish_reason"], {"type": "null"}]}


def endpoint_document(base_url: str) -> dict[str, Any]:
    """The official OpenAPI document cut down to what a garage peer serves, at ``base_url``."""
    official = json.loads(OPENAPI.read_text())
    paths = {path: {method: copy.deepcopy(official["paths"][path][method])} for path, method in SERVED.items()}
    error = {
        "description": "An OpenAI error object",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for item in paths.values():
        for operation in item.values():
            operation["responses"] = {"200": operation["responses"]["200"], "default": error}
            operation.pop("security", None)
    components = _referenced(official, paths)
    components.setdefault("schemas", {})["ErrorResponse"] = copy.deepcopy(
        official["components"]["schemas"]["ErrorResponse"]
    )
    components["schemas"]["Error"] = copy.deepcopy(official["components"]["schemas"]["Error"])
    _relax_passthrough(components["schemas"])
    # The official document lists no event stream for text completions, though the API streams them.
    streamed = {"schema": {"$ref": "#/components/schemas/CreateCompletionResponse"}}
    paths["/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"] = streamed
    return {
        "openapi": official["openapi"],
        "info": {
            "title": "garage peer endpoint (from the official OpenAI document)",
            "version": official["info"]["version"],
        },
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": components,
    }


def _nullable_as_null_type(node: Any) -> Any:
    """The document's schemas as JSON Schema 2020-12 reads them: the official document says OpenAPI
    3.1 yet marks nullable fields with 3.0's ``nullable: true``, which a 2020-12 validator ignores
    (so OpenAI's own ``"logprobs": null`` in a stream chunk would not conform)."""
    if isinstance(node, list):
        return [_nullable_as_null_type(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_as_null_type(value) for key, value in node.items()}
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:endpoint", Resource.opaque(_nullable_as_null_type(document)))
    return Draft202012Validator({"$ref": f"urn:endpoint#/components/schemas/{name}"}, registry=registry)


def _for_standin(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` asking for model tiny, within what the stand-in backend handles."""
    body = {**body, "model": "tiny"}
    tokens = body.get("max_tokens")
    if not (isinstance(tokens, int) and 0 <= tokens <= 16):
        body["max_tokens"] = 3
    if "stream_options" in body and not isinstance(body["stream_options"], dict):
        del body["stream_options"]
    return body


class Fuzz:
    """Runs the generated cases (blocking: in a worker thread) and collects what went wrong."""

    def __init__(self, urls: list[str], scale: float = 1.0) -> None:
        self.urls = urls
        self.scale = scale
        """Multiplies EXAMPLES (benchmarks/fuzz_endpoint.py runs longer)."""
        self.document = endpoint_document(urls[0])
        self.schema = schemathesis.openapi.from_dict(self.document)
        self.error_schema = _validator(self.document, "ErrorResponse")
        self.stream_schemas = {path: _validator(self.document, name) for path, name in STREAM_SCHEMA.items()}
        self.tried: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.statuses: Counter[int] = Counter()
        self.to_backend = 0
        self.failures: list[str] = []
        self.session = requests.Session()

    def run(self) -> None:
        for result in self.schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # GET /models has no parameters: nothing to generate wrong.
                if (f"{operation.method.upper()} {operation.path}", mode) in EXAMPLES:
                    self._run_operation(operation, mode)

    def _run_operation(self, operation, mode: GenerationMode) -> None:
        label = f"{operation.method.upper()} {operation.path}"
        started = time.monotonic()

        @settings(
            max_examples=max(1, round(EXAMPLES[(label, mode)] * self.scale)),
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode), target=st.sampled_from(self.urls), tiny=st.integers(0, 2)
        )
        def one(case, target: str, tiny: int) -> None:
            if tiny == 0 and isinstance(case.body, dict):
                case.body = _for_standin(case.body)
                self.to_backend += 1
            self.tried[f"{label} ({mode.value})"] += 1
            try:
                response = case.call(base_url=target, session=self.session, timeout=30)
            except requests.RequestException as exc:
                self._fail(case, f"no HTTP answer: {exc!r}")
                return
            self.statuses[response.status_code] += 1
            self._check(case, operation.path, response)

        one()
        self.seconds[f"{label} ({mode.value})"] = time.monotonic() - started

    def _fail(self, case, problem: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(
                f"{case.method} {case.path}: {problem}\n    body sent: {json.dumps(case.body, default=repr)[:400]}"
            )

    def _check(self, case, path: str, response: schemathesis.Response) -> None:
        status = response.status_code
        if status >= 500:
            self._fail(case, f"HTTP {status}: {response.text[:300]}")
            return
        content_type = next(iter(response.headers.get("content-type", [])), "")
        event_stream = content_type.startswith("text/event-stream")
        vllm_code = False
        if status != 200:
            try:
                body = response.json()
            except ValueError:
                self._fail(case, f"HTTP {status} with a body that is not JSON: {response.text[:200]!r}")
                return
            # vLLM's dialect, which the mesh keeps (docs/protocol.md, "Fidelity"): the status as an integer code.
            error = body.get("error") if isinstance(body, dict) else None
            vllm_code = isinstance(error, dict) and error.get("code") == status
            if vllm_code:
                body = {**body, "error": {**error, "code": str(status)}}
            problems = [e.message for e in self.error_schema.iter_errors(body)]
            if not problems and set(body["error"]) != ERROR_KEYS:
                problems.append(f"error keys {sorted(body['error'])}")
            if problems:
                self._fail(case, f"HTTP {status} is not an OpenAI error object: {problems[:2]}: {response.text[:200]}")
                return
        elif event_stream:
            self._check_events(case, path, response.content)
        # Schemathesis' own checks: status and content type declared, body conforms to the schema.
        checks = [not_a_server_error, status_code_conformance, content_type_conformance]
        if not event_stream and not vllm_code:  # checked above, the integer code aside
            checks.append(response_schema_conformance)
        try:
            case.validate_response(response, checks=checks)
        except (Failure, FailureGroup) as exc:
            found = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
            self._fail(case, f"schemathesis checks, HTTP {status}: " + "; ".join(str(f)[:300] for f in found))

    def _check_events(self, case, path: str, raw: bytes) -> None:
        events = [e for e in raw.split(b"\n\n") if e]
        if not events or events[-1] != b"data: [DONE]":
            self._fail(case, f"an event stream that does not end with [DONE]: {raw[-200:]!r}")
            return
        for event in events[:-1]:
            if not event.startswith(b"data: "):
                self._fail(case, f"not an SSE data event: {event[:200]!r}")
                return
            chunk = json.loads(event[6:])
            if path == "/completions" and chunk.get("choices") == [] and chunk.get("object") == "chat.completion.chunk":
                # The stand-in labels a text-completion stream's usage chunk as a chat chunk:
                # test_standin_text_completion_stream_labels_its_usage_chunk_as_text_completion.
                chunk = {**chunk, "object": "text_completion"}
            problems = [e.message for e in self.stream_schemas[path].iter_errors(chunk)]
            if problems:
                self._fail(case, f"stream chunk does not conform: {problems[:2]}: {event[:200]!r}")
                return


@dataclass
class FuzzRun:
    """One schemathesis session against two peers, and what the peers did after it."""

    fuzz: Fuzz
    elapsed: float
    """Seconds the session took."""
    after: list[httpx.Response]
    """A plain chat through each peer once the session ended."""
    consumer_faults: int
    """Protocol faults the provider counted against the honest consumer."""

    def report(self) -> None:
        total = sum(self.fuzz.tried.values())
        print(
            f"schemathesis: {total} requests in {self.elapsed:.1f} s ({total / self.elapsed:.1f}/s), "
            f"{self.fuzz.to_backend} of them for model tiny"
        )
        for label, count in sorted(self.fuzz.tried.items()):
            print(f"  {label}: {count} in {self.fuzz.seconds[label]:.1f} s")
        print("  statuses:", dict(sorted(self.fuzz.statuses.items())))


async def fuzz_two_peers(workdir: Path, scale: float = 1.0) -> FuzzRun:
    """A serves "tiny" from a StandInBackend; C reaches it over the mesh; both endpoints are fuzzed.

    Observations are returned, to be asserted after the peers stopped: a failure
    inside their nurseries would surface as nested exception groups, too deep to read.
    """
    async with standin_backend() as backend:
        async with running_peer(workdir / "a", backends={"tiny": backend}) as a:
            async with running_peer(workdir / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                fuzz = Fuzz([a.api_url, c.api_url], scale=scale)
                started = time.monotonic()
                await trio.to_thread.run_sync(fuzz.run)
                elapsed = time.monotonic() - started
                async with httpx.AsyncClient(timeout=30) as http:
                    after = [await http.post(url + "/chat/completions", json=CHAT) for url in (a.api_url, c.api_url)]
                return FuzzRun(fuzz, elapsed, after, a.mesh.penalties.faults(c.identity.peer_id, "openai"))


async def test_schemathesis_against_the_endpoint(tmp_path):
    run = await fuzz_two_peers(tmp_path)
    run.report()
    fuzz = run.fuzz
    assert not fuzz.failures, f"{len(fuzz.failures)}+ failures:\n" + "\n".join(fuzz.failures)
    assert fuzz.statuses[200] > 0 and fuzz.to_backend > 0
    for r in run.after:  # the peers still serve
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "tok tok"
    # An honest consumer's requests never counted as protocol faults at the provider.
    assert run.consumer_faults == 0


# -- bodies the generators do not reach ---------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


def nested(depth: int) -> str:
    """A chat body for model tiny whose extra field ``x`` nests ``depth`` arrays."""
    return json.dumps({"model": "tiny", "max_tokens": 2, "messages": MESSAGES, "x": 0}).replace(
        "0}", "[" * depth + "]" * depth + "}"
    )


def is_openai_error(response, status: int) -> bool:
    if response.status_code != status:
        return False
    error = response.json().get("error")
    return isinstance(error, dict) and set(error) == ERROR_KEYS


async def test_json_nested_deeper_than_the_parser_allows_is_a_400_not_a_500(tmp_path, http):
    """json.loads raises RecursionError (not ValueError) past ~1000 levels: a client error, not ours."""
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            answers = {
                depth: await http.post(a.api_url + "/chat/completions", content=nested(depth), headers=JSON)
                for depth in (2_000, 100_000)
            }
            after = await http.post(a.api_url + "/chat/completions", json=CHAT)
    for depth, r in answers.items():
        assert is_openai_error(r, 400), (depth, r.status_code, r.text[:200])
    assert after.status_code == 200


async def test_a_body_that_cannot_be_encoded_into_a_request_head_is_not_a_500(tmp_path, http):
    """Bodies that json.loads takes but a request frame cannot carry: 256+ levels of nesting,
    or a lone surrogate in a string. They made encoding the HEAD frame raise in the consumer
    (a 500); now every endpoint refuses them up front with a 400."""
    bodies = {
        "nested 400 levels": nested(400),
        "lone surrogate": '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud800"}]}',
    }
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                local, relayed = {}, {}
                for name, body in bodies.items():
                    local[name] = (
                        await http.post(a.api_url + "/chat/completions", content=body, headers=JSON)
                    ).status_code
                    r = await http.post(c.api_url + "/chat/completions", content=body, headers=JSON)
                    relayed[name] = (r.status_code, r.json()["error"]["code"])
                after = await http.post(c.api_url + "/chat/completions", json=CHAT)
    # The same answer wherever the client asks: a 400 naming the problem, never a 500.
    assert local == {name: 400 for name in bodies}
    assert relayed == {name: (400, "invalid_json") for name in bodies}, relayed
    assert after.status_code == 200


async def test_a_client_body_relayed_by_an_honest_consumer_is_not_held_against_that_peer(tmp_path, http):
    """200-255 levels of nesting: the consumer encodes the HEAD, the provider's JSON parser
    (pydantic's recursion limit, 200) refuses it as a protocol fault and penalises the consumer
    peer; the client gets 400 "bad request frame" where the provider itself would serve it. Five
    such requests from any client of the consumer's endpoint get the consumer banned by the
    provider (core/penalties.py THRESHOLD), and then none of its clients is served."""
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}) as a:
            async with running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                answers = [
                    await http.post(c.api_url + "/chat/completions", content=nested(230), headers=JSON)
                    for _ in range(THRESHOLD)
                ]
                faults = a.mesh.penalties.counts("openai")
                after = await http.post(c.api_url + "/chat/completions", json=CHAT)
    assert after.status_code == 200, (
        f"the consumer is no longer served after {THRESHOLD} nested bodies: {after.text[:200]}"
    )
    assert faults.get(c.identity.peer_id, 0) == 0, faults
    for r in answers:
        assert r.status_code == 200 or (r.status_code == 400 and "bad request frame" not in r.text), r.text[:300]


async def test_standin_text_completion_stream_labels_its_usage_chunk_as_text_completion(http):
    """The stand-in (tools/standin_backend.py) writes object "chat.completion.chunk"
    on the usage chunk of a /v1/completions stream; vLLM and OpenAI write "text_completion"."""
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    async with standin_backend() as backend:
        async with http.stream("POST", backend + "/completions", json=body) as r:
            raw = b"".join([chunk async for chunk in r.aiter_bytes()])
    chunks = [json.loads(e[6:]) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    assert [c["object"] for c in chunks] == ["text_completion"] * len(chunks)
