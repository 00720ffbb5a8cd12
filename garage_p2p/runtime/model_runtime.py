"""Keep one model server container running, healthy, and out of the way when asked.

``ModelRuntime.serve`` is the forever-task:

- create the container (``container_spec``) and start it;
- wait until vLLM answers ``/health`` and ``/v1/models``; only then does the
  backend become healthy and the model appear in our ads;
- stream the container's log into the daemon's log;
- when the container exits, withdraw the model at once (backend unhealthy,
  ad republished), then restart it after a backoff (1 s, 2 s, 4 s … 60 s;
  reset after it stayed healthy for a minute);
- on ``drain``: stop taking requests for it, let in-flight ones finish, stop
  the container; ``resume`` brings it back;
- when the daemon stops, stop and remove the container;
- refuse to start it at all when Podman would not enforce its memory, pids and CPU
  limits (rootless Podman on cgroup v1 or without delegation, runtime/rootless.py):
  state ``refused``, with the reason and its fix as ``last_exit``.

podman-py is synchronous (requests over the unix socket): every call runs in a
worker thread under a timeout.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
from podman import PodmanClient
from podman.errors import APIError, NotFound

from ..provider.backend import Backend
from .container_spec import RuntimeSpec, create_kwargs
from .rootless import LimitsCheck, check_limits, own_cgroup

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 600.0
"""vLLM loads a big model for minutes; the CPU build imports torch for about a minute."""
STOP_TIMEOUT = 20
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0
LOG_LINES = 500
API_TIMEOUT = 60.0


@dataclass
class RuntimeStatus:
    """What ``garage runtime status`` shows."""

    state: str = "starting"
    """starting | healthy | restarting | draining | stopped | failed | refused (limits would not hold)."""
    container_id: str | None = None
    """Podman's id of the current container."""
    restarts: int = 0
    """Restarts after crashes since the daemon started."""
    last_exit: str | None = None
    """How the last container ended."""
    started_at: float | None = None
    """Unix time the current container started."""
    healthy_after_s: float | None = None
    """Seconds from start to healthy, last time."""
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    """The container's last log lines."""
    limits: LimitsCheck | None = None
    """Whether Podman enforces the container's limits (None until Podman answered)."""


class ModelRuntime:
    def __init__(
        self,
        spec: RuntimeSpec,
        podman_url: str,
        backend: Backend,
        *,
        on_change: Callable[[], None] = lambda: None,
        health_timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        self.spec = spec
        self.podman_url = podman_url
        self.backend = backend
        self.on_change = on_change
        """Called when the model becomes available or unavailable (the daemon republishes its ad)."""
        self.health_timeout = health_timeout
        self.status = RuntimeStatus()
        self._want_running = True
        self._restart_now = False
        self._kick = trio.Event()

    # -- podman calls (in threads) ---------------------------------------------------

    async def _call(self, fn, *args, abandon: bool = False):
        """Run ``fn(client, *args)`` in a thread. Not abandoned on cancel unless asked: a
        create that finished after our clean-up would leave a container behind."""

        def run():
            with PodmanClient(base_url=self.podman_url, timeout=API_TIMEOUT) as client:
                return fn(client, *args)

        return await trio.to_thread.run_sync(run, abandon_on_cancel=abandon)

    async def _create_and_start(self) -> str:
        def run(client: PodmanClient) -> str:
            try:
                old = client.containers.get(self.spec.name)
                old.remove(force=True)
            except NotFound:
                pass
            container = client.containers.create(**create_kwargs(self.spec))
            try:
                container.start()
            except APIError:
                container.remove(force=True)  # a failed start leaves a created container
                raise
            return container.id

        return await self._call(run)

    async def _remove(self) -> None:
        def run(client: PodmanClient) -> None:
            try:
                container = client.containers.get(self.spec.name)
            except NotFound:
                return
            try:
                container.stop(timeout=STOP_TIMEOUT)
            except APIError:
                pass
            container.remove(force=True)

        with trio.CancelScope(shield=True):
            with trio.move_on_after(STOP_TIMEOUT + 15):
                try:
                    await self._call(run)
                except (APIError, OSError) as exc:
                    log.warning("removing container %s: %s", self.spec.name, exc)

    async def inspect(self) -> dict[str, Any]:
        """The container's state as Podman reports it ({} if there is none)."""

        def run(client: PodmanClient) -> dict[str, Any]:
            try:
                container = client.containers.get(self.spec.name)
            except NotFound:
                return {}
            container.reload()
            return dict(container.attrs.get("State") or {})

        return await self._call(run)

    async def exec(self, *command: str) -> tuple[int, str]:
        """Run a command inside the container: (exit code, output)."""

        def run(client: PodmanClient) -> tuple[int, str]:
            container = client.containers.get(self.spec.name)
            code, (out, err) = container.exec_run(list(command), demux=True)
            return code, ((out or b"") + (err or b"")).decode(errors="replace")

        return await self._call(run)

    # -- the forever task ---------------------------------------------------------------

    async def _probe_limits(self) -> LimitsCheck | None:
        """Podman's word on whether it runs rootless, judged against our cgroup (the Podman we
        start runs in it); None when Podman does not answer (creating the container says why)."""
        try:
            info = await self._call(lambda client: client.info())
        except (APIError, OSError) as exc:
            log.warning("podman info: %s", exc)
            return None
        rootless = bool(((info.get("host") or {}).get("security") or {}).get("rootless"))
        return await trio.to_thread.run_sync(lambda: check_limits(rootless=rootless, cgroup=own_cgroup()))

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = 1.0
        try:
            while True:
                if not self._want_running:
                    self.status.state = "stopped"
                    await self._kick.wait()
                    self._kick = trio.Event()
                    continue
                if self.status.limits is None:
                    self.status.limits = await self._probe_limits()
                if self.status.limits is not None and not self.status.limits.ok:
                    # Never a container without its limits: a rig owner's machine is not ours to exhaust.
                    self.status.state = "refused"
                    self.status.last_exit = f"refused to start: {self.status.limits.line}"
                    log.error("model server %s %s", self.spec.name, self.status.last_exit)
                    await self._kick.wait()  # stop() or start() (after the host is fixed: restart the peer)
                    self._kick = trio.Event()
                    continue
                ran_for = await self._run_once()
                if not self._want_running:
                    continue
                if self._restart_now:  # asked for: no backoff, not a crash
                    self._restart_now = False
                    continue
                backoff = (
                    1.0 if ran_for >= STABLE_AFTER else min(BACKOFF_MAX, backoff * 2 if self.status.restarts else 1.0)
                )
                self.status.restarts += 1
                self.status.state = "restarting"
                log.warning(
                    "model server %s ended (%s); restarting in %.0f s", self.spec.name, self.status.last_exit, backoff
                )
                with trio.move_on_after(backoff):
                    await self._kick.wait()
                self._kick = trio.Event()
        finally:
            self._set_healthy(False)
            await self._remove()

    async def _run_once(self) -> float:
        """Start a container and watch it until it ends or we stop it; seconds it ran."""
        self.status.state = "starting"
        self._kick = trio.Event()
        started = time.monotonic()
        try:
            self.status.container_id = await self._create_and_start()
        except (APIError, OSError) as exc:
            hint = " (build it: `garage runtime build-image`)" if "image" in str(exc).lower() else ""
            self.status.last_exit = f"could not start: {exc}{hint}"
            self.status.state = "failed"
            log.error("model server %s %s", self.spec.name, self.status.last_exit)
            return 0.0
        self.status.started_at = time.time()
        log.info("model server %s started (%s)", self.spec.name, self.status.container_id[:12])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_logs)
            healthy = await self._wait_healthy(started)
            if healthy:
                self.status.healthy_after_s = time.monotonic() - started
                self.status.state = "healthy"
                self._set_healthy(True)
                log.info("model %s healthy after %.1f s", self.spec.served_name, self.status.healthy_after_s)
            await self._wait_exit()
            nursery.cancel_scope.cancel()
        self._set_healthy(False)
        state = await self.inspect() if self._want_running else {}
        if state:
            self.status.last_exit = f"exit code {state.get('ExitCode')}" + (
                " (out of memory)" if state.get("OOMKilled") else ""
            )
        return time.monotonic() - started

    async def _wait_healthy(self, started: float) -> bool:
        async with httpx.AsyncClient(timeout=3.0, trust_env=False) as client:
            while time.monotonic() - started < self.health_timeout and self._want_running:
                state = await self.inspect()
                if state.get("Status") not in ("running", "created", "configured", "initialized"):
                    return False
                try:
                    health = await client.get(f"http://127.0.0.1:{self.spec.host_port}/health")
                    models = await client.get(self.spec.base_url + "/models")
                    names = [m.get("id") for m in models.json().get("data", [])]
                    if health.status_code == 200 and models.status_code == 200 and self.spec.served_name in names:
                        self.backend.paths, _ = await self.backend.published_paths(client)  # what it advertises
                        return True
                except (httpx.HTTPError, ValueError, AttributeError):
                    pass
                await trio.sleep(0.5)
        self.status.last_exit = f"not healthy within {self.health_timeout:.0f} s"
        return False

    async def _wait_exit(self) -> None:
        """Return when the container is no longer running (or we want it stopped)."""
        while self._want_running:
            state = await self.inspect()
            if state.get("Status") != "running":
                return
            with trio.move_on_after(1.0):
                await self._kick.wait()
        await self._remove()

    async def _follow_logs(self) -> None:
        def run(client: PodmanClient, lines: deque[str], stop: list[bool]) -> None:
            container = client.containers.get(self.spec.name)
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                if stop:
                    return
                for line in chunk.decode(errors="replace").splitlines():
                    lines.append(line)
                    log.info("[%s] %s", self.spec.served_name, line)

        stop: list[bool] = []
        try:
            await self._call(run, self.status.logs, stop, abandon=True)  # it blocks until the container ends
        except (APIError, NotFound, OSError) as exc:
            log.debug("log stream of %s ended: %s", self.spec.name, exc)
        finally:
            stop.append(True)

    def _set_healthy(self, healthy: bool) -> None:
        if self.backend.healthy != healthy:
            self.backend.healthy = healthy
            if healthy:
                self.backend.backend_model = self.spec.served_name
            self.on_change()

    # -- control ------------------------------------------------------------------------

    async def stop(self) -> None:
        """Withdraw the model and stop the container (the daemon drains requests first)."""
        self._want_running = False
        self._set_healthy(False)
        self._kick.set()
        while self.status.state not in ("stopped", "refused"):
            await trio.sleep(0.1)

    def start(self) -> None:
        """Start the container again after ``stop``."""
        self._want_running = True
        self._kick.set()

    async def restart(self) -> None:
        """Stop the container and start a new one now (no backoff)."""
        self._restart_now = True
        self._set_healthy(False)
        await self._remove()
        self._kick.set()

    def view(self) -> dict[str, Any]:
        s = self.status
        return {
            "model": self.spec.served_name,
            "image": self.spec.image,
            "container": self.spec.name,
            "container_id": s.container_id,
            "state": s.state,
            "restarts": s.restarts,
            "last_exit": s.last_exit,
            "started_at": s.started_at,
            "healthy_after_s": s.healthy_after_s,
            "url": self.spec.base_url,
            "gpus": list(self.spec.gpus) or ["cpu"],
            "limits": s.limits.view() if s.limits else None,
        }
