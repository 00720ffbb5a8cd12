"""What every harness, test and benchmark needs: free ports, polling, a stand-in backend, percentiles,
a process's CPU and memory from /proc, a baseline revision's source tree.

One copy of each, so a fix (a longer poll, a new stand-in flag) reaches every user.
"""

from __future__ import annotations

import compileall
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from garage_p2p.cli.peer_process import PeerProcess
from garage_p2p.settings import Settings
from garage_p2p.sim.metrics import percentile

__all__ = [
    "REPO",
    "checks_done",
    "compile_tree",
    "free_port",
    "percentile",
    "proc_cpu_s",
    "proc_rss_mib",
    "run_where",
    "standin_command",
    "standin_process",
    "standin_up",
    "tree_of",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]
"""The checkout: ``python -m tools.…`` children need it as their working directory."""

# percentile(values, q): q in 0–100, nearest rank, None for no values; the simulator's reports
# use the same definition, so figures from a harness and from the simulator compare.


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (racy: another process may take it first; fine for tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def loopback_settings(home: Path, **overrides) -> Settings:
    """Settings of an in-process peer on 127.0.0.1 only (ephemeral ports, no mDNS multicast); ``overrides`` win."""
    defaults: dict = {"listen": ["/ip4/127.0.0.1/tcp/0"], "api": "127.0.0.1:0", "mdns": False}
    return Settings(home=home, **{**defaults, **overrides})


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> float:
    """Seconds until ``predicate()`` held; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"{what} not within {timeout} s")


def standin_command(
    port: int,
    *,
    model: str | None = None,
    token_delay: float | None = None,
    host: str | None = None,
    python: str = sys.executable,
    prefix: Sequence[str] = (),
    random_text: bool = False,
) -> list[str]:
    """The command line of a StandInBackend process (an instrument, not a model).

    ``prefix`` runs it elsewhere (``ip netns exec NAME``); ``python`` is another interpreter
    (an installed rig's venv). Unset options keep the stand-in's defaults (model ``tiny``, no delay).
    """
    args = [*prefix, python, "-m", "tools.standin_backend", "--port", str(port)]
    if host is not None:
        args += ["--host", host]
    if model is not None:
        args += ["--model", model]
    if token_delay is not None:
        args += ["--token-delay", str(token_delay)]
    if random_text:
        args.append("--random-text")  # a dishonest provider
    return args


def checks_done(api_url: str) -> int:
    """Answers a peer's spot-checks are done with (judged, or set aside), from its /metrics."""
    text = httpx.get(api_url.removesuffix("/v1") + "/metrics", timeout=5).text
    done = ("passed", "refuted", "inconclusive", "unchecked", "dropped")
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("garage_spot_checks_total{") and any(f'result="{r}"' in line for r in done)
    )


def standin_up(base_url: str) -> bool:
    """Whether a stand-in (or any OpenAI server) answers ``GET base_url/models``."""
    try:
        return httpx.get(base_url + "/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def standin_process(port: int, *, timeout: float = 30.0, **options) -> Iterator[str]:
    """A StandInBackend process on 127.0.0.1:``port`` (``standin_command``'s options); yields its base URL
    once it answers, and ends it on exit."""
    proc = subprocess.Popen(
        standin_command(port, **options), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until(lambda: standin_up(url) or proc.poll() is not None, timeout, f"stand-in on port {port}")
        if proc.poll() is not None:
            raise RuntimeError(f"the stand-in on port {port} exited with {proc.returncode}")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)


def run_where(peer: PeerProcess, *module_args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` where ``peer`` runs (its network namespace, if any)."""
    return subprocess.run(
        [*peer.prefix, sys.executable, "-m", *module_args], capture_output=True, text=True, timeout=timeout
    )


def proc_rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (0 when it is gone)."""
    try:
        # The command name in parentheses may hold spaces: the fields are counted after it.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_of(rev: str, into: Path) -> Path:
    """The source of ``rev`` unpacked under ``into`` (git archive: no worktree left registered)."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True)
    tree = into / rev
    tree.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def compile_tree(tree: Path) -> Path:
    """Byte-compile the package under ``tree`` once, as installing it does (pip compiles a wheel's
    modules), and return ``tree``. Where PYTHONDONTWRITEBYTECODE is set, each daemon started from a
    source tree compiled its ~90 modules again: ~0.12 CPU-s of every start a benchmark counted."""
    compileall.compile_dir(tree / "garage_p2p", quiet=1)
    return tree


@dataclass(frozen=True)
class Socket:
    """One end of an established TCP connection, as ``ss -tinp`` shows it."""

    local: str
    peer: str
    pid: int
    bytes: int
    """Payload bytes sent plus received on it so far (Noise and yamux framing included, TCP headers not)."""


def daemon_sockets(pids: set[int]) -> dict[tuple[str, str], Socket]:
    """Established TCP sockets held by ``pids`` whose other end ``pids`` hold too, by (local, peer)
    ``ADDR:PORT``: with port reuse, a daemon's dials leave from its listening port, so the local
    address alone names several sockets."""
    out = subprocess.run(["ss", "-Htinp", "state", "established"], capture_output=True, text=True, check=True).stdout
    sockets: dict[tuple[str, str], Socket] = {}
    heads = re.split(r"\n(?=\S)", out)  # a socket's line, then its indented tcp_info line
    for entry in heads:
        fields = entry.split()
        owner = re.search(r"pid=(\d+)", entry)
        if len(fields) < 4 or owner is None or int(owner.group(1)) not in pids:
            continue
        counts = dict(re.findall(r"\b(bytes_sent|bytes_received):(\d+)", entry))
        total = int(counts.get("bytes_sent", 0)) + int(counts.get("bytes_received", 0))
        sockets[(fields[2], fields[3])] = Socket(fields[2], fields[3], int(owner.group(1)), total)
    return {k: s for k, s in sockets.items() if (other := sockets.get((s.peer, s.local))) and other.pid != s.pid}
