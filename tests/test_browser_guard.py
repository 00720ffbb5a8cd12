"""Browsers on the rig: another site's page may not drive the endpoint, a rebinding name is refused.

A real peer in this process; the browser's headers (Origin, Sec-Fetch-Site,
Host) are sent the way Chromium sends them. The dashboard's own test
(tests/integration/test_dashboard_chromium.py) runs the same rules in a real
Chromium.
"""

from __future__ import annotations

from garage_p2p.core.limits import Limits
from garage_p2p.gateway.auth import browser_refusal, host_name
from garage_p2p.store.admin_token import ADMIN_TOKEN_HEADER, read_admin_token
from garage_p2p.store.keys import KeyStore

from .conftest import running_peer, standin_backend

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_the_rules_on_headers():
    assert (
        host_name("127.0.0.1:8000") == "127.0.0.1"
        and host_name("[::1]:8000") == "::1"
        and host_name("localhost") == "localhost"
    )
    same = {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}
    assert browser_refusal(same, anonymous_allowed=True) is None
    assert browser_refusal({"host": "evil.example:8000"}, anonymous_allowed=True) is None  # not a browser: SDKs, curl
    other_site = browser_refusal({**same, "origin": "http://evil.example"}, anonymous_allowed=True)
    assert other_site.status == 403 and other_site.error.code == "cross_origin_refused"
    other_port = browser_refusal(
        {**same, "origin": "http://127.0.0.1:3000", "sec-fetch-site": "same-site"}, anonymous_allowed=True
    )
    assert other_port.error.code == "cross_origin_refused"
    navigation = browser_refusal({"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, anonymous_allowed=True)
    assert navigation.error.code == "cross_origin_refused"
    rebound = {"host": "rebind.evil.example:8000", "sec-fetch-site": "same-origin"}
    assert browser_refusal(rebound, anonymous_allowed=True).error.code == "host_refused"
    assert browser_refusal(rebound, anonymous_allowed=False) is None  # where a key is required, the key decides


async def test_another_sites_page_cannot_drain_the_peer_or_spend_its_credit(tmp_path, http):
    async with standin_backend() as backend, running_peer(tmp_path / "p", backends={"tiny": backend}) as peer:
        base = peer.api_url.removesuffix("/v1")
        host = base.removeprefix("http://")
        evil = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
        drained = await http.post(f"{base}/garage/v1/drain", headers=evil)
        assert drained.status_code == 403 and drained.json()["error"]["code"] == "cross_origin_refused"
        assert not peer.provider.draining
        chat = await http.post(f"{base}/v1/chat/completions", json=CHAT, headers=evil)
        assert chat.status_code == 403 and chat.json()["error"]["type"] == "PermissionDeniedError"
        rebound = await http.get(
            f"{base}/garage/v1/status", headers={"host": "rebind.evil.example", "sec-fetch-site": "same-origin"}
        )
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_refused"
        # The page at the peer's own address works, and so does the CLI.
        own = await http.get(f"{base}/garage/v1/status", headers={"sec-fetch-site": "same-origin", "host": host})
        assert own.status_code == 200 and own.json()["peer_id"] == peer.identity.peer_id
        assert (
            await http.post(
                f"{base}/v1/chat/completions", json=CHAT, headers={"origin": base, "sec-fetch-site": "same-origin"}
            )
        ).status_code == 200
        assert (await http.post(f"{base}/garage/v1/drain")).status_code == 200 and peer.provider.draining
        assert (await http.post(f"{base}/garage/v1/resume")).status_code == 200


async def test_reading_the_peers_state_needs_the_key_but_not_its_budget(tmp_path, http):
    _, key = KeyStore(tmp_path / "p" / "keys.sqlite").create("two-a-minute", Limits(rpm=2))
    auth = {"authorization": f"Bearer {key}"}
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}, require_keys=True) as peer,
    ):
        base = peer.api_url.removesuffix("/v1")
        browser = {"sec-fetch-site": "same-origin"}
        assert (await http.get(f"{base}/garage/v1/status", headers=browser)).status_code == 401
        assert (await http.get(f"{base}/metrics")).status_code == 401
        assert (await http.get(f"{base}/garage/v1/status")).status_code == 401  # loopback alone is no pass
        operator = {ADMIN_TOKEN_HEADER: read_admin_token(tmp_path / "p")}  # what the CLI on this machine sends
        assert (await http.get(f"{base}/garage/v1/status", headers=operator)).status_code == 200
        for _ in range(5):  # a dashboard polling: reads cost the key nothing
            assert (await http.get(f"{base}/garage/v1/status", headers={**browser, **auth})).status_code == 200
            assert (await http.get(f"{base}/metrics", headers=auth)).status_code == 200
        statuses = [
            (await http.post(f"{base}/v1/chat/completions", json=CHAT, headers=auth)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
