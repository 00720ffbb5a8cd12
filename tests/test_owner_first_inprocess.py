"""Owner first with real peers (real libp2p, real HTTP) and real probes.

The GPU probe reads a stand-in ``nvidia-smi`` (tests/data/standin-nvidia-smi, no GPU behind it)
that reports a foreign GPU process while a flag file exists; the process-name probe sees a real
process (a copy of ``sleep`` under a chosen name).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from garage_p2p.provider.owner_probe import named_processes

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model
from .test_failover_inprocess import imitation_app, serving

STANDIN_SMI = Path(__file__).resolve().parent / "data" / "standin-nvidia-smi"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
OWNER = {"owner_quiet": 1.0, "owner_probe_interval": 0.2, "owner_drain_timeout": 1.0}


@pytest.fixture
def standin_gpu(tmp_path, monkeypatch) -> Path:
    """Puts the stand-in first on PATH as ``nvidia-smi``; returns its flag file (absent: the GPU is idle)."""
    bin_dir = tmp_path / "standin-bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(STANDIN_SMI)
    flag = tmp_path / "owner-plays"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_NVIDIA_SMI_FLAG", str(flag))
    return flag


def garage_status(api_url: str) -> str:
    """What ``garage status`` prints for the peer at ``api_url``."""
    done = subprocess.run(
        [sys.executable, "-m", "garage_p2p.cli.garage", "status", "--api", api_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def chat(client: httpx.AsyncClient, api_url: str, pin: str | None = None) -> httpx.Response:
    headers = {"x-garage-peer": pin} if pin else {}
    return await client.post(api_url + "/chat/completions", json=CHAT, headers=headers, timeout=30)


async def test_a_foreign_gpu_process_drains_the_provider_and_quiet_brings_it_back(tmp_path, standin_gpu):
    async with (
        standin_backend() as url_a,
        standin_backend() as url_b,
        running_peer(tmp_path / "a", backends={"tiny": url_a}, owner_gpu="on", **OWNER) as a,
        running_peer(tmp_path / "b", backends={"tiny": url_b}, bootstrap=first_addr(a)) as b,
        running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c,
        httpx.AsyncClient() as client,
    ):
        await wait_for_model(c, "tiny", providers=2)
        assert a.status()["not_serving"] is None
        assert (await chat(client, c.api_url, pin=a.identity.peer_id)).status_code == 200

        standin_gpu.write_text("4242, game-standin\n")
        await wait_for(lambda: a.provider.draining)
        assert a.status()["not_serving"] == "paused: owner activity: GPU process game-standin (pid 4242)"
        # The ad is withdrawn: the consumer routes to B alone, and A takes no new work.
        await wait_for(lambda: c.dispatcher.known_models().get("tiny") == [b.identity.peer_id])
        assert (await chat(client, c.api_url)).status_code == 200
        refused = await chat(client, c.api_url, pin=a.identity.peer_id)
        assert refused.status_code >= 500, refused.text
        assert not b.provider.draining

        standin_gpu.unlink()
        await wait_for(lambda: a.status()["not_serving"] is None, timeout=15)
        await wait_for_model(c, "tiny", providers=2)
        assert (await chat(client, c.api_url, pin=a.identity.peer_id)).status_code == 200


async def test_the_process_name_probe_sees_a_running_process(tmp_path):
    name = "owner-game-standin"  # longer than comm's 15 characters: matched on the command line
    game = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", game)
    assert named_processes([name]) == ()
    async with (
        standin_backend() as url,
        running_peer(tmp_path / "a", backends={"tiny": url}, owner_processes=[name, "other.exe"], **OWNER) as a,
    ):
        assert a.status()["not_serving"] is None
        process = subprocess.Popen([str(game), "60"])
        try:
            await wait_for(lambda: a.provider.draining)
            assert a.status()["not_serving"] == f"paused: owner activity: process {name}"
            assert a.status()["owner"]["resume_in_s"] is not None
            shown = await trio.to_thread.run_sync(garage_status, a.api_url)
            assert f"serving     no: paused: owner activity: process {name}" in shown
        finally:
            process.kill()
            process.wait()
        await wait_for(lambda: a.status()["not_serving"] is None, timeout=15)
        assert not a.provider.draining


async def test_a_drain_by_hand_outlasts_the_owner(tmp_path):
    """``garage drain`` holds though the owner goes quiet; ``garage resume`` waits for the owner."""
    name = "hand-standin"
    game = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", game)
    async with (
        standin_backend() as url,
        running_peer(tmp_path / "a", backends={"tiny": url}, owner_processes=[name], **OWNER) as a,
    ):
        process = subprocess.Popen([str(game), "60"])
        try:
            await wait_for(lambda: a.provider.draining)
            await a.resume()  # the owner still plays: no
            assert a.provider.draining and a.status()["not_serving"].startswith("paused: owner activity")
            await a.drain()
        finally:
            process.kill()
            process.wait()
        await wait_for(lambda: a.owner is not None and a.owner.decision.serving, timeout=15)
        await trio.sleep(0)
        assert a.provider.draining and a.status()["not_serving"].startswith("drained")
        await a.resume()
        assert not a.provider.draining and a.status()["not_serving"] is None


async def test_an_answer_in_flight_past_the_drain_bound_is_continued_elsewhere(tmp_path, standin_gpu):
    """A's answer outlives owner_drain_timeout: A cuts it and the consumer finishes it on B, token-exact."""
    tokens = 600  # ~3 s of tokens at the imitation's pace: far past the 0.3 s bound
    body = {**CHAT, "max_tokens": tokens, "stream": True}
    owner = {**OWNER, "owner_drain_timeout": 0.3}
    async with (
        serving(imitation_app()) as url_a,
        serving(imitation_app()) as url_b,
        running_peer(tmp_path / "a", backends={"tiny": url_a}, owner_gpu="on", **owner) as a,
        running_peer(tmp_path / "c", bootstrap=first_addr(a)) as c,
        httpx.AsyncClient(timeout=60) as client,
        trio.open_nursery() as nursery,
    ):
        await wait_for_model(c, "tiny")
        answer: list[httpx.Response] = []

        async def ask() -> None:
            answer.append(await client.post(c.api_url + "/chat/completions", json=body))

        nursery.start_soon(ask)
        await wait_for(lambda: a.provider.in_flight == 1)  # A, the only provider, answers
        async with running_peer(tmp_path / "b", backends={"tiny": url_b}, bootstrap=first_addr(a)) as b:
            await wait_for_model(c, "tiny", providers=2)
            standin_gpu.write_text("4242, game-standin\n")
            # B takes the answer over while it is still being written (A alone would finish it later).
            await wait_for(lambda: b.provider.in_flight == 1, timeout=10)
            assert a.provider.in_flight == 0 and not answer
            await wait_for(lambda: bool(answer), timeout=30)
            assert a.owner is not None and a.owner.last_in_flight_ended is not None
        chunks = [json.loads(line[6:]) for line in answer[0].text.splitlines() if line[6:7] == "{"]
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
        assert text == "".join(f" t{i}" for i in range(tokens))
        assert answer[0].text.count("[DONE]") == 1
