"""Every path the backend serves, through real peers in one process (issue 20 item 1).

Backends are StandInBackends (not models): A's publishes every path in its /openapi.json and says
what bytes it received (tools/standin_paths.py); B's publishes nothing, as a backend that serves
chat and completions only. C routes, by the paths each provider advertises.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import asynccontextmanager

import trio

from garage_p2p.core.endpoints import ENDPOINT_PATHS, GENERATION_PATHS
from tools.standin_backend import create_standin_app, serve_standin

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model

OTHER_PATHS = tuple(p for p in ENDPOINT_PATHS if p not in GENERATION_PATHS)
BOUNDARY = "garage-boundary-42"


@asynccontextmanager
async def backend_of_every_path():
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_standin, create_standin_app("tiny", paths=OTHER_PATHS), "127.0.0.1", 0)
        yield bound[0] + "/v1"
        nursery.cancel_scope.cancel()


def transcription_body(model: str) -> bytes:
    audio = b"RIFF" + bytes(range(256)) * 64 + b"\r\n--" + BOUNDARY.encode() + b"x"  # looks like a boundary, is not
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + audio
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@asynccontextmanager
async def mesh(tmp_path):
    """A serves ``tiny`` (every path) and ``alias`` (the same backend under another name); B serves
    ``tiny`` and ``plain`` from a chat-only backend; C is a consumer."""
    async with backend_of_every_path() as every, standin_backend() as chat_only:
        async with running_peer(tmp_path / "a", backends={"tiny": every, "alias": every}) as a:
            async with running_peer(
                tmp_path / "b", backends={"tiny": chat_only, "plain": chat_only}, bootstrap=first_addr(a)
            ) as b:
                async with running_peer(tmp_path / "c", bootstrap=first_addr(a) + first_addr(b)) as c:
                    await wait_for_model(c, "tiny", providers=2)
                    await wait_for_model(c, "plain")
                    await wait_for(lambda: "embeddings" in (offer_of(c, a, "tiny").paths or ()))
                    yield a, b, c


def offer_of(consumer, provider, model: str):
    return next(m for m in consumer.table.get(provider.identity.peer_id, time.time()).ad.models if m.name == model)


async def test_each_path_goes_only_to_providers_advertising_it_with_the_clients_bytes(tmp_path, http):
    async with mesh(tmp_path) as (a, b, c):
        a_id, b_id, c_id = a.identity.peer_id, b.identity.peer_id, c.identity.peer_id
        assert set(offer_of(c, a, "tiny").paths or ()) >= {"chat", "embeddings", "responses", "transcriptions"}
        assert all(m.paths is None for m in c.table.get(b_id, time.time()).ad.models)  # as an older peer's ad
        # JSON as no serialiser writes it: the backend gets these bytes, not a re-encoding.
        sent = b'{ "input" : "hi",\n  "model":"tiny", "scale": 1.0e0, "note": "\\u00e9"}'
        ids = []
        for _ in range(6):
            r = await http.post(c.api_url + "/embeddings", content=sent, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            assert r.headers["x-garage-provider"] == a_id  # B's ad does not list embeddings
            got = r.json()
            assert got["standin_received"] == {
                "sha256": hashlib.sha256(sent).hexdigest(),
                "content_type": "application/json",
            }
            assert got["data"][0]["embedding"] == [0.25, -0.5, 0.125, 1.0]
            ids.append(r.headers["x-request-id"])
        # Multipart: the audio's bytes and the boundary arrive as the client sent them.
        body = transcription_body("tiny")
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        r = await http.post(c.api_url + "/audio/transcriptions", content=body, headers={"content-type": content_type})
        assert r.status_code == 200, r.text
        assert r.json()["standin_received"] == {
            "sha256": hashlib.sha256(body).hexdigest(),
            "content_type": content_type,
        }
        # vLLM's root paths.
        r = await http.post(c.api_url.removesuffix("/v1") + "/tokenize", json={"model": "tiny", "prompt": "hi"})
        assert r.status_code == 200 and r.json()["count"] == 8
        ids.append(r.headers["x-request-id"])
        # Receipts for each kind: embeddings and tokenize count prompt tokens, counter-signed by C.
        await wait_for(lambda: all(a.ledger.state.has_receipt(a_id, c_id, i) for i in ids), timeout=15)
        prompts = {e.receipt.request_id: e.receipt.prompt_tokens for e in a.ledger.state.counted(a_id)}
        assert [prompts[i] for i in ids] == [8] * 7
        # Chat still goes to B (an ad without paths serves chat and completions).
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        r = await http.post(c.api_url + "/chat/completions", json=chat, headers={"x-garage-peer": b_id})
        assert r.status_code == 200 and r.headers["x-garage-provider"] == b_id
        r = await http.post(
            c.api_url + "/embeddings", json={"model": "tiny", "input": "x"}, headers={"x-garage-peer": b_id}
        )
        assert r.status_code == 503 and r.json()["error"]["message"].endswith("on /v1/embeddings (x-garage-peer)")
        # ...and `garage route --path` says why.
        admin = c.api_url.removesuffix("/v1") + "/garage/v1/route"
        route = (await http.get(admin, params={"model": "tiny", "path": "/v1/embeddings"})).json()
        reasons = {x["peer_id"]: x["reason"] for x in route["candidates"]}
        assert reasons == {a_id: "", b_id: "does not serve /v1/embeddings"}


async def test_a_path_no_provider_of_the_model_serves_is_a_404_naming_it(tmp_path, http):
    async with mesh(tmp_path) as (a, b, c):
        r = await http.post(c.api_url + "/embeddings", json={"model": "plain", "input": "hi"})
        assert r.status_code == 404
        error = r.json()["error"]
        assert "/v1/embeddings" in error["message"] and error["code"] == "path_not_served"
        r = await http.post(c.api_url + "/rerank", json={"model": "nobody", "query": "q", "documents": ["d"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == 404  # as vLLM answers an unknown model
        r = await http.post(
            c.api_url + "/audio/translations", content=b"not multipart", headers={"content-type": "text/plain"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_multipart"
        # vLLM's JSON paths take application/json only: refused as vLLM refuses it, not forwarded.
        r = await http.post(
            c.api_url + "/embeddings", content=b'{"model":"tiny","input":"hi"}', headers={"content-type": "text/plain"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == 400
        assert "Only 'application/json' is allowed" in r.json()["error"]["message"]
        # The backend knows ``alias`` as ``tiny``: the model field is the one thing the provider changes,
        # in the request and back in a JSON answer (core/backend_answer.py).
        r = await http.post(c.api_url + "/embeddings", json={"model": "alias", "input": "hi"})
        assert r.status_code == 200 and r.json()["model"] == "alias"
        body = transcription_body("alias")
        r = await http.post(
            c.api_url + "/audio/transcriptions",
            content=body,
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        expected = body.replace(b"\r\n\r\nalias\r\n", b"\r\n\r\ntiny\r\n", 1)
        assert r.status_code == 200 and r.json()["standin_received"]["sha256"] == hashlib.sha256(expected).hexdigest()
        # A plain-text answer keeps its content type.
        field = f'Content-Disposition: form-data; name="response_format"\r\n\r\ntext\r\n--{BOUNDARY}--'
        text = transcription_body("tiny").replace(f"--{BOUNDARY}--".encode(), f"--{BOUNDARY}\r\n{field}".encode())
        r = await http.post(
            c.api_url + "/audio/transcriptions",
            content=text,
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert r.status_code == 200 and r.text == "tok tok tok\n"
        assert r.headers["content-type"] == "text/plain; charset=utf-8"


async def test_the_responses_api_plain_and_streamed(tmp_path, http):
    async with mesh(tmp_path) as (a, b, c):
        a_id, c_id = a.identity.peer_id, c.identity.peer_id
        request = {"model": "tiny", "input": "hi"}
        r = await http.post(c.api_url + "/responses", json=request)
        assert r.status_code == 200
        assert r.json()["usage"] == {"input_tokens": 8, "output_tokens": 5, "total_tokens": 13}
        plain = r.headers["x-request-id"]
        events = []
        async with http.stream("POST", c.api_url + "/responses", json={**request, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            streamed = r.headers["x-request-id"]
            text = b"".join([chunk async for chunk in r.aiter_bytes()]).decode()
        for block in text.strip().split("\n\n"):
            kind, data = block.split("\n")
            assert kind.startswith("event: ") and data.startswith("data: ")  # SSE framing as the backend wrote it
            events.append(json.loads(data.removeprefix("data: "))["type"])
        assert events == ["response.created"] + ["response.output_text.delta"] * 5 + ["response.completed"]
        await wait_for(lambda: all(a.ledger.state.has_receipt(a_id, c_id, i) for i in (plain, streamed)), timeout=15)
        receipts = {e.receipt.request_id: e.receipt for e in a.ledger.state.counted(a_id)}
        for i in (plain, streamed):
            assert (receipts[i].prompt_tokens, receipts[i].completion_tokens) == (8, 5)
