"""Run ``garage-peer`` daemons as real child processes (``garage demo``; the tests and benchmarks reuse it).

Each peer gets its own home, log file and process group. Readiness is the
daemon's own ``run/peer.json`` written by the process we started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class PeerStartError(RuntimeError):
    """The peer exited or did not become ready; the message quotes its log."""


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class PeerProcess:
    """One ``garage-peer`` child process."""

    home: Path
    args: list[str]
    prefix: list[str] = field(default_factory=list)
    """Runs before the command, e.g. ``ip netns exec NAME`` (which execs: same pid)."""
    log_path: Path = field(init=False)
    process: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)
    """The daemon's run/peer.json once it is ready."""
    tree: Path | None = None
    """Another source tree to run the daemon from (a benchmark's baseline): it becomes the working
    directory and ``PYTHONPATH``, since ``python -m`` imports from the working directory first."""

    def __post_init__(self) -> None:
        self.log_path = self.home / "peer.log"

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    @property
    def api_url(self) -> str:
        return self.info["api_url"]

    @property
    def addr(self) -> str:
        """Its first loopback multiaddr (with /p2p/), for others to bootstrap from."""
        return next(a for a in self.info["addrs"] if "/127.0.0.1/" in a)

    def start(self) -> PeerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        run_file = self.home / "run" / "peer.json"
        run_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "garage_p2p.cli.peer", "--home", str(self.home), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.tree,
            start_new_session=True,
        )
        log.close()
        return self

    def poll_ready(self) -> dict | None:
        """The daemon's run/peer.json once the process we started wrote it, else None (one look, no wait)."""
        if self.process is not None and self.process.poll() is not None:
            raise PeerStartError(f"garage-peer exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
        try:
            info = json.loads((self.home / "run" / "peer.json").read_text())
        except (OSError, ValueError):
            return None
        if info.get("pid") != self.process.pid:
            return None  # a file left by an earlier process in this home
        self.info = info
        return info

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (info := self.poll_ready()) is not None:
                return info
            time.sleep(0.05)
        raise PeerStartError(f"garage-peer not ready after {timeout:.0f} s:\n{log_tail(self.log_path)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        """Signal the peer and wait for it; returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled plug would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def peer_args(
    *,
    api: str = "127.0.0.1:0",
    listen: str = "/ip4/127.0.0.1/tcp/0",
    bootstrap: list[str] = (),
    backends: dict[str, str] | None = None,
    extra: list[str] = (),
    mdns: bool = False,
) -> list[str]:
    """Command-line arguments for a loopback-only peer (no mDNS multicast unless ``mdns``: only in a
    network namespace of its own, where the multicast stays)."""
    args = ["--listen", listen, "--api", api, "--mdns" if mdns else "--no-mdns"]
    for b in bootstrap:
        args += ["--bootstrap", b]
    for name, url in (backends or {}).items():
        args += ["--backend", f"{name}={url}"]
    return args + list(extra)
