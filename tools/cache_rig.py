"""Two vLLM-CPU providers with prefix caching behind garage-peer processes, and consumers: the rig of
the cache-aware routing test and benchmark (tests/integration/test_cache_routing_vllm.py,
benchmarks/cache_routing.py).

vLLM 0.32 turns prefix caching on by default for a generating model on x86 (``EngineArgs``: the
model's ``is_prefix_caching_supported``); the rig passes ``--enable-prefix-caching`` anyway, so a
changed default cannot silently void the measurement. The tiny model has 1,024 positions
(bootstrap/make_tiny_model.py), so the servers run with ``--max-model-len 1024``.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.provider.backend_metrics import iter_samples
from garage_p2p.runtime.vllm_cpu import VllmServer, default_tiny_model, default_vllm_python, run_vllm_cpus

MAX_MODEL_LEN = 1024
"""The tiny model's positions."""
WORDS = (
    "mesh peer provider cache prefix token route model answer latency queue rig gpu garage stream "
    "ledger receipt relay gossip table shard batch turn prompt system careful assistant question"
).split()


@dataclass
class CacheRig:
    """vLLM servers, one provider peer in front of each, and consumer peers that know them all."""

    servers: list[VllmServer]
    providers: list[PeerProcess]
    consumers: dict[str, PeerProcess] = field(default_factory=dict)

    def wait_providers(self, consumer: PeerProcess, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = httpx.get(consumer.api_url + "/models", timeout=5).json()["data"]
            if any(m["id"] == "tiny" and len(m.get("providers", [])) >= len(self.providers) for m in data):
                return
            time.sleep(0.2)
        raise AssertionError(f"the consumer does not know {len(self.providers)} providers of tiny")

    def warm(self, consumer: PeerProcess, rounds: int = 2) -> None:
        """Requests pinned to each provider (``x-garage-peer``), so that the consumer's router has
        seen both deliver: it would otherwise keep to the first it tried, the other being scored at
        the pessimistic defaults."""
        body = {"model": "tiny", "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 16, "stream": True}
        with httpx.Client(timeout=120) as client:
            for _ in range(rounds):
                for provider in self.providers:
                    headers = {"x-garage-peer": provider.peer_id}
                    r = client.post(consumer.api_url + "/chat/completions", json=body, headers=headers)
                    assert r.status_code == 200, r.text

    def prefix_cache(self) -> tuple[float, float]:
        """(hits, queries) in prompt tokens, summed over the servers (vLLM's own counters)."""
        hits = queries = 0.0
        for server in self.servers:
            text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
            for sample in iter_samples(text):
                if sample.name == "vllm:prefix_cache_hits_total":
                    hits += sample.value
                elif sample.name == "vllm:prefix_cache_queries_total":
                    queries += sample.value
        return hits, queries

    def provider_of(self, peer_id: str) -> int:
        """The index of the provider with ``peer_id``."""
        return next(i for i, p in enumerate(self.providers) if p.peer_id == peer_id)


def prefill_heavy_model() -> Path:
    """The benchmark's wider model (bootstrap/make_tiny_model.py --prefill-heavy), made once into the
    garage cache beside the tiny one."""
    out = default_tiny_model().with_name("tiny-llama-prefill-heavy")
    maker = Path(__file__).resolve().parents[1] / "bootstrap" / "make_tiny_model.py"
    subprocess.run([str(default_vllm_python()), str(maker), str(out), "--prefill-heavy"], check=True)
    return out


@contextlib.contextmanager
def cache_rig(
    root: Path,
    consumers: dict[str, list[str]],
    model_dir: Path | None = None,
    max_model_len: int = MAX_MODEL_LEN,
    benchmarked: bool = False,
    kv_cache: str | None = None,
) -> Iterator[CacheRig]:
    """Two vLLM-CPU servers and their providers, and a consumer per entry of ``consumers`` (name →
    extra garage-peer flags); everything stopped on exit. ``benchmarked``: each provider runs
    ``garage bench`` on its server first, as start.sh does on a rig, so its ad carries its measured
    speed and a consumer's router starts from that, not from the slow default prior (under which a
    router keeps to the first provider it used, whatever it is asked to do). ``kv_cache``: each
    server's KV cache (vLLM's ``--kv-cache-memory-bytes``, e.g. ``768M``) instead of the runtime's
    64 MiB, which holds the tiny model's whole trace but two long conversations of a wider one.

    Server i's OpenMP threads run on core i (of two): two rigs, each with a core of its own. vLLM's
    ``auto`` binding put both on core 0, so "two providers" shared one core and a request spilled to
    the other one slowed the first as much as if it had stayed."""
    with contextlib.ExitStack() as stack:
        servers = stack.enter_context(
            run_vllm_cpus(
                2,
                log_dir=root,
                python=default_vllm_python(),
                model_dir=model_dir or default_tiny_model(),
                max_model_len=max_model_len,
                cores=("0", "1") if (os.cpu_count() or 1) >= 2 else None,
                extra_args=("--enable-prefix-caching", *(("--kv-cache-memory-bytes", kv_cache) if kv_cache else ())),
            )
        )
        # A cold vLLM's first answers are slow (lazy initialisation): taken here, they do not skew
        # the delivered TTFT the consumers' routers start from.
        with httpx.Client(timeout=120) as client:
            for server in servers:
                for _ in range(2):
                    body = {"model": "tiny", "prompt": "warm up", "max_tokens": 4}
                    client.post(server.base_url + "/completions", json=body).raise_for_status()
        providers: list[PeerProcess] = []
        for i, server in enumerate(servers):
            if benchmarked:
                bench = [sys.executable, "-m", "garage_p2p.cli.garage", "bench", "--home", str(root / f"p{i}")]
                bench += ["--backend", f"tiny={server.base_url}", "--concurrency", "4", "--max-tokens", "32"]
                subprocess.run(bench, check=True, capture_output=True, timeout=600)
            boot = [providers[0].addr] if providers else []
            peer = PeerProcess(root / f"p{i}", peer_args(backends={"tiny": server.base_url}, bootstrap=boot)).start()
            stack.callback(peer.stop)
            peer.wait_ready()
            providers.append(peer)
        rig = CacheRig(servers, providers)
        for name, extra in consumers.items():
            args = peer_args(bootstrap=[p.addr for p in providers], extra=extra)
            consumer = PeerProcess(root / name, args).start()
            stack.callback(consumer.stop)
            consumer.wait_ready()
            rig.consumers[name] = consumer
        for consumer in rig.consumers.values():
            rig.wait_providers(consumer)
        yield rig


def text(rng: random.Random, words: int) -> str:
    """``words`` words drawn from WORDS."""
    return " ".join(rng.choice(WORDS) for _ in range(words))


def turn_body(system: str, history: list[dict], question: str, max_tokens: int) -> dict:
    """A chat request: the system prompt, the conversation so far, and the next question."""
    messages = [{"role": "system", "content": system}, *history, {"role": "user", "content": question}]
    # ignore_eos: the random-weight model may stop at once; every answer then has max_tokens tokens.
    return {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
