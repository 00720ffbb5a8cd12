"""Owner first, in the daemon: look at the machine every few seconds and step aside as the core says.

Stepping aside is a drain: the provider refuses new requests at once with a retryable error (its
consumers try another provider), our ad is withdrawn, in-flight answers get ``drain_timeout``
seconds to finish and are then cut with a retryable 503, which the consumers continue token-exact
on another provider (core/continuation.py); the model container stops, so the owner has the GPU
and its memory. Coming back starts the container again and re-advertises once it is healthy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..core.owner_activity import OwnerDecision, OwnerPolicy, parse_window
from .owner_probe import OwnerProbe

if TYPE_CHECKING:
    from ..mesh.caps import CapsService
    from ..runtime.model_runtime import ModelRuntime
    from ..settings import Settings
    from .service import ProviderService

log = logging.getLogger(__name__)


def day_seconds(wall: float) -> float:
    """Local seconds since midnight at ``wall`` (the schedule is in the owner's local time)."""
    local = time.localtime(wall)
    return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + (wall % 1)


class OwnerWatch:
    """Drives ``OwnerPolicy`` with ``OwnerProbe``'s samples and applies its decisions to the provider."""

    def __init__(
        self,
        policy: OwnerPolicy,
        probe: OwnerProbe,
        provider: ProviderService,
        caps: CapsService,
        *,
        interval: float,
        drain_timeout: float,
        runtime: Callable[[], ModelRuntime | None] = lambda: None,
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self.policy = policy
        self.probe = probe
        self.provider = provider
        self.caps = caps
        self.interval = interval
        self.drain_timeout = drain_timeout
        self.runtime = runtime
        self.held = held
        """Whether something else keeps the rig from serving (a drain by hand, a shutdown): no resume then."""
        self.paused_at: float | None = None
        """When the last pause began (trio clock), for the view."""
        self.last_in_flight_ended: float | None = None
        """When the last answer in flight at the pause ended (trio clock), for the view and the benchmark."""

    @property
    def decision(self) -> OwnerDecision:
        return self.policy.decision

    def view(self) -> dict[str, Any]:
        """For ``garage status``: serving or not, why, and when it may resume."""
        d = self.policy.decision
        now = trio.current_time()
        return {
            "serving": d.serving,
            "reason": d.reason,
            "resume_in_s": None if d.serving or d.resume_at is None else round(max(0.0, d.resume_at - now), 1),
            "probes": {"gpu": self.probe.gpu, "processes": list(self.probe.processes)},
            "schedule": [w.label() for w in self.policy.windows],
            "quiet_s": self.policy.quiet,
        }

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                sample = await self.probe.sample(ours_busy=self.provider.in_flight > 0)
                self._apply(nursery, self.policy.observe(trio.current_time(), day_seconds(time.time()), sample))
                next_sample = trio.current_time() + self.interval
                # Timers between two samples (a quiet period ending, a schedule window opening), bounded.
                for _ in range(16):
                    timer = self.policy.get_timer()
                    if timer is None or timer >= next_sample:
                        break
                    await trio.sleep_until(timer)
                    self._apply(nursery, self.policy.handle_timer(trio.current_time(), day_seconds(time.time())))
                await trio.sleep_until(next_sample)

    def _apply(self, nursery: trio.Nursery, decision: OwnerDecision | None) -> None:
        if decision is None:
            return
        if not decision.serving:
            if not self.provider.draining or self.paused_at is None:
                nursery.start_soon(self._pause, decision.reason)
            else:
                log.info("still not serving: %s", decision.reason)
        elif self.paused_at is not None:
            nursery.start_soon(self._resume)

    async def _pause(self, reason: str | None) -> None:
        # Refuse first (no await before it): a request arriving while the ad goes out is refused too.
        self.provider.draining = True
        self.paused_at = started = trio.current_time()
        self.last_in_flight_ended = None
        log.warning("owner first: not serving (%s); %d answers in flight", reason, self.provider.in_flight)
        await self.caps.withdraw()
        with trio.move_on_after(self.drain_timeout):
            await self.provider.wait_idle()
        if self.paused_at != started:
            return  # resumed meanwhile
        cut = self.provider.release_in_flight()
        if cut:
            log.info("cut %d answers still running after %.0f s: their consumers fail over", cut, self.drain_timeout)
        await self.provider.wait_idle()  # the cut answers end at once
        self.last_in_flight_ended = trio.current_time()
        runtime = self.runtime()
        if runtime is not None and self.paused_at == started:
            await runtime.stop()

    async def _resume(self) -> None:
        if self.held():
            log.info("owner quiet, but the rig stays drained (garage resume serves again)")
            self.paused_at = None
            return
        log.info("owner quiet for %.0f s: serving again", self.policy.quiet)
        self.paused_at = None
        self.provider.draining = False
        self.caps.withdrawn = False
        runtime = self.runtime()
        if runtime is not None:
            runtime.start()
        self.caps.republish_soon()


def owner_watch_for(
    settings: Settings,
    provider: ProviderService,
    caps: CapsService,
    *,
    runtime: Callable[[], ModelRuntime | None],
    held: Callable[[], bool],
) -> OwnerWatch | None:
    """The watch ``settings`` ask for on a peer that serves something; None when there is nothing to watch."""
    runs_container = settings.runtime_model is not None
    gpu = settings.owner_gpu == "on" or (settings.owner_gpu == "auto" and runs_container)
    if not provider.backends or not (gpu or settings.owner_processes or settings.owner_schedule):
        return None

    def container_id() -> str | None:
        rt = runtime()
        return rt.status.container_id if rt is not None else None

    policy = OwnerPolicy(
        settings.owner_quiet,
        tuple(parse_window(w) for w in settings.owner_schedule),
        util_high=settings.owner_gpu_busy,
        util_low=settings.owner_gpu_busy / 3,
    )
    probe = OwnerProbe(gpu=gpu, processes=tuple(settings.owner_processes), container_id=container_id)
    return OwnerWatch(
        policy,
        probe,
        provider,
        caps,
        interval=settings.owner_probe_interval,
        drain_timeout=settings.owner_drain_timeout,
        runtime=runtime,
        held=held,
    )
