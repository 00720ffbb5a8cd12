"""The composition root: ``open_peer(settings)`` wires every part under one nursery.

Start order: identity → ledger file → Podman service (when a model directory
is given) → libp2p host + gossipsub (+ mDNS) → provider (stream handler,
backend probes and load) → capability gossip → discovery (DHT, table sync,
known peers) → model container runtime → ledger sync → batch jobs (submitter
and worker) → HTTP endpoint → ``run/peer.json``. Shutdown (``Peer.shutdown``):
stop taking requests, withdraw our ad, let in-flight requests finish up to
``drain_timeout``, then cancel the rest; the container is removed, the Podman
service stopped and the ledger flushed last.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from . import __version__
from .core.capabilities import Benchmark, CapabilityAd, ModelOffer, PeerTable
from .core.credit import CreditBook, credit_view
from .core.identity import Identity
from .core.ledger_caps import ReplicationCaps
from .core.limits import Limits
from .core.messages import PROTOCOL_OPENAI
from .core.peer_filter import PeerFilter
from .core.penalties import PenaltyBox
from .core.swarm_key import SwarmKeyError, fingerprint, parse_key
from .core.verdicts import VerdictBook
from .gateway.admin import delivery_fields
from .gateway.app import create_app
from .gateway.auth import Gatekeeper, is_loopback
from .gateway.dispatch import Dispatcher
from .gateway.metrics import MeshSnapshot, Metrics
from .gateway.spot_checks import SpotChecks
from .jobs.batches import BatchService
from .jobs.submitter import JobManager
from .jobs.worker import JobWorker
from .ledger.book import Ledger
from .ledger.cosign import Cosigner
from .ledger.restore import refuse_while_restoring, restore_own_log
from .ledger.sync import LedgerSync
from .ledger.views import balances_view, ledger_summary
from .mesh.caps import SERVICE as AD_FAULTS
from .mesh.caps import CapsService
from .mesh.discovery import SERVICE as TABLE_FAULTS
from .mesh.discovery import Discovery
from .mesh.host import DialError, Mesh, open_mesh
from .mesh.patches import apply_library_patches
from .mesh.paths import PathTracker
from .provider.backend import Backend
from .provider.backend_metrics import metrics_url, scrape_load
from .provider.owner_watch import OwnerWatch, owner_watch_for
from .provider.service import ProviderService
from .runtime.container_spec import RuntimeSpec
from .runtime.hardware import detect_hardware, driver_version
from .runtime.model_dirs import resolve_model
from .runtime.podman_service import open_podman
from .settings import Settings, SettingsError
from .store.admin_token import new_admin_token, remove_admin_token, write_admin_token
from .store.bench_store import load_benchmarks
from .store.identity_file import load_or_create_identity
from .store.keys import KeyStore
from .store.known_peers import KnownPeers

if TYPE_CHECKING:
    # The container runtime (and the podman client, ~0.05 CPU-s to import) is loaded only by a
    # peer that runs one (--model-dir): every other peer's start to ready is that much shorter.
    from .runtime.model_runtime import ModelRuntime

log = logging.getLogger(__name__)

PROBE_INTERVAL_HEALTHY = 5.0
PROBE_INTERVAL_DOWN = 1.0
LOAD_INTERVAL = 2.0
REJOIN_PEERS = 16


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
    discovery: Discovery
    paths: PathTracker
    ledger: Ledger
    ledger_sync: LedgerSync
    cosigner: Cosigner
    credit: CreditBook
    """Who goes first in our provider's line, and the ledger's verified / unverified split, as we see it."""
    runtime: ModelRuntime | None = None
    spot_checks: SpotChecks | None = None
    jobs: JobManager | None = None
    job_worker: JobWorker | None = None
    batches: BatchService | None = None
    """The Batch API (``/v1/files``, ``/v1/batches``) over ``jobs``."""
    api_url: str = ""
    benchmarks: dict[str, Benchmark] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    driver_version: str | None = None
    owner: OwnerWatch | None = None
    """Owner first: steps aside while the rig's owner uses it (provider/owner_watch.py); None: no probe asked for."""
    drained_by_hand: bool = False
    """``garage drain`` holds until ``garage resume``, whatever the owner watch sees."""
    _http_stop: trio.Event = field(default_factory=trio.Event)
    _stopping: bool = False

    # -- what we advertise ------------------------------------------------------

    def offers(self) -> tuple[ModelOffer, ...]:
        offers = []
        for backend in sorted(self.provider.backends.values(), key=lambda b: b.name):
            if not backend.healthy:
                continue
            offers.append(
                ModelOffer(
                    name=backend.name,
                    context_length=backend.context_length,
                    max_concurrency=self.provider.max_concurrency,
                    benchmark=self.benchmarks.get(backend.name),
                    load=self.provider.live_load(backend.name),
                    paths=backend.paths,
                    card=backend.card,
                )
            )
        return tuple(offers)

    # -- the admin API's views ----------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``run/peer.json`` says about this peer."""
        return {
            "peer_id": self.identity.peer_id,
            "addrs": self.mesh.addrs(),
            "api_url": self.api_url,
            "models": sorted(n for n, b in self.provider.backends.items() if b.healthy),
            "pid": os.getpid(),
        }

    def status(self) -> dict[str, Any]:
        return {
            **self.info(),
            "version": __version__,
            "uptime_s": time.time() - self.started_at,
            "region": self.settings.region,
            "reachability": self.mesh.nat.reachability() if self.mesh.nat else "unknown",
            "observed_addrs": self.mesh.nat.observed_addrs() if self.mesh.nat else [],
            "relay_service": self.settings.relay,
            "relay_reservations": dict(self.mesh.nat.reservations) if self.mesh.nat else {},
            "known_relays": len([e for e in self.table.entries(time.time()) if e.ad.relay]),
            "duplicate_identity_at": list(self.table.impostor_addrs),
            "clock_skew": {peer: round(skew) for peer, skew in self.table.clock_skew.items()},
            "driver_version": self.driver_version,
            "hardware": self.caps.hardware.label,
            "connections": len(self.mesh.connected_peers()),
            "connection_counts": self.mesh.connections.view() if self.mesh.connections else None,
            "known_peers": len(self.table.entries(time.time())),
            "dht_mode": self.discovery.dht_mode,
            "dht_table_size": self.discovery.dht.get_routing_table_size(),
            "draining": self.provider.draining,
            "not_serving": self.not_serving(),
            "owner": self.owner.view() if self.owner else None,
            "in_flight": self.provider.in_flight,
            "runtime": self.runtime.view() if self.runtime else None,
            "ledger": ledger_summary(self.ledger.state, self.identity.peer_id),
            "ledger_restore": self.ledger.restore.view() if self.ledger.restore else None,
            "backends": [
                {"model": b.name, "url": b.base_url, "healthy": b.healthy, "backend_model": b.backend_model}
                for b in self.provider.backends.values()
            ],
        }

    def peers(self) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for entry in self.table.entries(now):
            ad = entry.ad
            kind = self.paths.connection_kind(ad.peer_id)
            rtt = self.paths.rtt(ad.peer_id)
            out.append(
                {
                    "peer_id": ad.peer_id,
                    "addrs": list(ad.addrs),
                    "connection": kind or "none",
                    "rtt_ms": None if rtt is None else rtt * 1000,
                    "models": [m.name for m in ad.models],
                    "hardware": ad.hardware.label,
                    "region": ad.region,
                    "load": {m.name: m.load.model_dump() for m in ad.models if m.load},
                    "version": ad.version,
                    "last_seen_s": now - entry.received_at,
                    "known_since": entry.first_seen,
                    "ledger_flagged": self.ledger.state.flagged(ad.peer_id),
                    "cosign_refusals": self.ledger.refusals.get(ad.peer_id, 0),
                    "checks": self.spot_checks.book.records[ad.peer_id].view()
                    if self.spot_checks and ad.peer_id in self.spot_checks.book.records
                    else None,
                    "refuted": bool(self.spot_checks and self.spot_checks.book.refuted(ad.peer_id)),
                    **delivery_fields(self.dispatcher.router, ad, now),
                }
            )
        return out

    def bans(self) -> list[dict[str, Any]]:
        return [asdict(ban) for ban in self.mesh.penalties.bans(time.monotonic())]

    def models(self) -> list[dict[str, Any]]:
        out = []
        by_model: dict[str, list[tuple[str, ModelOffer]]] = {}
        for ad in self.dispatcher.provider_ads():
            for offer in ad.models:
                by_model.setdefault(offer.name, []).append((ad.peer_id, offer))
        for name, providers in sorted(by_model.items()):
            capacity = sum(o.benchmark.aggregate_tps for _, o in providers if o.benchmark)
            out.append(
                {
                    "model": name,
                    "providers": [p for p, _ in providers],
                    "aggregate_tps": capacity,
                    "running": sum((o.load.running + o.load.waiting) if o.load else 0 for _, o in providers),
                    "context_length": max((o.context_length or 0 for _, o in providers), default=0) or None,
                }
            )
        return out

    def ledger_view(self, peer: str | None) -> dict[str, Any]:
        # Fresh, not the admission's cached view: the operator sees a verdict's effect at once.
        return balances_view(
            self.ledger.state, peer, credit_view(self.ledger.state, self.identity.peer_id, self.credit.refuted)
        )

    def not_serving(self) -> str | None:
        """Why the provider refuses requests (``garage status``, the dashboard); None while it serves."""
        if self._stopping:
            return "shutting down"
        if self.drained_by_hand:
            return "drained (garage resume serves again)"
        if self.owner is not None and not self.owner.decision.serving:
            return f"paused: {self.owner.decision.reason}"
        if not self.ledger.own_open.is_set() and self.ledger.restore is not None:
            return f"to other peers, until our own ledger log is restored: {self.ledger.restore.reason}"
        return "draining" if self.provider.draining else None

    async def drain(self) -> None:
        """Stop taking requests, withdraw our models, let in-flight requests finish, stop the container."""
        self.drained_by_hand = True
        log.info("draining: no new requests; in flight: %d", self.provider.in_flight)
        self.provider.draining = True
        await self.caps.withdraw()
        with trio.move_on_after(self.settings.drain_timeout):
            await self.provider.wait_idle()
        if self.runtime is not None:
            await self.runtime.stop()
        log.info("drained")

    async def resume(self) -> None:
        """Serve again after a drain (not while the owner comes first: the owner watch resumes then)."""
        self.drained_by_hand = False
        if self.owner is not None and not self.owner.decision.serving:
            log.info("not resuming: %s", self.not_serving())
            return
        self.provider.draining = False
        self.caps.withdrawn = False
        if self.runtime is not None:
            self.runtime.start()
        self.caps.republish_soon()
        log.info("resumed")

    async def reload_benchmarks(self) -> dict[str, Any]:
        """Read HOME/bench.json again (``garage bench`` rewrote it) and advertise the figures now."""
        self.benchmarks = await trio.to_thread.run_sync(load_benchmarks, self.settings.home)
        self.caps.republish_soon()
        return {name: b.model_dump(mode="json") for name, b in self.benchmarks.items()}

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


def _withdraw_silent(table: PeerTable, peer_id: str) -> None:
    """A peer's last connection went silent (mesh/liveness.py): routing stops picking it at once."""
    if table.suspend(peer_id):
        log.info("peer %s went silent: its routes are withdrawn until it is heard from again", peer_id)


def _resume_heard(table: PeerTable, peer_id: str) -> None:
    """A connection to ``peer_id`` completed its handshake: a route withdrawn for silence comes back."""
    if table.resume(peer_id, time.time()):
        log.info("peer %s is back: its routes are restored", peer_id)


def _watched_closely(table: PeerTable, mesh: Mesh, peer_id: str) -> bool:
    """Whether a silent ``peer_id`` must be found within 10 s (mesh/liveness.py): a provider we route
    to, or a relay holding our reservation (our relayed address dies with it)."""
    entry = table.get(peer_id, time.time())
    if entry is not None and entry.ad.models:
        return True
    return mesh.nat is not None and peer_id in mesh.nat.reservations


def _heard_ad(known: KnownPeers, mesh: Mesh, ad: CapabilityAd) -> None:
    known.note(ad.peer_id, ad.addrs)
    if mesh.liveness is not None and ad.models:
        mesh.liveness.refresh(ad.peer_id)  # a new provider: watched closely from now


async def _probe_backends(peer: Peer, client: httpx.AsyncClient, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Keep backend health current; re-advertise at once when it changes.

    Started once the first round is done, before the first ad: an ad without the models, then
    another with them, cost every provider's start a second (ads on change are a second apart)."""
    backends = peer.provider.backends
    first = True
    while True:
        changed = False
        for backend in backends.values():
            if backend.managed:
                continue
            was = (backend.healthy, backend.backend_model, backend.paths)
            await backend.probe(client)
            changed |= was != (backend.healthy, backend.backend_model, backend.paths)
        if changed:
            peer.caps.republish_soon()
        if first:
            first = False
            task_status.started()
        healthy = all(b.healthy for b in backends.values() if not b.managed)
        await trio.sleep(PROBE_INTERVAL_HEALTHY if healthy else PROBE_INTERVAL_DOWN)


async def _watch_load(peer: Peer, client: httpx.AsyncClient) -> None:
    """Scrape each backend's live load (vLLM's /metrics) for the ads."""
    while True:
        for backend in peer.provider.backends.values():
            if backend.healthy:
                load = await scrape_load(client, metrics_url(backend.base_url), backend.backend_model)
                if load is not None:
                    peer.provider.backend_load[backend.name] = load
        await trio.sleep(LOAD_INTERVAL)


def mesh_snapshot(peer: Peer) -> MeshSnapshot:
    """What ``/metrics`` reads at scrape time."""
    by_connection: dict[str, int] = {}
    for entry in peer.table.entries(time.time()):
        kind = peer.paths.connection_kind(entry.ad.peer_id) or "none"
        by_connection[kind] = by_connection.get(kind, 0) + 1
    jobs = peer.jobs.list() if peer.jobs else []
    by_status: dict[str, int] = {}
    for job in jobs:
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
    state = peer.ledger.state
    now = time.monotonic()
    return MeshSnapshot(
        peers_by_connection=by_connection,
        connections=len(peer.mesh.connected_peers()),
        connections_opened=peer.mesh.connections.opened.total if peer.mesh.connections else 0,
        connections_closed=peer.mesh.connections.closed.total if peer.mesh.connections else 0,
        ads_received=peer.caps.received,
        ads_published=peer.caps.published,
        ads_rejected={
            # Flood faults are counted under the ads service too; the penalty box holds the rest.
            "invalid": sum(peer.mesh.penalties.totals.get(s, 0) for s in (AD_FAULTS, TABLE_FAULTS)) - peer.caps.flooded,
            "flood": peer.caps.flooded,
        },
        banned_peers=peer.mesh.penalties.banned_count(now),
        overclaiming_providers=len(peer.dispatcher.router.overclaimers(peer.table, time.time())),
        faults=dict(peer.mesh.penalties.totals),
        gossip_published=dict(peer.mesh.gossip.published),
        gossip_received=dict(peer.mesh.gossip.received),
        gossip_received_bytes=dict(peer.mesh.gossip.received_bytes),
        gossip_dropped=dict(peer.mesh.gossip.dropped),
        ledger_entries=len(state),
        ledger_authors=len(state.authors()),
        ledger_forked_authors=len(state.flagged_authors()),
        jobs_by_status=by_status,
        job_lines={
            "total": sum(j["total"] for j in jobs),
            "done": sum(j["done"] for j in jobs),
            "failed": sum(j["failed"] for j in jobs),
            "in_flight": sum(j["in_flight"] for j in jobs),
        },
        job_shards=sum(j["shards"] for j in jobs),
        job_lines_served=peer.job_worker.lines_done if peer.job_worker else 0,
        spot_checks=dict(peer.spot_checks.counts) if peer.spot_checks else {},
        refuted_providers=peer.spot_checks.book.refuted_count() if peer.spot_checks else 0,
        draining=peer.provider.draining,
    )


async def _rejoin_known_peers(peer: Peer, known: KnownPeers) -> None:
    """Dial the peers we knew before a restart (no bootstrap list needed)."""
    recent = await known.recent(REJOIN_PEERS)
    async with trio.open_nursery() as nursery:
        for known_peer in recent:
            if known_peer.peer_id == peer.identity.peer_id:
                continue

            async def dial(p=known_peer) -> None:
                try:
                    await peer.mesh.connect(p.peer_id, p.addrs)
                    log.info("rejoined known peer %s", p.peer_id)
                except DialError as exc:
                    log.debug("known peer %s unreachable: %s", p.peer_id, exc)

            nursery.start_soon(dial)


REACHABILITY_EARLY = 60.0
"""Seconds after start during which reachability is read every second: identify's first observations."""
REACHABILITY_EVERY = 10.0
"""Seconds between reads after that (a change of network); a reservation made or lost wakes it at once."""


async def _follow_reachability(peer: Peer) -> None:
    """Behind NAT, be a DHT client (hold no records); reachable, a server."""
    last = None
    started = trio.current_time()
    while True:
        nat = peer.mesh.nat
        reachability = nat.reachability() if nat else "unknown"
        state = (reachability, tuple(sorted(nat.reservations.values())) if nat else ())
        if state != last:
            log.info("reachability: %s, relayed addresses: %s", reachability, list(state[1]) or "none")
            if peer.settings.dht_mode == "auto":
                mode = "client" if reachability == "private" else "server"
                if mode != peer.discovery.dht_mode:
                    await peer.discovery.set_dht_mode(mode)
                    log.info("DHT mode: %s", mode)
            # Our addresses changed (relay reservations come and go): tell the mesh.
            peer.caps.republish_soon()
            last = state
        early = trio.current_time() - started < REACHABILITY_EARLY
        # Reading the observed addresses costs ~0.3 ms (multiaddr parsing): every second, for ever,
        # was 0.03 % of a core of an idle daemon.
        with trio.move_on_after(1.0 if early else REACHABILITY_EVERY):
            if nat is not None:
                await nat.reserved.wait()
            else:
                await trio.sleep_forever()


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
    remove_admin_token(settings.home)


async def _serve_http(app, settings: Settings, stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    config = HypercornConfig()
    config.bind = [settings.api]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # ours, not a second handler
    config.graceful_timeout = settings.drain_timeout
    config.keep_alive_timeout = 75.0  # longer than common client pools keep connections
    config.h11_max_incomplete_size = 16 * 1024  # hypercorn's own bound on a request head; the app checks too
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)


def _runtime_spec(settings: Settings, identity: Identity) -> RuntimeSpec | None:
    """The container to run, if the settings name a model directory."""
    if settings.runtime_model is None:
        return None
    model_dir, default_name = resolve_model(str(settings.runtime_model))
    return RuntimeSpec(
        image=settings.runtime_image,
        model_dir=model_dir,
        served_name=settings.runtime_name or default_name,
        host_port=settings.runtime_port,
        peer_id=identity.peer_id,
        gpus=settings.gpu_list,
        gpu_memory_fraction=settings.runtime_gpu_memory,
        memory=settings.runtime_memory,
        vllm_args=tuple(settings.runtime_args),
    )


@asynccontextmanager
async def _maybe_podman(settings: Settings, spec: RuntimeSpec | None) -> AsyncIterator[str | None]:
    if spec is None:
        yield None
        return
    async with open_podman(settings.home, settings.podman_socket) as url:
        yield url


def _gpus_of(table: PeerTable, peer_id: str) -> int | None:
    """GPUs a peer's ad says it has (1 for a CPU-only peer: a receipt counts one); None if its ad is unknown."""
    entry = table.get(peer_id, time.time())
    return max(1, sum(g.count for g in entry.ad.hardware.gpus)) if entry else None


def _addrs_of(table: PeerTable, peer_id: str) -> tuple[str, ...]:
    entry = table.get(peer_id, time.time())
    return entry.ad.addrs if entry else ()


@asynccontextmanager
async def _closing(ledger: Ledger) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await ledger.flush()
            await ledger.aclose()


def _swarm_key(settings: Settings) -> bytes | None:
    """The private mesh's key, or None for the open mesh; SettingsError for an unusable file."""
    path = settings.swarm_key_path()
    if path is None:
        return None
    try:
        key = parse_key(path.read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read the swarm key {path}: {exc.strerror or exc}") from None
    except SwarmKeyError as exc:
        raise SettingsError(f"{path}: {exc} (`garage swarm-key create` writes a new one)") from None
    log.info("private mesh: swarm key %s (fingerprint %s)", path, fingerprint(key))
    return key


def open_gate(settings: Settings) -> Gatekeeper:
    """The endpoint's key check; SettingsError if it would be open to the network without keys."""
    keys = KeyStore(settings.home / "keys.sqlite")
    required = settings.require_keys or not is_loopback(settings.api_host)
    if required and keys.active_count() == 0:
        keys.close()
        where = (
            ""
            if settings.require_keys and is_loopback(settings.api_host)
            else f" listens on {settings.api}, not loopback, so it"
        )
        raise SettingsError(
            f"the endpoint{where} needs API keys and {settings.home} has none: create one with "
            f"`garage keys create --home {settings.home}`, or keep --api on 127.0.0.1"
        )
    return Gatekeeper(keys, required=required, where=settings.api, admin_token=new_admin_token())


@asynccontextmanager
async def open_peer(settings: Settings) -> AsyncIterator[Peer]:
    """Run a peer until the context exits; call ``Peer.shutdown`` first to drain."""
    apply_library_patches()  # LibraryPatchError before anything opens, if libp2p is not the one patched
    gate = open_gate(settings)
    identity, created = load_or_create_identity(settings.home)
    if created:
        log.info("created a new identity %s in %s", identity.peer_id, settings.home)
    backends = {name: Backend(name, url) for name, url in settings.backends.items()}
    hardware = await trio.to_thread.run_sync(detect_hardware)
    known = KnownPeers(settings.home / "peers.sqlite")
    limits = httpx.Limits(
        max_connections=settings.max_concurrency + 8, max_keepalive_connections=settings.max_concurrency
    )
    peer_filter = PeerFilter.of(settings.allow_peers, settings.deny_peers)
    psk = _swarm_key(settings)
    penalties = PenaltyBox()
    table = PeerTable(
        self_peer_id=identity.peer_id,
        admits=lambda peer: peer_filter.allowed(peer) and not penalties.banned(peer, time.monotonic()),
        # A restarted peer's arrival numbers start again: a cursor from before must not skip ads.
        epoch=random.getrandbits(62),
    )

    def relay_candidates() -> list[str]:
        # Bootstrap peers first (usually relays), then peers that advertise one.
        relays = [a for e in table.entries(time.time()) if e.ad.relay for a in e.ad.addrs if "/p2p-circuit" not in a]
        return list(dict.fromkeys([*settings.bootstrap, *relays]))

    spec = _runtime_spec(settings, identity)
    if spec is not None:
        backends[spec.served_name] = Backend(spec.served_name, spec.base_url, gpus=spec.gpu_count, managed=True)
    ledger_caps = ReplicationCaps(
        settings.ledger_max_entries,
        settings.ledger_max_seq,
        settings.ledger_max_unknown_entries,
        settings.ledger_max_unknown_seq,
    )
    # A new identity has no log anywhere to restore; a kept one may have a newer log in the mesh than here.
    restore = None if created else settings.ledger_restore_timeout
    ledger = await Ledger.open(identity, settings.home / "ledger.sqlite", ledger_caps, restore_timeout=restore)
    # Contributors first in our line, by GPU time that reached us (sybils' receipts mint none); the
    # providers our verdicts refuted count for nothing (``credit.refuted``, set once verdicts exist).
    credit = CreditBook(ledger.state, identity.peer_id)
    async with (
        _closing(ledger),
        _maybe_podman(settings, spec) as podman_url,
        httpx.AsyncClient(limits=limits, trust_env=False) as client,
        open_mesh(
            identity,
            settings.listen,
            settings.bootstrap,
            mdns=settings.mdns,
            relay_service=settings.relay,
            relay_seconds=settings.relay_seconds,
            relay_candidates=relay_candidates,
            psk=psk,
            peer_filter=peer_filter,
            penalties=penalties,
            liveness=settings.liveness,
        ) as mesh,
        trio.open_nursery() as nursery,
    ):
        table.dealt_with = mesh.connected_peers  # their ads are kept, and served, first
        if mesh.liveness is not None:
            mesh.liveness.on_silent = partial(_withdraw_silent, table)
            mesh.liveness.on_back = partial(_resume_heard, table)
            mesh.liveness.closely = partial(_watched_closely, table, mesh)
        provider = ProviderService(
            backends,
            client,
            identity=identity,
            receipts=ledger,
            max_concurrency=settings.max_concurrency,
            peer_limits=Limits(
                tpm=settings.peer_tpm, concurrency=settings.peer_concurrency or max(1, settings.max_concurrency // 2)
            ),
            contributor=lambda peer: credit.contributor(peer, time.monotonic()),
            max_head_bytes=settings.max_body_bytes + 64 * 1024,
            penalise=mesh.penalise,
        )
        peers_of: list[Peer] = []  # the snapshot reads the Peer once it exists
        metrics = Metrics(
            identity.peer_id, __version__, lambda: mesh_snapshot(peers_of[0]) if peers_of else MeshSnapshot()
        )
        metrics.serving(set(backends))
        provider.metrics = metrics
        mesh.set_handler(PROTOCOL_OPENAI, refuse_while_restoring(ledger, provider.handle_stream))
        for backend in backends.values():
            await backend.probe(client)
        offers_of: list[Peer] = []  # the Peer exists only once its parts do
        caps = CapsService(
            mesh,
            table,
            lambda: offers_of[0].offers() if offers_of else (),
            version=__version__,
            min_heartbeat=settings.ad_heartbeat,
            hardware=hardware,
            region=settings.region,
            dialled=lambda: bool(offers_of and offers_of[0].jobs and offers_of[0].jobs.running()),
        )
        discovery = Discovery(
            mesh,
            table,
            caps.latest_ad,
            lambda: [n for n, b in backends.items() if b.healthy],
            dht_mode="client" if settings.dht_mode == "client" else "server",
            on_ad=partial(_heard_ad, known, mesh),
            on_new_connection=caps.republish_soon,
        )
        caps.on_ad = discovery.on_ad  # an ad is news the same way from gossip and from a table sync
        paths = PathTracker(mesh)
        cosigner = Cosigner(identity, ledger, lambda peer: _gpus_of(table, peer) or 1)
        ledger_sync = LedgerSync(mesh, ledger, lambda peer_id: _addrs_of(table, peer_id))
        dispatcher = Dispatcher(
            mesh,
            table,
            provider,
            nursery,
            random.Random(),
            own_ad=caps.build_ad,
            path=paths.path,
            lookup=discovery.lookup,
            countersign=cosigner.cosign,
            flagged=ledger.state.flagged,
        )
        verdicts = VerdictBook(
            identity.peer_id, lambda peer_id: not mesh.admits(peer_id) or ledger.state.flagged(peer_id)
        )
        dispatcher.refuted = credit.refuted = verdicts.refuted
        spot_checks = SpotChecks(dispatcher, identity, verdicts, rate=settings.spot_check_rate, rng=random.Random())
        dispatcher.spot_checks = spot_checks
        peer = Peer(
            settings,
            identity,
            mesh,
            table,
            provider,
            dispatcher,
            caps,
            discovery,
            paths,
            ledger,
            ledger_sync,
            cosigner,
            credit,
        )
        if spec is not None:
            from .runtime.model_runtime import ModelRuntime  # lazy: see the TYPE_CHECKING import

            peer.runtime = ModelRuntime(spec, podman_url, backends[spec.served_name], on_change=caps.republish_soon)
            await nursery.start(peer.runtime.serve)
        peer.benchmarks = await trio.to_thread.run_sync(load_benchmarks, settings.home)
        peer.driver_version = await trio.to_thread.run_sync(driver_version)
        peer.spot_checks = spot_checks
        offers_of.append(peer)
        peers_of.append(peer)
        peer.owner = owner_watch_for(
            settings, provider, caps, runtime=lambda: peer.runtime, held=lambda: peer.drained_by_hand or peer._stopping
        )
        if peer.owner is not None:
            await nursery.start(peer.owner.serve)
        if backends:
            await nursery.start(_probe_backends, peer, client)
        await nursery.start(caps.serve)
        await nursery.start(discovery.serve)
        await nursery.start(known.serve)
        await nursery.start(ledger.serve)
        await nursery.start(ledger_sync.serve)
        await nursery.start(restore_own_log, ledger, ledger_sync, mesh.connected_peers)
        await nursery.start(spot_checks.serve)

        async def model_known(model: str) -> bool:
            if model not in dispatcher.known_models():
                await discovery.lookup(model)
            return model in dispatcher.known_models()

        peer.jobs = JobManager(
            mesh,
            identity,
            ledger,
            settings.home,
            model_known=model_known,
            gpus_of=lambda peer: _gpus_of(table, peer),
            on_announce=caps.keep_alive,
        )
        peer.job_worker = JobWorker(mesh, provider, ledger, lambda peer_id: _addrs_of(table, peer_id))
        await nursery.start(peer.jobs.serve)
        await nursery.start(peer.job_worker.serve)
        peer.batches = BatchService(peer.jobs, settings.home)
        await nursery.start(peer.batches.serve)
        if backends:
            nursery.start_soon(_watch_load, peer, client)
        nursery.start_soon(_rejoin_known_peers, peer, known)
        nursery.start_soon(_follow_reachability, peer)
        app = create_app(
            dispatcher,
            peer,
            peer_id=identity.peer_id,
            max_body_bytes=settings.max_body_bytes,
            request_timeout=settings.request_timeout,
            cache_affinity=settings.cache_affinity,
            gate=gate,
            metrics=metrics,
            path_kind=paths.connection_kind,
        )
        await nursery.start(gate.serve)
        # Before the endpoint answers: the CLI that finds it must find the token too. Never logged.
        write_admin_token(settings.home, gate.admin_token)
        bound = await nursery.start(_serve_http, app, settings, peer._http_stop)
        peer.api_url = (bound[0] if bound else f"http://{settings.api}").rstrip("/") + "/v1"
        _write_run_file(peer)
        log.info("peer %s ready: api %s, listening on %s", identity.peer_id, peer.api_url, " ".join(mesh.addrs()))
        try:
            yield peer
        finally:
            _remove_run_file(settings)
            nursery.cancel_scope.cancel()
