"""A relayed stream longer than the relay's connection limit completes (issue 18).

NAT lab with symmetric NATs, so B reaches A through a relay for good; the relays cut each relayed
connection after ``RELAY_SECONDS``. A (the only provider of ``tiny``, a StandInBackend, not a
model) streams an answer that lasts about twice that. The relay cuts the circuit mid-answer; the
answer must go on at A over a new circuit (A is not banned, a relay's limit is not its fault) and
the client (the real ``openai`` client, in B's namespace) gets one whole answer, byte for byte the
uninterrupted one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.natlab import nat_lab, netns_nat_available
from tools.natmesh import API, NatMesh
from tools.testkit import REPO, free_port, standin_command, wait_until

RELAY_SECONDS = 15
TOKENS = 280
TOKEN_DELAY = 0.1
"""TOKENS x TOKEN_DELAY = 28 s of answer: about twice the relay's limit."""

STREAM = """
import json, sys, time, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="none", timeout=120, max_retries=0)
out = {"text": "", "chunks": 0, "finish": None, "usage": None, "error": None, "gap": 0.0}
last = None
try:
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=int(sys.argv[2]),
        temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        now = time.monotonic()
        if chunk.usage is not None:
            out["usage"] = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
        for choice in chunk.choices:
            if choice.delta.content:
                out["gap"] = max(out["gap"], now - last) if last is not None else 0.0
                last = now
                out["text"] += choice.delta.content
                out["chunks"] += 1
            out["finish"] = choice.finish_reason or out["finish"]
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""
"""A streamed chat answer through the openai client: its text, usage, finish reason, error, and the
longest wait between two pieces of text (the move's gap). argv: base URL, max_tokens."""


def stream_answer(prefix: list[str], base_url: str, tokens: int, timeout: float) -> dict:
    """Run STREAM where ``prefix`` says (a namespace, or here) against ``base_url``."""
    result = subprocess.run(
        [*prefix, sys.executable, "-c", STREAM, base_url, str(tokens)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def uninterrupted(tokens: int) -> dict:
    """The same request's answer straight from a StandInBackend (deterministic, no delay)."""
    port = free_port()
    proc = subprocess.Popen(standin_command(port), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _up(port), 20, "the reference stand-in")
        return stream_answer([], f"http://127.0.0.1:{port}/v1", tokens, 30)
    finally:
        proc.kill()
        proc.wait(10)


def _up(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_relayed_stream_outlives_the_relay_limit(tmp_path):
    reason = netns_nat_available()
    if reason:
        pytest.fail(f"this test needs network namespaces with iptables NAT: {reason} (CI runs as root)")
    expected = uninterrupted(TOKENS)
    assert expected["error"] is None and expected["usage"]["completion_tokens"] == TOKENS
    with nat_lab("gprl", {"a": "symmetric", "b": "symmetric"}) as lab:
        mesh = NatMesh(lab, tmp_path, token_delay=TOKEN_DELAY, relay_seconds=RELAY_SECONDS)
        try:
            wait_until(lambda: len(mesh.cli("a", "status")["relay_reservations"]) >= 1, 30, "A reserving a relay")
            wait_until(lambda: any(m["model"] == "tiny" for m in mesh.cli("b", "models")), 30, "B learning A's model")
            got = stream_answer(lab.hosts["b"].exec_prefix(), API, TOKENS, 90)
            assert mesh.connection_b_to_a() != "direct"  # symmetric NATs: relayed, or closed since
        finally:
            mesh.stop()
    print(f"{TOKENS * TOKEN_DELAY:.0f} s answer through a {RELAY_SECONDS} s relay: longest gap {got['gap']:.2f} s")
    assert got["error"] is None
    assert got["text"] == expected["text"]
    assert got["usage"] == expected["usage"]
    assert got["finish"] == expected["finish"] == "length"
