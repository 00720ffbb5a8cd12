"""The Podman REST API the runtime talks to: a given socket, or a service we start.

``open_podman(home)`` starts ``podman system service`` on ``HOME/run/podman.sock``
with a containers.conf of our own (``HOME/podman/containers.conf``) and stops
it on exit; with ``socket`` given it only checks that the API answers. The
settings in our containers.conf are the ones a plain Debian host needs
(docs/platform.md): runc (crun fails with hybrid cgroups), cgroupfs,
file events, and ulimits within the host's hard limits.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0

CONTAINERS_CONF = """\
# Written by garage-peer for its own Podman service (CONTAINERS_CONF); see docs/runtime.md.
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class PodmanUnavailable(RuntimeError):
    """Podman is missing or its API does not answer; the message says what to do."""


def podman_env(home: Path) -> dict[str, str]:
    """Environment for podman commands that use our containers.conf."""
    conf = home / "podman" / "containers.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


async def ping(socket_path: Path, timeout: float = 2.0) -> bool:
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    try:
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            response = await client.get("http://podman/_ping")
            return response.status_code == 200
    except httpx.HTTPError:
        return False


@asynccontextmanager
async def open_podman(home: Path, socket: Path | None = None) -> AsyncIterator[str]:
    """Yield the API's base URL (``unix:///…/podman.sock``); PodmanUnavailable if it cannot be had."""
    if socket is not None:
        if not await ping(socket):
            raise PodmanUnavailable(
                f"no Podman API answers on {socket}: start `podman system service` there, or drop --podman-socket"
            )
        yield f"unix://{socket}"
        return
    podman = shutil.which("podman")
    if podman is None:
        raise PodmanUnavailable("podman is not installed (Debian: apt-get install podman runc conmon netavark)")
    socket = home / "run" / "podman.sock"
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)
    log_path = home / "run" / "podman-service.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{socket}"],
            env=podman_env(home),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        with trio.move_on_after(START_TIMEOUT):
            while not (socket.exists() and await ping(socket)):
                if process.poll() is not None:
                    break
                await trio.sleep(0.1)
        if not await ping(socket):
            raise PodmanUnavailable(f"podman system service did not start (see {log_path})")
        log.info("Podman API on %s", socket)
        yield f"unix://{socket}"
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                with trio.move_on_after(10):
                    while process.poll() is None:
                        await trio.sleep(0.1)
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait()
