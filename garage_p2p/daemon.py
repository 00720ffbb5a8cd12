"""The composition root: ``open_peer(settings)`` wires every part under one nursery.

Start order: identity → libp2p host + gossipsub → provider (stream handler
and backend probes) → capability gossip → HTTP endpoint → ``run/peer.json``.
Shutdown (``Peer.shutdown``): stop taking requests, withdraw our ad, let
in-flight requests finish up to ``drain_timeout``, then cancel the rest.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from . import __version__
from .core.capabilities import ModelOffer, PeerTable
from .core.identity import Identity
from .core.messages import PROTOCOL_OPENAI
from .gateway.app import create_app
from .gateway.dispatch import Dispatcher
from .mesh.caps import CapsService
from .mesh.host import Mesh, open_mesh
from .provider.backend import Backend
from .provider.service import ProviderService
from .settings import Settings
from .store.identity_file import load_or_create_identity

log = logging.getLogger(__name__)

PROBE_INTERVAL_HEALTHY = 5.0
PROBE_INTERVAL_DOWN = 1.0


@dataclass
class Peer:
    """A running peer."""

    settings: Settings
    identity: Identity
    mesh: Mesh
    table: PeerTable
    provider: ProviderService
    dispatcher: Dispatcher
    caps: CapsService
    api_url: str
    _http_stop: trio.Event = field(default_factory=trio.Event)
    _stopping: bool = False

    def info(self) -> dict:
        """What ``run/peer.json`` says about this peer."""
        return {
            "peer_id": self.identity.peer_id,
            "addrs": self.mesh.addrs(),
            "api_url": self.api_url,
            "models": sorted(n for n, b in self.provider.backends.items() if b.healthy),
            "pid": os.getpid(),
        }

    async def shutdown(self) -> None:
        """Graceful stop: no new requests, withdraw the ad, drain in-flight ones."""
        if self._stopping:
            return
        self._stopping = True
        log.info("shutting down: draining for up to %.0f s", self.settings.drain_timeout)
        self.provider.draining = True
        await self.caps.withdraw()
        self._http_stop.set()
        with trio.move_on_after(self.settings.drain_timeout) as scope:
            await self.provider.wait_idle()
        if scope.cancelled_caught:
            log.warning("%d requests still running after the drain timeout", self.provider.in_flight)


def _offers(backends: dict[str, Backend]) -> tuple[ModelOffer, ...]:
    return tuple(
        ModelOffer(name=b.name, context_length=b.context_length)
        for b in sorted(backends.values(), key=lambda b: b.name)
        if b.healthy
    )


async def _probe_backends(backends: dict[str, Backend], client: httpx.AsyncClient, caps: CapsService) -> None:
    """Keep backend health current; re-advertise at once when it changes."""
    while True:
        changed = False
        for backend in backends.values():
            was = (backend.healthy, backend.backend_model)
            await backend.probe(client)
            changed |= was != (backend.healthy, backend.backend_model)
        if changed:
            caps.republish_soon()
        healthy = all(b.healthy for b in backends.values())
        await trio.sleep(PROBE_INTERVAL_HEALTHY if healthy else PROBE_INTERVAL_DOWN)


def _write_run_file(peer: Peer) -> None:
    run_dir = peer.settings.home / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "peer.json.tmp"
    tmp.write_text(json.dumps(peer.info(), indent=2) + "\n")
    tmp.replace(run_dir / "peer.json")


def _remove_run_file(settings: Settings) -> None:
    try:
        (settings.home / "run" / "peer.json").unlink()
    except FileNotFoundError:
        pass


async def _serve_http(app, settings: Settings, stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config = HypercornConfig()
    config.bind = [settings.api]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # ours, not a second handler
    config.graceful_timeout = settings.drain_timeout
    config.keep_alive_timeout = 75.0  # longer than common client pools keep connections
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)


@asynccontextmanager
async def open_peer(settings: Settings) -> AsyncIterator[Peer]:
    """Run a peer until the context exits; call ``Peer.shutdown`` first to drain."""
    identity, created = load_or_create_identity(settings.home)
    if created:
        log.info("created a new identity %s in %s", identity.peer_id, settings.home)
    backends = {name: Backend(name, url) for name, url in settings.backends.items()}
    limits = httpx.Limits(max_connections=settings.max_concurrency + 8, max_keepalive_connections=settings.max_concurrency)
    async with (
        httpx.AsyncClient(limits=limits, trust_env=False) as client,
        open_mesh(identity, settings.listen, settings.bootstrap) as mesh,
        trio.open_nursery() as nursery,
    ):
        table = PeerTable(self_peer_id=identity.peer_id)
        provider = ProviderService(
            backends,
            client,
            max_concurrency=settings.max_concurrency,
            max_head_bytes=settings.max_body_bytes + 64 * 1024,
        )
        mesh.host.set_stream_handler(PROTOCOL_OPENAI, provider.handle_stream)
        for backend in backends.values():
            await backend.probe(client)
        caps = CapsService(
            mesh,
            table,
            lambda: _offers(backends),
            version=__version__,
            interval=settings.ad_interval,
            ttl=settings.ad_ttl,
        )
        await nursery.start(caps.serve)
        if backends:
            nursery.start_soon(_probe_backends, backends, client, caps)
        dispatcher = Dispatcher(mesh, table, provider, nursery, random.Random())
        app = create_app(
            dispatcher,
            peer_id=identity.peer_id,
            max_body_bytes=settings.max_body_bytes,
            request_timeout=settings.request_timeout,
        )
        peer = Peer(settings, identity, mesh, table, provider, dispatcher, caps, api_url="")
        bound = await nursery.start(_serve_http, app, settings, peer._http_stop)
        peer.api_url = (bound[0] if bound else f"http://{settings.api}").rstrip("/") + "/v1"
        _write_run_file(peer)
        log.info("peer %s ready: api %s, listening on %s", identity.peer_id, peer.api_url, " ".join(mesh.addrs()))
        try:
            yield peer
        finally:
            _remove_run_file(settings)
            nursery.cancel_scope.cancel()
