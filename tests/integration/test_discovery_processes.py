"""Eleven real ``garage-peer`` processes on 127.0.0.1, all bootstrapped through one.

Five of them serve a model each (StandInBackends: the point here is discovery,
not inference). Checks what a user sees through ``garage models``.
"""

from __future__ import annotations

import json

import httpx
import pytest

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.testkit import wait_until

from .helpers import garage, models_of, standin_processes


def models_seen(peer: PeerProcess) -> dict[str, list[str]]:
    result = garage("models", "--json", "--api", peer.api_url)
    assert result.returncode == 0, result.stderr
    return {m["model"]: m["providers"] for m in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def standins():
    with standin_processes([18600 + i for i in range(5)], models=[f"m{i}" for i in range(5)]) as urls:
        yield urls


def test_eleven_peers_learn_every_model_forget_dead_ones_and_rejoin(tmp_path, standins, monkeypatch):
    hub = PeerProcess(tmp_path / "hub", peer_args()).start()
    hub.wait_ready()
    peers = []
    for i in range(10):
        backends = {f"m{i}": standins[i]} if i < 5 else {}
        peers.append(PeerProcess(tmp_path / f"p{i}", peer_args(bootstrap=[hub.addr], backends=backends)).start())
    try:
        for p in peers:
            p.wait_ready()
        everyone = [hub, *peers]
        expected = {f"m{i}": [peers[i].peer_id] for i in range(5)}

        def all_know() -> bool:
            return all({m: sorted(v) for m, v in models_of(p).items()} == expected for p in everyone)

        took = wait_until(all_know, 30, "every peer knowing every model")
        print(f"11 peers knew all 5 models {took:.1f} s after the last one started")
        assert models_seen(peers[9]) == expected  # the CLI's view

        # A provider dies without a word (SIGKILL): its model goes once its connections have closed and
        # it cannot be dialled again (ads live for hours: liveness comes from the connection).
        peers[0].kill()
        wait_until(lambda: "m0" not in models_seen(peers[7]), 6 + 6, "m0 expiring")

        # A peer restarted WITHOUT --bootstrap rejoins through the peers it knew.
        assert peers[8].stop() == 0
        hub.kill()  # and the hub is gone too: only the stored peers can help
        rejoined = PeerProcess(peers[8].home, peer_args()).start()
        peers[8] = rejoined
        rejoined.wait_ready()
        wait_until(
            lambda: set(models_of(rejoined)) == {"m1", "m2", "m3", "m4"}, 20, "the restarted peer relearning the mesh"
        )
        r = httpx.post(
            rejoined.api_url + "/chat/completions",
            json={"model": "m3", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
            timeout=10,
        )
        assert r.status_code == 200 and r.headers["x-garage-provider"] == peers[3].peer_id
    finally:
        for p in [hub, *peers]:
            p.kill()
