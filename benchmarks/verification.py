"""Spot-checks on real vLLM-CPU: false positives, detection, and what checks cost (issue 19).

Four providers of the name ``tiny``: the tiny model in float32 (A) and in bfloat16 (B), standing
for two honest GPUs; another model (X: the same tokenizer, weights from another seed) and a
random-text stand-in (R: a DISHONEST provider, not a model), both serving something else under
the name. Each answers the same chats at temperature 0 and at 0.8 (``--prompts`` of each), with
its token ids, and each answer goes through the consumer's check rule (core/spot_check.py
``SpotCheck``): the verifiers are the other providers, honest first, a dishonest one as the third
(so an honest answer meets a dishonest verifier whenever its first check fails).

Printed side by side with the baseline (no checks: nothing is ever refuted, nothing costs):

- per provider and temperature: checks, passed / refuted / inconclusive, the first verifier's
  statistic (share of misses at temperature 0, the likelihood z when sampled), and the check's
  time over the answer's own time (its GPU cost);
- false positives: refutations of A or B over all their checks (goal 0 over >= 1,000);
- detection: the measured per-check refutation rate d of X and R, and the probability that a
  provider like them is refuted within its first 200 answers at the default rate r,
  1 - (1 - r d)^200 (goal >= 99 %), for temperature-0 traffic and for half sampled;
- cost: r × check time / answer time (goal <= 3 % of served GPU time);
- added latency for the client (goal 0: checks run after the answer's END, off the request path):
  real garage-peer processes (A and B as providers, a consumer), ``--latency`` chats through the
  consumer with every answer checked (rate 1) and with none (rate 0), p50 and p95 of the client's
  time to its whole answer. Paced (the next request after the check finished): what the check's
  place on the path costs; back to back: on this 2-core machine the check's prefill shares the
  CPU with the next answer, which on real rigs runs on another provider's GPU.

    python benchmarks/verification.py [--prompts 250] [--max-tokens 64] [--latency 40] [--json]

The other model is made once into the garage cache (bootstrap/make_tiny_model.py --seed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.core.receipts import Receipt  # noqa: E402
from garage_p2p.core.spot_check import Case, Outcome, SpotCheck, judge  # noqa: E402
from garage_p2p.core.verification import detection_within, scores_from_prompt_logprobs, verification_body  # noqa: E402
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu  # noqa: E402
from garage_p2p.settings import Settings  # noqa: E402
from tools.testkit import checks_done, free_port, standin_process, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OTHER_SEED = 4321
WORDS = "peer mesh model route token answer rig relay ledger credit shard stream gpu count".split()
HONEST = ("A float32", "B bfloat16")
VERIFIERS = {
    "A float32": ("B bfloat16", "X other model"),
    "B bfloat16": ("A float32", "X other model"),
    "X other model": ("A float32", "B bfloat16", "R random text"),
    "R random text": ("A float32", "B bfloat16", "X other model"),
}
"""Verifiers in the order a check asks them: honest first, a dishonest one next."""


def other_model() -> Path:
    out = default_tiny_model().with_name(f"tiny-llama-seed{OTHER_SEED}")
    subprocess.run(
        [
            str(default_vllm_python()),
            str(ROOT / "bootstrap" / "make_tiny_model.py"),
            str(out),
            "--seed",
            str(OTHER_SEED),
        ],
        check=True,
    )
    return out


def prompts(n: int) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(n)]


def answer(client: httpx.Client, base: str, prompt: str, temperature: float, max_tokens: int, seed: int) -> dict:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "return_token_ids": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t = time.perf_counter()
    prompt_ids: list[int] = []
    ids: list[int] = []
    with client.stream("POST", base + "/chat/completions", json=body) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            prompt_ids = chunk.get("prompt_token_ids") or prompt_ids
            for choice in chunk.get("choices") or ():
                ids += choice.get("token_ids") or []
    return {"prompt_ids": prompt_ids, "ids": ids, "seconds": time.perf_counter() - t}


def case_of(provider: str, got: dict, temperature: float) -> Case:
    receipt = Receipt(
        request_id="bench", consumer="c", provider=provider, model="tiny", prompt_tokens=0, completion_tokens=0,
        gpus=1, gpu_us=0, start_ms=0, end_ms=0,
    )  # fmt: skip
    return Case(receipt, got["prompt_ids"], got["ids"], temperature)


def spot_check(client: httpx.Client, servers: dict[str, str], provider: str, case: Case) -> dict:
    """The consumer's rule with these verifiers: outcome, the first verifier's statistic, its time."""
    check = SpotCheck(case)
    top = 1 if case.temperature == 0 else 20
    first: dict = {}
    for _ in range(3):
        verifier = check.next_verifier(VERIFIERS[provider])
        if verifier is None:
            break
        t = time.perf_counter()
        body = verification_body("tiny", case.prompt_ids, case.completion_ids, top)
        reply = client.post(servers[verifier] + "/completions", json=body).json()
        seconds = time.perf_counter() - t
        try:
            rows = reply["choices"][0]["prompt_logprobs"]
            scores = scores_from_prompt_logprobs(rows, len(case.prompt_ids), case.completion_ids, top)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            check.verifier_failed(verifier, str(exc))
            continue
        judged = check.judged(verifier, scores)
        first = first or {"statistic": judge(case, scores).statistic, "passed": judged.passed, "seconds": seconds}
        if check.outcome is not None:
            break
    return {"outcome": (check.outcome or Outcome.INCONCLUSIVE).value, **first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=250)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--latency", type=int, default=40, help="chats per latency run (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    python, tiny, other = default_vllm_python(), default_tiny_model(), other_model()
    results: dict[str, dict] = {}
    latency: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            "A float32": stack.enter_context(run_vllm_cpu(python=python, model_dir=tiny, served_name="tiny")).base_url,
            "B bfloat16": stack.enter_context(
                run_vllm_cpu(python=python, model_dir=tiny, served_name="tiny", dtype="bfloat16")
            ).base_url,
            "X other model": stack.enter_context(
                run_vllm_cpu(python=python, model_dir=other, served_name="tiny")
            ).base_url,
            "R random text": stack.enter_context(standin_process(free_port(), random_text=True)),
        }
        with httpx.Client(timeout=120) as client:
            for name, base in servers.items():
                for temperature in (0.0, 0.8):
                    rows = []
                    for i, prompt in enumerate(prompts(args.prompts)):
                        got = answer(client, base, prompt, temperature, args.max_tokens, seed=i)
                        checked = spot_check(client, servers, name, case_of(name, got, temperature))
                        rows.append({**checked, "answer_s": got["seconds"]})
                    results[f"{name} @ T={temperature}"] = summarise(rows)
        if args.latency:
            latency = client_latency(servers["A float32"], servers["B bfloat16"], args.latency, args.max_tokens)
    report(results, latency, Settings.model_fields["spot_check_rate"].default, args.json)


def client_latency(a_url: str, b_url: str, chats: int, max_tokens: int) -> dict[str, dict]:
    """p50/p95 seconds to the whole answer through a consumer peer, checks at rate 1 and 0."""
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:

        def start(name: str, args: list[str]) -> PeerProcess:
            peer = PeerProcess(Path(tmp) / name, args).start()
            stack.callback(peer.stop)
            peer.wait_ready()
            return peer

        a = start("a", peer_args(backends={"tiny": a_url}))
        start("b", peer_args(backends={"tiny": b_url}, bootstrap=[a.addr]))
        for rate in ("1", "0"):
            consumer = start(f"c{rate}", peer_args(bootstrap=[a.addr], extra=["--spot-check-rate", rate]))
            wait_until(lambda c=consumer: len(_providers(c)) >= 2, 60, "two providers")
            for paced in (True, False):
                seconds = []
                with httpx.Client(timeout=120) as client:
                    for i in range(chats):
                        body = {
                            "model": "tiny",
                            "messages": [{"role": "user", "content": f"latency {i}"}],
                            "max_tokens": max_tokens,
                            "temperature": 0,
                            "ignore_eos": True,
                        }
                        t = time.perf_counter()
                        reply = client.post(consumer.api_url + "/chat/completions", json=body)
                        seconds.append(time.perf_counter() - t)
                        reply.raise_for_status()
                        if paced:
                            wait_until(
                                lambda c=consumer, n=i + 1, r=rate: checks_done(c.api_url) >= n * (r == "1"),
                                60,
                                "checks",
                            )
                key = f"rate {rate}, {'paced' if paced else 'back to back'}"
                qs = statistics.quantiles(seconds, n=20)
                out[key] = {"p50": statistics.median(seconds), "p95": qs[18]}
            # The back-to-back run's checks are still queued: the next consumer starts clean.
            consumer.stop()
    return out


def _providers(peer: PeerProcess) -> list[str]:
    data = httpx.get(peer.api_url + "/models", timeout=5).json()["data"]
    return next((m["providers"] for m in data if m["id"] == "tiny"), [])


def summarise(rows: list[dict]) -> dict:
    judged = [r for r in rows if r.get("passed") is not None]
    stats = [r["statistic"] for r in judged]
    return {
        "checks": len(rows),
        **{o.value: sum(r["outcome"] == o.value for r in rows) for o in Outcome},
        "min": min(stats, default=0.0),
        "median": statistics.median(stats) if stats else 0.0,
        "max": max(stats, default=0.0),
        "cost_share": sum(r.get("seconds", 0.0) for r in rows) / max(1e-9, sum(r["answer_s"] for r in rows)),
    }


def report(results: dict[str, dict], latency: dict[str, dict], rate: float, as_json: bool) -> None:
    honest = [r for k, r in results.items() if k.split(" @")[0] in HONEST]
    false_positives = sum(r["refuted"] for r in honest)
    honest_checks = sum(r["checks"] for r in honest)

    def rate_of(name: str, temperature: float) -> float:
        r = results[f"{name} @ T={temperature}"]
        return r["refuted"] / max(1, r["checks"])

    detection = {}
    for name in ("X other model", "R random text"):
        greedy, sampled = rate_of(name, 0.0), rate_of(name, 0.8)
        detection[name] = {
            "per_check_t0": greedy,
            "per_check_t08": sampled,
            "within_200_t0": detection_within(rate, greedy, 200),
            "within_200_half_sampled": detection_within(rate, (greedy + sampled) / 2, 200),
        }
    cost = rate * statistics.mean(r["cost_share"] for r in honest)
    summary = {
        "rate": rate,
        "false_positives": false_positives,
        "honest_checks": honest_checks,
        "detection": detection,
        "cost_share_of_served_time": cost,
        "client_latency_s": latency,
    }
    if as_json:
        print(json.dumps({"results": results, "summary": summary}, indent=2))
        return
    print(f"{'provider @ temperature':<26} {'checks':>6} {'pass':>5} {'refut':>5} {'incon':>5}  "
          f"first verifier's statistic (min / median / max)   check/answer time")  # fmt: skip
    for key, r in results.items():
        print(
            f"{key:<26} {r['checks']:>6} {r['passed']:>5} {r['refuted']:>5} {r['inconclusive']:>5}  "
            f"{r['min']:+8.2f} / {r['median']:+8.2f} / {r['max']:+8.2f}   {r['cost_share']:.0%}"
        )
    print()
    print(f"{'figure':<58} {'no checks':>10} {'checks @ ' + format(rate, '.1%'):>14}   goal")
    refutations = f"{false_positives} / {honest_checks}"
    print(f"{'false refutations of honest providers':<58} {0:>10} {refutations:>14}   0 / >= 1,000")
    for name, d in detection.items():
        label = f"{name}: refuted within 200 answers, temperature 0"
        print(f"{label:<58} {'0 %':>10} {d['within_200_t0']:>14.2%}   >= 99 %")
        label = f"{name}: same, half the answers sampled (T=0.8)"
        print(f"{label:<58} {'0 %':>10} {d['within_200_half_sampled']:>14.2%}")
    print(f"{'verification time / served time':<58} {'0 %':>10} {cost:>14.2%}   <= 3 %")
    for mode in ("paced", "back to back"):
        off, on = latency.get(f"rate 0, {mode}"), latency.get(f"rate 1, {mode}")
        if off and on:
            for q in ("p50", "p95"):
                label = f"client time to the whole answer, {q}, {mode} (every answer checked)"
                print(f"{label:<58} {off[q]:>9.3f}s {on[q]:>13.3f}s   +0")
    print("statistic: share of tokens not the verifier's top choice (T=0; fails over 5 %), or the likelihood")
    print("z-score (sampled; fails under -6). Refuted: two verifiers failed it and agree with each other.")


if __name__ == "__main__":
    main()
