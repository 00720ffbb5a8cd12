"""API keys: the store, the gate, and a real endpoint that asks for them."""

from __future__ import annotations

import json

import pytest
import trio
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.limits import Limits
from garage_p2p.core.messages import Usage
from garage_p2p.daemon import open_gate
from garage_p2p.gateway.auth import Gatekeeper, Refused, is_loopback
from garage_p2p.settings import Settings, SettingsError
from garage_p2p.store.admin_token import ADMIN_TOKEN_HEADER, read_admin_token
from garage_p2p.store.keys import KeyStore, KeyStoreError

from .conftest import running_peer, standin_backend, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_the_store_keeps_only_a_hash_and_checks_the_secret(tmp_path):
    store = KeyStore(tmp_path / "keys.sqlite")
    key, text = store.create("ci", Limits(rpm=5))
    assert text.startswith(f"gk-{key.id}-") and len(text) == 3 + 8 + 1 + 43
    assert store.check(text).id == key.id and store.check(text).limits == Limits(rpm=5)
    assert store.check(text[:-1] + ("A" if text[-1] != "A" else "B")) is None  # wrong secret
    assert store.check("gk-00000000-" + "x" * 43) is None and store.check("sk-whatever") is None
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("keys.sqlite*"))
    assert text.split("-", 2)[2].encode() not in raw  # the secret is never written
    store = KeyStore(tmp_path / "keys.sqlite")
    store.revoke(key.id)
    assert store.check(text) is None and store.active_count() == 0
    with pytest.raises(KeyStoreError, match="no key"):
        store.revoke("deadbeef")
    with pytest.raises(KeyStoreError, match="name"):
        store.create("", Limits())


def test_the_gate_lets_anonymous_loopback_in_and_holds_keys_to_their_limits(tmp_path):
    store = KeyStore(tmp_path / "keys.sqlite")
    _, text = store.create("ci", Limits(rpm=2))
    now = [0.0]
    gate = Gatekeeper(store, required=False, where="127.0.0.1:8000", clock=lambda: now[0])
    assert gate.admit(None).key_id is None
    assert gate.admit("Bearer unused").key_id is None  # what many OpenAI clients must send
    with pytest.raises(Refused) as bad:
        gate.admit("Bearer gk-00000000-" + "x" * 43)
    assert bad.value.info.status == 401 and bad.value.info.error.code == "invalid_api_key"
    first = gate.admit(f"Bearer {text}")
    gate.finish(first, Usage(prompt_tokens=3, completion_tokens=4))
    gate.admit(f"Bearer {text}")
    with pytest.raises(Refused) as limited:
        gate.admit(f"Bearer {text}")
    info = limited.value.info
    assert info.status == 429 and info.error.code == "rate_limit_exceeded" and info.retry_after == 30.0
    assert "requests per minute" in info.error.message
    trio.run(gate.flush)
    [key] = store.all()
    assert (key.requests, key.prompt_tokens, key.completion_tokens, key.refused) == (2, 3, 4, 1)

    required = Gatekeeper(store, required=True, where="0.0.0.0:8000")
    with pytest.raises(Refused) as missing:
        required.admit("Bearer unused")
    assert missing.value.info.status == 401 and "garage keys create" in missing.value.info.error.message


def test_an_endpoint_off_loopback_will_not_start_without_keys(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with pytest.raises(SettingsError, match="garage keys create"):
        open_gate(Settings(home=tmp_path, api="0.0.0.0:8000"))
    KeyStore(tmp_path / "keys.sqlite").create("ops", Limits())
    assert open_gate(Settings(home=tmp_path, api="0.0.0.0:8000")).required
    # The daemon's own CLI says the same in one line, before binding anything.
    result = CliRunner().invoke(
        __import__("garage_p2p.cli.peer", fromlist=["app"]).app,
        ["--home", str(tmp_path / "other"), "--api", "0.0.0.0:8000"],
    )
    assert result.exit_code == 1 and "garage keys create" in result.output and "Traceback" not in result.output


def test_the_keys_cli_creates_lists_and_revokes(tmp_path):
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--home", str(tmp_path), "--name", "team", "--rpm", "60", "--json"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.output)
    assert key["key"].startswith("gk-") and key["limits"]["rpm"] == 60
    listed = json.loads(runner.invoke(app, ["keys", "list", "--home", str(tmp_path), "--json"]).output)
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    assert runner.invoke(app, ["keys", "revoke", key["id"], "--home", str(tmp_path)]).exit_code == 0
    table = runner.invoke(app, ["keys", "list", "--home", str(tmp_path)]).output
    assert "revoked" in table and key["id"] in table
    missing = runner.invoke(app, ["keys", "list", "--home", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "garage keys create" in missing.output


async def test_a_peer_that_requires_keys_answers_401_429_and_serves_a_valid_key(tmp_path, http):
    import openai

    store = KeyStore(tmp_path / "a" / "keys.sqlite")
    _, good = store.create("ci", Limits(rpm=2))
    _, revoked = store.create("old", Limits())
    async with standin_backend() as backend:
        async with running_peer(tmp_path / "a", backends={"tiny": backend}, require_keys=True) as a:
            await wait_for_model(a, "tiny")
            url = a.api_url + "/chat/completions"
            missing = await http.post(url, json=CHAT)
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
            client = openai.AsyncOpenAI(base_url=a.api_url, api_key=good, max_retries=0)
            answer = await client.chat.completions.create(**CHAT)
            assert answer.choices[0].message.content
            await client.chat.completions.create(**CHAT)
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(**CHAT)
            assert int(limited.value.response.headers["retry-after"]) >= 1
            store.revoke(revoked.split("-")[1])
            await trio.sleep(1.1)  # the gate trusts a checked key for a second
            with pytest.raises(openai.AuthenticationError):
                await openai.AsyncOpenAI(base_url=a.api_url, api_key=revoked, max_retries=0).models.list()
            # The admin API needs a key or the operator's token (the CLI sends it): loopback alone is no pass.
            status_url = a.api_url.removesuffix("/v1") + "/garage/v1/status"
            assert (await http.get(status_url)).status_code == 401
            token = {ADMIN_TOKEN_HEADER: read_admin_token(tmp_path / "a")}
            assert (await http.get(status_url, headers=token)).status_code == 200
    [key, _] = store.all()
    assert key.requests == 2 and key.refused == 1 and key.completion_tokens == 8


async def test_oversized_headers_are_refused_and_the_endpoint_goes_on(tmp_path, http):
    async with running_peer(tmp_path / "a") as a:
        headers = {f"x-junk-{i}": "y" * 100 for i in range(300)}  # ~33 KiB of headers
        r = await http.get(a.api_url + "/models", headers=headers)
        assert r.status_code in (400, 431)
        assert (await http.get(a.api_url + "/models")).status_code == 200
