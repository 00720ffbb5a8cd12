"""``garage doctor`` against running peers: healthy, broken backend, copied identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import trio

from garage_p2p.core.capabilities import make_ad, sign_ad
from garage_p2p.core.identity import Identity

from .conftest import first_addr, running_peer, standin_backend, wait_for


async def doctor(api_url: str) -> tuple[int, list[dict]]:
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "garage_p2p.cli.garage", "doctor", "--json", "--api", api_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    return result.returncode, json.loads(result.stdout)


def state(checks: list[dict], name: str) -> str:
    return next(c["state"] for c in checks if c["check"] == name)


async def test_doctor_reports_problems_with_their_fix(tmp_path):
    async with standin_backend() as url:
        async with running_peer(tmp_path / "hub") as hub:
            async with running_peer(
                tmp_path / "a", backends={"tiny": url, "gone": "http://127.0.0.1:9/v1"}, bootstrap=first_addr(hub)
            ) as a:
                await wait_for(lambda: a.mesh.connected_peers(), 10)
                code, checks = await doctor(a.api_url)
                assert code == 1  # the dead backend
                assert state(checks, "backend tiny") == "ok"
                dead = next(c for c in checks if c["check"] == "backend gone")
                assert dead["state"] == "fail" and "--backend" in dead["fix"]
                assert state(checks, "connections") == "ok"
                assert state(checks, "identity") == "ok"
                assert state(checks, "clocks") == "ok"
                # A peer whose clock is 200 s slow serves A its table, its own ad first.
                peer = Identity.from_seed(os.urandom(32))
                slow = make_ad(
                    peer,
                    seq=1,
                    now=time.time() - 200,
                    ttl=20,
                    addrs=(),
                    models=(),
                    version="x",
                )
                intake = a.table.offer(sign_ad(peer, slow), time.time(), via=peer.peer_id)
                assert intake.blame is None and intake.clock_skew is not None
                _code, checks = await doctor(a.api_url)
                clocks = next(c for c in checks if c["check"] == "clocks")
                assert clocks["state"] == "warn" and f"peer {peer.peer_id}'s clock is off by -200 s" in clocks["detail"]
