"""Garage peers in the NAT lab: public relays R1 and R2, peers A and B behind home routers.

Used by the NAT tests and benchmarks/nat.py. A serves ``tiny`` from a
StandInBackend in its own namespace (the network is what is measured, not the
model); requests are made from B's namespace to B's endpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from garage_p2p.cli.peer_process import PeerProcess
from tools.testkit import REPO, free_port, run_where, standin_command, wait_until

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
API = "http://127.0.0.1:8000/v1"


STREAM = """
import json, sys, time, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="none", timeout=120, max_retries=0)
out = {"text": "", "chunks": 0, "finish": None, "usage": None, "error": None, "gap": 0.0, "seconds": 0.0}
last = None
started = time.monotonic()
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
out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"""
"""A streamed chat answer through the openai client: its text, usage, finish reason, error, its
duration, and the longest wait between two pieces of text (a move's gap). argv: base URL, max_tokens."""


def stream_answer(prefix: list[str], base_url: str, tokens: int, timeout: float) -> dict:
    """A streamed chat answer of ``tokens`` through the openai client (STREAM), run where ``prefix``
    says (a namespace, or here) against ``base_url``."""
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
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class NatMesh:
    """garage-peer processes in a running lab (tools/natlab.nat_lab)."""

    def __init__(
        self,
        lab,
        root: Path,
        *,
        token_delay: float = 0.01,
        relay_seconds: int | None = None,
        tree: Path | None = None,
    ) -> None:
        """``token_delay``: A's stand-in's seconds per token; ``relay_seconds``: the relays' limit on
        each relayed connection (their default when None); ``tree``: another source tree to run A
        and B from (a benchmark's baseline; the relays and the stand-in run from this one)."""
        self.lab = lab
        self.peers: dict[str, PeerProcess] = {}
        self.started_at: dict[str, float] = {}
        """Monotonic time each peer process was started."""
        self.procs: list[subprocess.Popen] = []
        relays = []
        for name in ("r1", "r2"):
            host = lab.hosts[name]
            if relay_seconds is not None:
                (root / name).mkdir(parents=True, exist_ok=True)
                (root / name / "config.toml").write_text(f"relay_seconds = {relay_seconds}\n")
            peer = self._start(name, root, ["--listen", f"/ip4/{host.ip}/tcp/4001", "--relay"])
            relays.append(next(a for a in peer.info["addrs"] if host.ip in a))
        a = lab.hosts["a"]
        self.procs.append(
            subprocess.Popen(
                standin_command(8101, token_delay=token_delay, prefix=a.exec_prefix()),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        boot = [arg for r in relays for arg in ("--bootstrap", r)]
        self._start(
            "a",
            root,
            ["--listen", f"/ip4/{a.ip}/tcp/4001", "--backend", "tiny=http://127.0.0.1:8101/v1", *boot],
            tree,
        )
        b = lab.hosts["b"]
        self._start("b", root, ["--listen", f"/ip4/{b.ip}/tcp/4001", *boot], tree)

    def _start(self, name: str, root: Path, args: list[str], tree: Path | None = None) -> PeerProcess:
        host = self.lab.hosts[name]
        env_args = ["--api", "127.0.0.1:8000", "--no-mdns", *args]
        self.started_at[name] = time.monotonic()
        peer = PeerProcess(root / name, env_args, prefix=host.exec_prefix(), tree=tree).start()
        self.peers[name] = peer
        peer.wait_ready()
        return peer

    def cli(self, name: str, *args: str):
        result = run_where(self.peers[name], "garage_p2p.cli.garage", *args, "--json", "--api", API)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def chat_from_b(self, n: int = 1) -> dict:
        """``n`` requests from B's namespace over one HTTP client: statuses, provider, ms each."""
        snippet = (
            "import httpx, json, time\n"
            "out = {'status': [], 'provider': None, 'ms': []}\n"
            "with httpx.Client(timeout=30) as c:\n"
            f"    for _ in range({n}):\n"
            "        t = time.monotonic()\n"
            f"        r = c.post('{API}/chat/completions', json={CHAT!r})\n"
            "        out['ms'].append((time.monotonic() - t) * 1000)\n"
            "        out['status'].append(r.status_code)\n"
            "        out['provider'] = r.headers.get('x-garage-provider')\n"
            "print(json.dumps(out))\n"
        )
        result = subprocess.run(
            [*self.lab.hosts["b"].exec_prefix(), sys.executable, "-c", snippet],
            capture_output=True,
            text=True,
            timeout=60 + 10 * n,
        )
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        if n == 1:
            return {"status": out["status"][0], "provider": out["provider"], "ms": out["ms"][0]}
        return out

    def connection_b_to_a(self) -> str:
        a_id = self.peers["a"].info["peer_id"]
        return next((p["connection"] for p in self.cli("b", "peers") if p["peer_id"] == a_id), "unknown")

    def stop(self) -> None:
        for peer in self.peers.values():
            peer.kill()
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
