"""Credit sybils cannot mint, between real peers (issue 19 item 5): a ring of fresh identities co-signing
fabricated receipts buys its provider no place in line, and ``garage ledger show`` calls that work unverified.

The backends are StandInBackends (instruments, not models).
"""

from __future__ import annotations

import json
import time

import trio
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.receipts import cosign_receipt, encode_receipt
from garage_p2p.core.spot_check import Outcome
from tools.ledger_builders import identity as make_identity
from tools.ledger_builders import receipt as make_receipt

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
FAKE_GPU_US = 60_000_000
"""Each fabricated receipt claims a minute of one GPU."""


async def fabricate(s, ring: int) -> None:
    """S logs ``ring`` receipts for work it never did, each co-signed by a fresh identity of its own."""
    hour_ago = int(time.time() * 1000) - 3_600_000
    for i in range(ring):
        sybil = make_identity(f"sybil-{i}-{s.identity.peer_id}")
        start = hour_ago + i * 60_000
        raw = encode_receipt(
            make_receipt(s.identity, sybil, f"fake-{i}", gpu_us=FAKE_GPU_US, start_ms=start, end_ms=start + 60_000)
        )
        assert await s.ledger.append_own(raw, cosign_receipt(sybil, raw)) is not None


async def test_a_sybil_ring_buys_no_place_in_line_and_its_work_shows_unverified(tmp_path, http):
    async with (
        standin_backend(first_token_delay=0.3) as slow,
        standin_backend() as fast,
        running_peer(tmp_path / "p", backends={"tiny": slow}, max_concurrency=1) as p,
        running_peer(tmp_path / "h", backends={"tiny": fast}, bootstrap=first_addr(p)) as h,
        running_peer(tmp_path / "s", bootstrap=first_addr(p)) as s,
        running_peer(tmp_path / "c", bootstrap=first_addr(p)) as c,
    ):
        pp, ph, ps = p.identity.peer_id, h.identity.peer_id, s.identity.peer_id
        for peer in (p, h, s, c):
            await wait_for_model(peer, "tiny", providers=2)
        # H serves P for real; S's ring of 20 co-signs an hour of GPU time S never gave.
        r = await http.post(p.api_url + "/chat/completions", json=CHAT, headers={"x-garage-peer": ph})
        assert r.status_code == 200
        await fabricate(s, 20)
        await wait_for(lambda: p.ledger.state.has_receipt(ph, pp, r.headers["x-request-id"]), timeout=15)
        await wait_for(lambda: p.ledger.state.head(ps).seq == 20, timeout=15)
        balances = p.ledger.state.balances()
        assert balances[ps].net_gpu_us > balances[ph].net_gpu_us > 0  # the raw balance ranks S first

        # P's only slot is taken by C; S asks, then H: a freed slot goes to the real contributor.
        done: list[str] = []

        async def ask(name: str, url: str) -> None:
            r = await http.post(url + "/chat/completions", json=CHAT, headers={"x-garage-peer": pp})
            done.append(name if r.status_code == 200 else f"{name}: {r.status_code} {r.text}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "c", c.api_url)
            await wait_for(lambda: p.provider.in_flight == 1, timeout=5, interval=0.01)
            nursery.start_soon(ask, "s", s.api_url)
            await wait_for(lambda: p.provider.admission.waiting == 1, timeout=5, interval=0.01)
            nursery.start_soon(ask, "h", h.api_url)
            await wait_for(lambda: p.provider.admission.waiting == 2, timeout=5, interval=0.01)
        assert done == ["c", "h", "s"]

        result = CliRunner().invoke(app, ["ledger", "show", "--json", "--home", str(tmp_path / "p")])
        assert result.exit_code == 0, result.output
        view = json.loads(result.output)
        by_peer = {row["peer_id"]: row for row in view["peers"]}
        assert view["viewer"] == pp
        assert by_peer[ps]["contributed"]["gpu_seconds"] == 20 * 60
        assert by_peer[ps]["unverified"]["gpu_seconds"] == 20 * 60 and by_peer[ps]["verified"]["gpu_seconds"] == 0
        assert not by_peer[ps]["contributor"]
        assert by_peer[ph]["verified"]["gpu_seconds"] > 0 and by_peer[ph]["unverified"]["gpu_seconds"] == 0
        table = CliRunner().invoke(app, ["ledger", "show", "--home", str(tmp_path / "p")]).output
        assert "UNVERIFIED" in table and f"credit as {pp} sees it" in table
        # The daemon's admin API gives the same view.
        api = (await http.get(p.api_url.removesuffix("/v1") + "/garage/v1/ledger", params={"peer": ps})).json()
        assert api["viewer"] == pp and api["peers"][0]["unverified"]["gpu_seconds"] == 20 * 60
        # Once P's verdicts refute H (as its spot-checks would), H's time moves to refuted.
        p.spot_checks.book.checked(ph, Outcome.REFUTED, pp, [])
        api = (await http.get(p.api_url.removesuffix("/v1") + "/garage/v1/ledger", params={"peer": ph})).json()
        row = api["peers"][0]
        assert row["refuted"]["gpu_seconds"] == row["contributed"]["gpu_seconds"] > 0
        assert row["verified"]["gpu_seconds"] == 0 and not row["contributor"]
