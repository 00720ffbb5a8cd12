"""``garage bench`` against a running peer's backend: another peer sees the figures in its ad, no restart.

Real ``garage-peer`` processes on 127.0.0.1 and a StandInBackend (a paced
token emitter, an instrument: the point is the ad, not the speed).
"""

from __future__ import annotations

import json

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.testkit import free_port, wait_until

from .helpers import garage, models_of, standin_processes


def _claimed_tps(consumer: PeerProcess, provider: str) -> float | None:
    """The single-stream tokens/s ``provider``'s ad claims for ``tiny`` (``garage peers --json`` on ``consumer``)."""
    listed = json.loads(garage("peers", "--json", "--home", str(consumer.home)).stdout)
    return next(
        (p["delivery"]["tiny"]["claimed_tps"] for p in listed if p["peer_id"] == provider and "tiny" in p["delivery"]),
        None,
    )


def test_bench_reaches_the_running_peers_ad(tmp_path):
    with standin_processes([free_port()], token_delay=0.005) as (url,):
        a = PeerProcess(tmp_path / "a", peer_args(backends={"tiny": url})).start()
        peers = [a]
        try:
            a.wait_ready()
            c = PeerProcess(tmp_path / "c", peer_args(bootstrap=[a.addr])).start()
            peers.append(c)
            c.wait_ready()
            wait_until(lambda: a.peer_id in models_of(c).get("tiny", []), 30, "C learning that A serves tiny")
            assert _claimed_tps(c, a.peer_id) is None  # no benchmark yet
            out = garage(
                "bench",
                "--home",
                str(a.home),
                "--backend",
                f"tiny={url}",
                "--concurrency",
                "2",
                "--max-tokens",
                "8",
                "--json",
            )
            assert out.returncode == 0, out.stderr
            measured = json.loads(out.stdout)["tiny"]["single_stream_tps"]
            took = wait_until(lambda: _claimed_tps(c, a.peer_id) is not None, 30, "C seeing A's benchmark in its ad")
            assert abs(_claimed_tps(c, a.peer_id) - measured) <= 0.1, (measured, _claimed_tps(c, a.peer_id))
            assert "the running peer now advertises the benchmarks of: tiny" in out.stderr, out.stderr
            print(f"C saw the new benchmark {took:.1f} s after `garage bench` returned")
        finally:
            for p in peers:
                p.stop()
