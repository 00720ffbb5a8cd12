"""Owner first: from the owner's activity to no new work accepted, and to the last in-flight answer ended.

Real processes: provider A (garage-peer with ``owner_gpu = "on"``, the other owner settings at
their defaults except a short quiet period) and a consumer C, each on a StandInBackend (an
instrument, not a model) streaming a token every TOKEN_DELAY s; ``nvidia-smi`` on PATH is the
stand-in tests/data/standin-nvidia-smi (no GPU behind it), which reports a foreign GPU process
while a flag file exists. Each trial: C streams a long answer, which A (the only provider) serves;
provider B joins; the flag is created (the owner starts a game). Measured from that moment:

  refused      A refuses new requests (its status says draining; ``owner_probe_interval`` bounds it)
  withdrawn    C no longer lists A as a provider of the model (A's withdrawn ad reached it)
  last ended   A has no answer in flight: the long one ran past ``owner_drain_timeout`` and was cut
  answer       C's client got the whole answer (continued on B, token-exact)

then the flag is removed and, after the quiet period, A serves again (also timed); B leaves.

    .venv/bin/python benchmarks/owner_first.py [--trials 3]     # ~1.5 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.client import get  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from tools.testkit import free_port, standin_process, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STANDIN_SMI = REPO / "tests" / "data" / "standin-nvidia-smi"
TOKEN_DELAY = 0.02
TOKENS = 750
"""15 s of answer: past the drain bound, so the last in-flight answer is the one cut."""
QUIET = 3.0


def status(peer: PeerProcess) -> dict:
    return get(peer.api_url, peer.home, "/garage/v1/status")


def providers(consumer: PeerProcess) -> list[str]:
    data = httpx.get(consumer.api_url + "/models", timeout=5).json()["data"]
    return next((m["providers"] for m in data if m["id"] == "tiny"), [])


def poll(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate`` holds, polled every 20 ms."""
    return wait_until(predicate, timeout, what, interval=0.02)


def stream(consumer: PeerProcess, out: dict) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS, "stream": True}
    with httpx.stream("POST", consumer.api_url + "/chat/completions", json=body, timeout=120) as response:
        text = "".join(response.iter_text())
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line[6:7] == "{"]
    out["tokens"] = sum(1 for ch in chunks for c in ch.get("choices", []) if c.get("delta", {}).get("content"))
    out["done"] = "[DONE]" in text
    out["ended"] = time.monotonic()


def trial(root: Path, n: int, a: PeerProcess, c: PeerProcess, b_backend: str, flag: Path) -> dict[str, float]:
    poll(lambda: providers(c) == [a.peer_id], 30, "C seeing A alone")
    answer: dict = {}
    client = threading.Thread(target=stream, args=(c, answer))
    client.start()
    poll(lambda: status(a)["in_flight"] == 1, 30, "A answering")
    b = PeerProcess(root / f"b{n}", peer_args(bootstrap=[a.addr], backends={"tiny": b_backend})).start()
    try:
        b.wait_ready()
        poll(lambda: len(providers(c)) == 2, 30, "C seeing B")
        flag.write_text("4242, game-standin\n")
        start = time.monotonic()
        refused = poll(lambda: status(a)["draining"], 30, "A refusing")
        withdrawn = time.monotonic() - start + poll(lambda: a.peer_id not in providers(c), 30, "A's ad withdrawn")
        ended = time.monotonic() - start + poll(lambda: status(a)["in_flight"] == 0, 60, "A's answers ended")
        client.join(120)
        why = status(a)["not_serving"]
        flag.unlink()
        unflagged = time.monotonic()
        back = poll(lambda: status(a)["not_serving"] is None, 60, "A serving again")
        poll(lambda: a.peer_id in providers(c), 30, "C seeing A again")
    finally:
        b.stop()
    if not answer.get("done") or answer.get("tokens") != TOKENS:
        raise SystemExit(f"trial {n}: the client's answer was not whole: {answer}")
    return {
        "refused": refused,
        "withdrawn": withdrawn,
        "last_ended": ended,
        "answer": answer["ended"] - start,
        "resumed": back,
        "why": why,
        "quiet_to_resume": time.monotonic() - unflagged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="owner-first-") as tmp:
        root = Path(tmp)
        bin_dir = root / "standin-bin"
        bin_dir.mkdir()
        (bin_dir / "nvidia-smi").symlink_to(STANDIN_SMI)
        flag = root / "owner-plays"
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        os.environ["STANDIN_NVIDIA_SMI_FLAG"] = str(flag)
        (root / "a").mkdir()
        (root / "a" / "config.toml").write_text(f'owner_gpu = "on"\nowner_quiet = {QUIET}\n')
        with (
            standin_process(free_port(), token_delay=TOKEN_DELAY) as backend_a,
            standin_process(free_port(), token_delay=TOKEN_DELAY) as backend_b,
        ):
            a = PeerProcess(root / "a", peer_args(backends={"tiny": backend_a})).start()
            c = None
            try:
                a.wait_ready()
                c = PeerProcess(root / "c", peer_args(bootstrap=[a.addr])).start()
                c.wait_ready()
                settings = status(a)["owner"]
                print(f"owner watch of A: {settings}")
                results = [trial(root, n, a, c, backend_b, flag) for n in range(args.trials)]
            finally:
                for peer in (c, a):
                    if peer is not None:
                        peer.stop()
    print(f"status while paused: {results[0]['why']!r}")
    print(f"{'trial':>5} {'refused s':>10} {'withdrawn s':>12} {'last ended s':>13} {'answer s':>9} {'resumed s':>10}")
    for n, r in enumerate(results):
        print(
            f"{n:>5} {r['refused']:>10.2f} {r['withdrawn']:>12.2f} {r['last_ended']:>13.2f} "
            f"{r['answer']:>9.2f} {r['resumed']:>10.2f}"
        )
    for key in ("refused", "withdrawn", "last_ended", "answer", "resumed"):
        values = [r[key] for r in results]
        print(f"{key:>12}: median {statistics.median(values):.2f} s, max {max(values):.2f} s")
    print(
        "refused/withdrawn/last ended/answer: from the owner's activity; resumed: from its end "
        f"(quiet period {QUIET:.0f} s). Answers whole (continued on B): {len(results)}/{len(results)}"
    )


if __name__ == "__main__":
    main()
