"""``garage doctor`` against running peers: healthy, broken backend, copied identity."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

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
