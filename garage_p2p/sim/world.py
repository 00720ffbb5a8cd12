"""The simulated mesh: peers switching on and off, ads, requests, receipts.

Each handler is one thing the daemon does, run at a virtual time, through
the daemon's own core: ads are made, signed and checked by
``core.capabilities`` and kept in each consumer's ``PeerTable``; a request is
routed by ``core.routing.Router``, travels as a HEAD frame that the provider
decodes with ``core.exchange.RequestReader``, and comes back as an END frame
(read by ``ResponseReader``) carrying a receipt signed, counter-signed and
logged with ``core.receipts`` and ``core.ledger``. What py-libp2p would do
(gossip, dials, relays, hole punches) is modelled in ``network`` with the
constants of ``calibration``.

Two economies keep 1,000 peers fast without changing what any peer sees:

- A consumer's table is brought up to date when it routes, from each
  provider's recent ads and their arrival times (publication + gossip
  delay); the table is only ever read when routing, so it is the same table.
  After its first, a catch-up looks only at the providers that published
  since, or whose newest ad was still on its way (``_maybe_news``).
- An ad is signed and checked when its content changes; the periodic
  re-announcements of an unchanged ad reuse the checked ad with a new seq and
  time, instead of paying ~0.3 ms of ed25519 each.

What each peer pays for all this (CPU, bytes) is added up by ``cost.CostMeter``
from per-message costs measured on real hosts. Ads follow ``core.ad_schedule``
(``[gossip] policy = "new"``, the daemon's) or the legacy 5-second round.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..core.ad_schedule import AdSchedule
from ..core.admission import Admission, Outcome
from ..core.affinity import conversation_affinity
from ..core.capabilities import (
    MAX_AD_BYTES,
    MAX_TABLE_BYTES,
    MAX_TABLE_PEERS,
    TABLE_PAGE_ADS,
    TABLE_PAGE_BYTES,
    AdRejected,
    Benchmark,
    CapabilityAd,
    GpuSpec,
    Hardware,
    Load,
    ModelOffer,
    PeerEntry,
    PeerTable,
    TableAnswer,
    TableRequest,
    choose_page,
    expiry,
    make_ad,
    open_ad,
    sign_ad,
)
from ..core.continuation import CHAT, Transcript, plan
from ..core.deadlines import FirstByteHistory
from ..core.exchange import (
    RequestReader,
    ResponseData,
    ResponseEnd,
    ResponseFailed,
    ResponseReader,
    end_frame,
    head_frame,
    truncated_failure,
)
from ..core.gpu_meter import GpuMeter
from ..core.identity import Identity
from ..core.ledger import LedgerState, make_entry
from ..core.limits import Limits
from ..core.liveness import QUIET as LIVENESS_QUIET
from ..core.liveness import RELAXED as LIVENESS_RELAXED
from ..core.messages import EndInfo, ErrorInfo, RequestHead, Timings, Usage, error_info
from ..core.receipts import (
    Receipt,
    check_cosignature,
    cosign_receipt,
    encode_receipt,
    expected_receipt_problem,
    gpu_us_of,
    pack_signed,
    sign_receipt,
    unpack_signed,
)
from ..core.request_policy import Answering, Ban, Close, Delivered, Finish, Open, RequestPolicy, Route
from ..core.routing import PathInfo, Router, RouteRequest
from ..core.sync_partner import SyncPartner
from ..core.wire import HEADER_SIZE
from . import calibration as cal
from .answers import attempt_shape, first_chunk, last_chunks, token_chunk
from .cost import ADS, HEADS, JSON_TOKEN_BYTES, REQUESTS, TABLES, TOKEN_CHUNK_BYTES, CostMeter, Costs
from .engine import Engine, cycles_uncollected, stream
from .hardware import CONCURRENCY, GPUS
from .jobs_model import JobsNet
from .ledger_model import LedgerNet
from .metrics import JoinRecord, Observations, ProviderRecord, RequestRecord
from .network import CONE, PUBLIC, SYMMETRIC, Place, Topology
from .peers import CONSUMER, PROVIDER, RELAY, Conn, Flight, SimPeer, region_of
from .provider import SharedGpu
from .scenario import Scenario
from .workload import Conversation, Conversations, draw_ask, peak_factor, rate_factor

EPOCH = 1_800_000_000.0
"""Unix time of the simulation's start (ads and receipts carry wall-clock times)."""

VERSION = "sim"
TABLE_REQUEST_BYTES = 64
"""A table request with its cursor (``TableRequest``), and the answer's ``TableCursor`` frame."""
ANSWER_REUSE_S = 1.0
"""Table answers computed within this many seconds of each other are shared by askers with the same cursor."""
FAR_CURSOR = 2**62
"""A cursor past any arrival: the answer names only where the table stands now."""
DRAIN_S = 30.0
"""A peer switching off gracefully serves what it runs for at most this long."""
LOCAL_PARTY = "local"
"""The admission party of a provider's own job lines (provider/service.py LOCAL)."""
MAX_TICKS = 100_000
"""Stream reads per look at most (a bound on the loop; a look spans seconds, not hours)."""
BUSY = error_info(
    429,
    "provider is at its concurrency limit",
    code="provider_busy",
    retryable=True,
    retry_after=1.0,
)
"""A full provider's answer (``ProviderService._admit``)."""
DRAINING = error_info(503, "provider is shutting down", code="provider_draining", retryable=True)
"""A draining provider's answer."""


def hour_share(curve: tuple[float, ...], hour: float) -> float:
    return curve[0] if len(curve) == 1 else curve[int(hour) % 24]


class World:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.engine = Engine()
        self.obs = Observations(duration_s=scenario.sim.duration_s, sample_s=scenario.sim.sample_s)
        self.counters = self.obs.counters
        for name in (
            "ads_signed",
            "ads_refreshed",
            "dials_direct",
            "dials_relayed",
            "dial_failures",
            "punches",
            "relays_lost",
            "relay_time_cuts",
            "dht_lookups",
            "silent_hangs",
            "reset_retries",
            "ads_published",
            "table_syncs",
        ):
            self.counters[name] = 0
        self._build_peers()
        self.legacy = scenario.gossip.policy == "legacy"
        self.meter = CostMeter(len(self.peers), Costs.load())
        # The legacy baseline's table holds everyone: past MAX_TABLE_PEERS the daemon's would evict an ad
        # for every new one, which only adds to what the legacy design costs (and slows the simulator).
        big = len(self.peers) if self.legacy else 0
        self.mesh_table = PeerTable(
            epoch=1, max_peers=max(MAX_TABLE_PEERS, big), max_bytes=max(MAX_TABLE_BYTES, big * MAX_AD_BYTES)
        )
        """The table every peer holds: every ad reaches every peer, so one real ``PeerTable`` fed every
        ad published stands for all (its size sets the heartbeat; its ``answer`` serves table syncs)."""
        self._ads_rng = stream(seed, "ad-schedule")
        self._tables_rng = stream(seed, "tables")
        self._answers: dict[tuple, tuple[TableAnswer, int]] = {}
        self.ledger = LedgerNet(self)
        self.jobs = JobsNet(self)
        self._request_rng = stream(seed, "requests")
        self._ask_rng = stream(seed, "asks")
        self._conversations = Conversations(stream(seed, "conversations"), scenario.load.conversation_turns)
        self._churn_rng = stream(seed, "churn")
        self._next_request_id = 0
        self._next_key = 0
        self.online_consumers: list[int] = []
        self._consumer_pos: dict[int, int] = {}

    def rng(self, *names: object):
        """An independent random stream of this run, for one purpose."""
        return stream(self.seed, *names)

    # == building the peers ===================================================================

    def _build_peers(self) -> None:
        sc, seed = self.scenario, self.seed
        rng = stream(seed, "peers")
        cities = list(sc.network.cities)
        city_weights = [sc.network.cities[c] for c in cities]
        gpus = list(sc.peers.gpus)
        gpu_weights = [sc.peers.gpus[g] for g in gpus]
        n = sc.peers.count
        nats = [PUBLIC, CONE, SYMMETRIC]
        nat_weights = [sc.network.public, sc.network.cone, sc.network.symmetric]
        lo, hi = sc.network.access_ms
        places: list[Place] = []
        self.peers: list[SimPeer] = []
        # Exactly the share of providers asked for (a small mesh would drift far from it).
        providers = set(rng.sample(range(n), min(n - 1, round(n * sc.peers.provider_share))))
        for i in range(n):
            city = rng.choices(range(len(cities)), weights=city_weights)[0]
            nat = rng.choices(nats, weights=nat_weights)[0]
            places.append(Place(city, rng.uniform(lo, hi) / 1000, nat))
            role = PROVIDER if i in providers else CONSUMER
            if role == CONSUMER and nat == PUBLIC and rng.random() < sc.peers.relay_share:
                role = RELAY
            identity = Identity.from_seed(stream(seed, "identity", i).randbytes(32))
            peer = SimPeer(i, identity, identity.peer_id, role, cities[city], stream(seed, "peer", i))
            if role == PROVIDER:
                gpu = rng.choices(gpus, weights=gpu_weights)[0]
                kind = GPUS[gpu]
                fitting = [m for m, spec in sc.models.items() if spec.min_vram_gib <= kind.vram_gib] or list(sc.models)
                model = rng.choices(fitting, weights=[sc.models[m].weight for m in fitting])[0]
                peer.gpu_name, peer.kind, peer.model = gpu, kind, model
                peer.gpu = SharedGpu(kind, sc.models[model].params_b)
                peer.meter = GpuMeter(gpus=1)
                peer.state = LedgerState()
                peer.record = ProviderRecord(peer.peer_id, gpu, kind.aggregate_tps * 8.0 / sc.models[model].params_b)
                self.obs.providers.append(peer.record)
            elif role == CONSUMER:
                peer.table = PeerTable(peer.peer_id)
                peer.router = Router(peer.rng)
            self.peers.append(peer)
        self.by_id = {p.peer_id: p for p in self.peers}
        self.topo = Topology(cities, places, stream(seed, "overlay"), loopback=sc.network.loopback)
        self.providers_of: dict[str, list[SimPeer]] = {m: [] for m in sc.models}
        self.published: dict[str, list[int]] = {m: [] for m in sc.models}
        """Per model, the providers of each ad published, in order (what a catch-up looks through)."""
        for p in self.peers:
            if p.role == PROVIDER:
                self.providers_of[p.model].append(p)
        self.relays = [p for p in self.peers if p.role == RELAY]
        # Ledger replicas: every peer, or a fixed sample.
        wanted = sc.ledger.replicas
        chosen = self.peers if wanted == 0 or wanted >= n else stream(seed, "replicas").sample(self.peers, wanted)
        for p in chosen:
            p.replica = True
            if p.state is None:
                p.state = LedgerState()
        self.replicas = [p for p in self.peers if p.replica]
        self.obs.ledger_replicas = len(self.replicas)

    # == running ===============================================================================

    def run(self) -> Observations:
        with cycles_uncollected():
            return self._run()

    def _run(self) -> Observations:
        sc = self.scenario
        eng = self.engine
        joiners = self._joiners()
        start_hour = sc.sim.start_hour
        for p in self.peers:
            if p.idx in joiners:
                continue
            if (
                p.role == RELAY
                or self._online_share(p, start_hour) >= 1.0
                or self._churn_rng.random() < self._online_share(p, start_hour)
            ):
                self._come_online(p, initial=True)
                self._schedule_switch(p, on=False)
            else:
                self._schedule_switch(p, on=True)
        for p in self.peers:
            if p.online and p.role == PROVIDER:
                # Running a while: a provider behind NAT holds its reservations (the relays came
                # online in the loop above, some after it).
                self._reserve_relays(p)
        self._steady_state()
        for event in sc.events:
            eng.at(event.at_s, self._event, event)
        eng.at(0.0, self._sample)
        self._lam_max = (
            self._rate_per_consumer() * max(1, sum(p.role == CONSUMER for p in self.peers)) * peak_factor(sc)
        )
        if self._lam_max > 0:
            eng.at(self._request_rng.expovariate(self._lam_max), self._arrival)
        end = sc.sim.duration_s + sc.sim.drain_s
        eng.at(cal.TABLE_SYNC_S, self._cost_tick, end)
        eng.run(end)
        self._settle_costs()
        self.meter.close(end)
        self.obs.cost = self.meter.summary(end, self.scenario.gossip.policy)
        for p in self.peers:
            if p.online and p.record is not None:
                p.record.online_s += min(sc.sim.duration_s, end) - min(p.online_since, sc.sim.duration_s)
        self.obs.ledger_lag = self.ledger.lag
        self.obs.ledger_entries = self.ledger.entries
        self.obs.ledger_converged_after_heal = self.ledger.converged_after_heal
        self.counters["events"] = eng.events_run
        return self.obs

    def _joiners(self) -> set[int]:
        """Providers kept off until a ``join`` event switches them on."""
        count = sum(e.count for e in self.scenario.events if e.kind == "join")
        providers = [p.idx for p in self.peers if p.role == PROVIDER]
        self._join_queue = providers[-count:] if count else []
        return set(self._join_queue)

    def _online_share(self, peer: SimPeer, hour: float) -> float:
        churn = self.scenario.churn
        return hour_share(churn.provider_online if peer.role == PROVIDER else churn.consumer_online, hour)

    def _hour(self) -> float:
        return (self.scenario.sim.start_hour + self.engine.now / 3600) % 24

    def _sample(self) -> None:
        providers = sum(1 for p in self.peers if p.online and p.role == PROVIDER)
        consumers = len(self.online_consumers)
        self.obs.online.append((self.engine.now, providers, consumers))
        if self.engine.now + self.scenario.sim.sample_s <= self.scenario.sim.duration_s:
            self.engine.after(self.scenario.sim.sample_s, self._sample)

    # == churn ==================================================================================

    def _schedule_switch(self, peer: SimPeer, *, on: bool) -> None:
        churn = self.scenario.churn
        share = self._online_share(peer, self._hour())
        if share >= 1.0 or peer.role == RELAY:
            if on:
                self.engine.after(0.0, self._switch_on, peer)
            return
        mean_on = churn.mean_session_min * 60
        mean = mean_on if not on else mean_on * (1 - share) / share
        delay = self._churn_rng.expovariate(1 / mean)
        self.engine.after(delay, self._switch_on if on else self._switch_off, peer)

    def _switch_on(self, peer: SimPeer) -> None:
        if not peer.online:
            self._come_online(peer)
            self._schedule_switch(peer, on=False)

    def _switch_off(self, peer: SimPeer) -> None:
        if not peer.online:
            return
        if peer.role == CONSUMER and peer.in_flight:
            self.engine.after(5.0, self._switch_off, peer)  # the user waits for the answer
            return
        if peer.role == PROVIDER and self._churn_rng.random() < self.scenario.churn.graceful_share:
            self._drain(peer)
        else:
            self._vanish(peer)
        self._schedule_switch(peer, on=True)

    def _come_online(self, peer: SimPeer, *, initial: bool = False) -> None:
        now = self.engine.now
        peer.online = True
        peer.session += 1
        peer.online_since = now
        peer.draining = False
        self.topo.come_online(peer.idx)
        self.meter.online(peer.idx, now, self.topo.side[peer.idx] if self.topo.split else 0)
        if not initial:
            # A restarted daemon signs a new ad, holds no cursors, and syncs tables with each new connection.
            peer.own_ad = None
            peer.cursors = {}
            peer.sync_partner = SyncPartner()
            for n in sorted(self.topo.neighbours[peer.idx]):
                self._connected(peer.idx, n)
        if peer.role == CONSUMER:
            self._consumer_pos[peer.idx] = len(self.online_consumers)
            self.online_consumers.append(peer.idx)
            if not initial:
                # A restarted daemon starts empty and fetches a neighbour's table (mesh/discovery.py).
                peer.table = PeerTable(peer.peer_id)
                peer.router = Router(peer.rng)
                peer.applied_seq = {}
                peer.caught_up = {}
                peer.conns = {}
                peer.first_bytes = FirstByteHistory()
                self.engine.after(cal.HANDSHAKE_MS / 1000, self._fetch_table, peer, peer.session)
        if peer.role == PROVIDER:
            # A fresh daemon: its slots shared as ``ProviderService`` shares them (daemon defaults:
            # a consumer peer may hold half of them).
            peer.admission = Admission(CONCURRENCY, Limits(concurrency=max(1, CONCURRENCY // 2)))
            peer.waiting = {}
            if not initial:
                self._reserve_relays(peer)
        self._start_ads(peer, initial)
        if peer.state is not None:
            self.ledger.start_anti_entropy(peer)
            for n in sorted(self.topo.neighbours[peer.idx]):
                other = self.peers[n]
                if other.state is not None and not initial:
                    self.ledger.connected(peer, other)
        if not initial:
            self.engine.after(cal.JOIN_FIRST_AD_S, self._joined, peer, now)

    def _fetch_table(self, peer: SimPeer, session: int) -> None:
        """A neighbour serves its table: one page (``choose_page``, the daemon's rule) of the newest
        ads of the providers that reached it."""
        neighbours = sorted(self.topo.neighbours[peer.idx])
        if not peer.online or peer.session != session or not neighbours:
            return
        source = self.peers[peer.rng.choice(neighbours)]
        row = self.topo.gossip_delay(source.idx)
        now = self.engine.now
        connected = self.topo.neighbours[source.idx]
        held: dict[int, PeerEntry] = {}  # what the source's table holds that the peer lacks
        for providers in self.providers_of.values():
            for p in providers:
                found = self._newest_arrived(p, source, row, now, peer.applied_seq.get(p.idx, 0), held_since_join=True)
                if found is not None and p.idx not in held:
                    ad, arrival = found
                    held[p.idx] = PeerEntry(
                        ad=ad,
                        expires_at=expiry(ad, EPOCH + arrival),
                        received_at=EPOCH + arrival,
                        source=ad.peer_id if p.idx in connected else "gossip",
                        first_seen=EPOCH + arrival,
                    )
        favoured = {self.peers[n].peer_id for n in connected}
        served = {
            e.ad.peer_id for e in choose_page(held.values(), EPOCH + now, TABLE_PAGE_ADS, TABLE_PAGE_BYTES, favoured)
        }
        for idx, entry in held.items():
            if entry.ad.peer_id in served:
                peer.applied_seq[idx] = entry.ad.seq
                try:
                    peer.table.apply(entry.ad, EPOCH + now)
                except AdRejected:
                    pass

    def _joined(self, peer: SimPeer, since: float) -> None:
        """The new peer's first ad goes out: when does the mesh know it?"""
        if not peer.online:
            return
        delay = self.topo.gossip_delay(peer.idx)
        base = self.engine.now - since
        others = self.topo.online_indices()
        arrivals = np.sort(delay[others[others != peer.idx]])
        if not len(arrivals):
            return
        k = max(1, math.ceil(0.99 * len(arrivals)))
        reach = float(arrivals[k - 1])
        self.obs.joins.append(JoinRecord(peer.peer_id, since, base + reach if math.isfinite(reach) else None))

    def _leave(self, peer: SimPeer) -> list[int]:
        """The peer goes offline; returns its former gossip neighbours."""
        now = self.engine.now
        peer.online = False
        if peer.record is not None:
            peer.record.online_s += max(
                0.0, min(now, self.scenario.sim.duration_s) - min(peer.online_since, self.scenario.sim.duration_s)
            )
        if peer.role == PROVIDER:
            peer.last_row = self.topo.gossip_delay(peer.idx)
        self.meter.offline(peer.idx, now, self.topo.degree(peer.idx))
        former = self.topo.go_offline(peer.idx)
        self.engine.after(cal.HEARTBEAT_S, self.topo.repair, former)
        if peer.role == CONSUMER:
            pos = self._consumer_pos.pop(peer.idx)
            last = self.online_consumers.pop()
            if last != peer.idx:
                self.online_consumers[pos] = last
                self._consumer_pos[last] = pos
        if peer.role == RELAY:
            self._relay_gone(peer)
        return former

    def _vanish(self, peer: SimPeer) -> None:
        """Power cut: nothing is said; its connections go silent until liveness closes them."""
        former = self._leave(peer)
        if peer.gpu is not None:
            peer.gpu.drop(self.engine.now, set(peer.batch))
            peer.batch.clear()  # its leases expire at the submitters
            stuck = set(peer.flights)
            peer.gpu.drop(self.engine.now, stuck)
            for key in sorted(stuck | set(peer.waiting)):
                flight = peer.flights.pop(key, None) or peer.waiting.pop(key)
                flight.key = 0
                flight.silent_from = self.engine.now
                if flight.conn is not None:
                    flight.conn.dead = True
                    flight.conn.active.discard(flight.record.id)
                    flight.conn.hung.append((flight, flight.attempt))
            # The requests it ran hear nothing more: their stall (or first-byte) deadline finds it lost,
            # or liveness, whichever comes first.
        self._watch_silence(peer, former)

    def _watch_silence(self, peer: SimPeer, former: list[int]) -> None:
        """Liveness (mesh/liveness.py): every consumer holding a connection to the vanished peer (one it
        dialled, or a gossip link) finds it silent LIVENESS_DETECT_S later, closes the connection
        (what ran on it fails at once) and withdraws the peer's routes (the daemon's ``_withdraw_silent``)."""
        if peer.role != PROVIDER:
            return
        watchers = {i for i in former if self.peers[i].role == CONSUMER}
        watchers.update(c.idx for c in self.peers if c.role == CONSUMER and peer.idx in c.conns)
        for i in sorted(watchers):
            watcher = self.peers[i]
            self.engine.after(cal.LIVENESS_DETECT_S, self._silent, watcher, watcher.session, peer, peer.session)

    def _silent(
        self, consumer: SimPeer, own_session: int, provider: SimPeer, session: int, path: Conn | None = None
    ) -> None:
        """Liveness closed the consumer's silent connection to ``provider`` (``path``: that one, its
        relay gone; None: whichever reached the vanished ``session``) and, as it was its only one,
        withdrew the provider's routes until a newer ad."""
        if not consumer.online or consumer.session != own_session:
            return  # it left meanwhile: its connections went with it
        conn = consumer.conns.get(provider.idx)
        if path is not None and conn is not path:
            # Replaced meanwhile (a new dial): only what waited on the silent one fails.
            conn = path
        if conn is not None and conn.session == session and not conn.closed:
            if consumer.conns.get(provider.idx) is conn:
                consumer.conns.pop(provider.idx)
            conn.closed = True
            for flight, attempt in conn.hung:
                if not flight.done and flight.attempt == attempt and flight.conn is conn:
                    self._cut(flight, "the connection went silent (liveness)")
            conn.hung.clear()
        last = provider.idx not in consumer.conns and provider.idx not in self.topo.neighbours[consumer.idx]
        if last and provider.session == session and consumer.table is not None:
            consumer.table.suspend(provider.peer_id)  # until it is heard from again (a newer ad)

    def _drain(self, peer: SimPeer) -> None:
        """Withdraw the ad, finish what runs (30 s at most), then leave."""
        peer.draining = True
        if peer.schedule is not None:
            peer.schedule.published(self.engine.now, self.mesh_table.mesh_size(), self._ads_rng.random())
        self._publish(peer)  # the withdrawal goes out at once
        self.engine.after(DRAIN_S, self._drained, peer, peer.session)
        self._maybe_drained(peer)

    def _maybe_drained(self, peer: SimPeer) -> None:
        if peer.draining and peer.online and not peer.flights and not peer.batch:
            self._drained(peer, peer.session)

    def _drained(self, peer: SimPeer, session: int) -> None:
        if not peer.online or peer.session != session:
            return
        # The process exits: its connections close, what still runs is cut off.
        for key in sorted({*peer.flights, *peer.waiting}):
            flight = peer.flights.get(key) or peer.waiting.get(key)
            if flight is not None:
                self._cut(flight, "the provider shut down")
        if not peer.online:
            return  # cutting its last flight ended the drain already (``_maybe_drained`` ran this)
        peer.gpu.drop(self.engine.now, set(peer.batch))
        peer.batch.clear()
        self._leave(peer)
        for consumer in self.peers:
            if consumer.role == CONSUMER:
                consumer.conns.pop(peer.idx, None)

    # == relays ==================================================================================

    def _reserve_relays(self, peer: SimPeer) -> None:
        if self.topo.places[peer.idx].nat == PUBLIC:
            peer.relays = []
            return
        live = [r.idx for r in self.relays if r.online and self.topo.same_side(r.idx, peer.idx)]
        peer.relays = sorted(peer.rng.sample(live, min(cal.RELAY_RESERVATIONS, len(live))))
        self._keep_reserving(peer, 0.0)

    def _relay_gone(self, relay: SimPeer) -> None:
        """A relay vanished without a word: what went through it goes silent, and each end finds out
        by liveness (LIVENESS_DETECT_S), the consumer for its relayed connections, the provider for its
        reservation; the provider then reserves elsewhere (RELAY_RECOVERY_S, measured) and its ad
        names the new relay."""
        self.counters["relays_lost"] += 1
        now = self.engine.now
        for consumer in self.peers:
            if consumer.role != CONSUMER:
                continue
            for p_idx, conn in sorted(consumer.conns.items()):
                if conn.relay == relay.idx and conn.kind_at(now) == "relayed" and not conn.dead:
                    self._path_silent(consumer, p_idx, conn)
        for p in self.peers:
            if p.role == PROVIDER and relay.idx in p.relays:
                self.engine.after(cal.LIVENESS_DETECT_S, self._reservation_lost, p, p.session, relay.idx)

    def _path_silent(self, consumer: SimPeer, p_idx: int, conn: Conn) -> None:
        """The connection's relay vanished: nothing more crosses it, in either direction."""
        conn.dead = True
        provider = self.peers[p_idx]
        for flight in [*provider.flights.values(), *provider.waiting.values()]:
            if flight.record.id in conn.active:
                flight.silent_from = self.engine.now
                conn.hung.append((flight, flight.attempt))
        conn.active.clear()
        self.engine.after(cal.LIVENESS_DETECT_S, self._silent, consumer, consumer.session, provider, conn.session, conn)

    def _reservation_lost(self, provider: SimPeer, session: int, relay: int) -> None:
        """The provider's liveness found its relay silent: it drops the reservation, and its ad the address."""
        if not provider.online or provider.session != session or relay not in provider.relays:
            return
        provider.relays = [r for r in provider.relays if r != relay]
        self._keep_reserving(provider, cal.RELAY_RECOVERY_S)
        self._ad_changed(provider)

    def _keep_reserving(self, peer: SimPeer, delay: float) -> None:
        """A provider behind NAT short of reservations looks again after ``delay`` (and then every
        RESERVE_RETRY_S while it has none, RESERVE_INTERVAL_S while it has fewer than it wants), as
        ``NatService`` does; one look pending at a time."""
        if self.topo.places[peer.idx].nat == PUBLIC or len(peer.relays) >= cal.RELAY_RESERVATIONS:
            return
        if not delay:
            delay = cal.RESERVE_INTERVAL_S if peer.relays else cal.RESERVE_RETRY_S
        peer.reserving += 1
        self.engine.after(delay, self._rereserve, peer, peer.session, peer.reserving)

    def _rereserve(self, peer: SimPeer, session: int, look: int | None = None) -> None:
        if not peer.online or peer.session != session or (look is not None and look != peer.reserving):
            return
        live = [
            r.idx for r in self.relays if r.online and r.idx not in peer.relays and self.topo.same_side(r.idx, peer.idx)
        ]
        missing = cal.RELAY_RESERVATIONS - len(peer.relays)
        if live and missing > 0:
            peer.relays = sorted(peer.relays + peer.rng.sample(live, min(missing, len(live))))
            self._ad_changed(peer)
        self._keep_reserving(peer, 0.0)

    # == ads =====================================================================================

    def _addrs(self, peer: SimPeer) -> tuple[str, ...]:
        i = peer.idx
        if self.topo.loopback:
            return (f"/ip4/127.0.0.1/tcp/{4001 + i}",)
        if self.topo.places[i].nat == PUBLIC:
            return (f"/ip4/10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/tcp/4001",)
        return tuple(
            f"/ip4/10.{(r >> 16) & 255}.{(r >> 8) & 255}.{r & 255}/tcp/4001/p2p/{self.peers[r].peer_id}/p2p-circuit"
            for r in peer.relays
        )

    def _offer(self, peer: SimPeer) -> ModelOffer:
        kind = peer.kind
        scale = 8.0 / peer.gpu.params_b
        return ModelOffer(
            name=peer.model,
            max_concurrency=CONCURRENCY,
            benchmark=Benchmark(
                single_stream_tps=kind.single_tps * scale,
                aggregate_tps=kind.aggregate_tps * scale,
                concurrency=CONCURRENCY,
                ttft_p50_ms=kind.ttft_ms / scale,
                measured_at=EPOCH,
            ),
            load=self._live_load(peer),
        )

    @staticmethod
    def _live_load(peer: SimPeer) -> Load:
        """What a provider's ads and END frames say of its load (``ProviderService.live_load``)."""
        return Load(running=peer.gpu.running, waiting=0, in_flight=len(peer.flights))

    def _ad_changed(self, peer: SimPeer) -> None:
        """Load or addresses changed. Legacy: publish within a second. New: only a change of what the ad
        says (addresses, a withdrawal) goes out early; live load travels on END frames instead."""
        if not peer.online:
            return
        if peer.schedule is not None:
            if (peer.draining, self._addrs(peer)) != peer.told:
                peer.schedule.changed()
                self._arm(peer, peer.schedule.get_timer())
            return
        want = max(self.engine.now, peer.last_ad + cal.AD_MIN_GAP_S)
        if want < peer.next_ad:
            peer.next_ad = want
            peer.ad_version += 1
            self.engine.at(want, self._ad_tick, peer, peer.session, peer.ad_version)

    def _start_ads(self, peer: SimPeer, initial: bool) -> None:
        """Its first ad goes out JOIN_FIRST_AD_S after it starts (peers online at the start: see ``_steady_state``)."""
        now = self.engine.now
        first = now if initial else now + cal.JOIN_FIRST_AD_S
        if not self.legacy:
            peer.schedule = AdSchedule()
            if not initial:
                self._arm(peer, first)
            return
        if peer.role == PROVIDER:
            peer.next_ad = now
            self.engine.at(first, self._ad_tick, peer, peer.session, peer.ad_version)
        else:
            start = now + self._ads_rng.uniform(0, cal.AD_INTERVAL_S) if initial else first
            self.engine.at(start, self._plain_tick, peer, peer.session)

    def _steady_state(self) -> None:
        """The peers online at the start have been running a while: their last heartbeat came at a random
        time within one period, their ad is in every table, and they hold cursors for their neighbours."""
        if self.legacy:
            return
        online = self.topo.online_peers()
        for i in online:
            peer = self.peers[i]
            schedule = peer.schedule
            jitter = self._ads_rng.random()
            schedule.published(0.0, len(online), jitter)
            # The next heartbeat is one interval after the last, which came at a uniform time before now.
            schedule.published(-self._ads_rng.uniform(0, schedule.get_timer()), len(online), jitter)
            self._publish(peer, charge=False)
            self._arm(peer, schedule.get_timer())
        now = EPOCH + self.engine.now
        cursor = self.mesh_table.answer(b"", now, TableRequest(epoch=self.mesh_table.epoch, since=FAR_CURSOR)).cursor
        for i in online:
            peer = self.peers[i]
            for n in sorted(self.topo.neighbours[i]):
                peer.cursors[(n, self.peers[n].session)] = cursor

    def _arm(self, peer: SimPeer, at: float) -> None:
        """(Re)set the peer's one pending ad timer (none at all for an ad without heartbeats)."""
        peer.ad_version += 1
        if math.isinf(at):
            return
        self.engine.at(max(at, self.engine.now), self._schedule_tick, peer, peer.session, peer.ad_version)

    def keep_alive(self, peer: SimPeer) -> None:
        """Providers are about to dial ``peer`` (it announced a batch job): ``CapsService.keep_alive``."""
        if peer.online and peer.schedule is not None and not peer.schedule.heartbeat:
            peer.schedule.changed()
            self._arm(peer, peer.schedule.get_timer())

    def _schedule_tick(self, peer: SimPeer, session: int, version: int) -> None:
        if not peer.online or peer.session != session or peer.ad_version != version:
            return
        now = self.engine.now
        schedule = peer.schedule
        if schedule.handle_timer(now):
            # The period first: the ad about to go out carries the ttl of the heartbeat after it (mesh/caps.py).
            schedule.published(now, self.mesh_table.mesh_size(), self._ads_rng.random())
            self._publish(peer)
        self._arm(peer, schedule.get_timer())

    def _ad_tick(self, peer: SimPeer, session: int, version: int) -> None:
        """Legacy: a provider's ad every AD_INTERVAL_S."""
        if not peer.online or peer.session != session or peer.ad_version != version:
            return
        self._publish(peer)
        peer.next_ad = self.engine.now + cal.AD_INTERVAL_S
        peer.ad_version += 1
        self.engine.at(peer.next_ad, self._ad_tick, peer, peer.session, peer.ad_version)

    def _plain_tick(self, peer: SimPeer, session: int) -> None:
        """Legacy: a consumer's or relay's ad every AD_INTERVAL_S."""
        if not peer.online or peer.session != session:
            return
        self._publish(peer)
        self.engine.after(cal.AD_INTERVAL_S, self._plain_tick, peer, session)

    def _publish(self, peer: SimPeer, *, charge: bool = True) -> None:
        """The peer's ad goes out on gossip: into every table, and (``charge``) paid for by everyone it reaches."""
        now = self.engine.now
        ttl = cal.AD_TTL_S if peer.schedule is None else peer.schedule.ttl()
        ad = self._publish_ad(peer, ttl) if peer.role == PROVIDER else self._publish_plain_ad(peer, ttl)
        if peer.schedule is not None:
            # A consumer's ad has no heartbeats, unless providers dial it for a batch job's shards.
            peer.schedule.note_ad(ad, dialled=self.jobs.running(peer))
        peer.told = (peer.draining, self._addrs(peer)) if peer.role == PROVIDER else ()
        try:
            self.mesh_table.apply(ad, EPOCH + now, wire=peer.ad_wire)
        except AdRejected:
            pass
        self.counters["ads_published"] += 1
        if charge:
            self.meter.charge(peer.idx, ADS, self.meter.ms["ad_sign"])
            self.meter.flood(
                ADS, peer.idx, len(peer.ad_wire), self.topo.degree(peer.idx), self.topo.flood_sides(peer.idx)
            )

    def _publish_plain_ad(self, peer: SimPeer, ttl: float) -> CapabilityAd:
        """A consumer's or relay's ad: no models. Signed and checked once a session, then refreshed."""
        now = self.engine.now
        peer.ad_seq += 1
        if peer.own_ad is None:
            unsigned = make_ad(
                peer.identity,
                seq=peer.ad_seq,
                now=EPOCH + now,
                ttl=ttl,
                addrs=self._addrs(peer),
                models=(),
                version=VERSION,
                region=region_of(peer.city),
                relay=peer.role == RELAY,
            )
            peer.ad_wire = sign_ad(peer.identity, unsigned)
            peer.own_ad = open_ad(peer.ad_wire, EPOCH + now)
            self.counters["ads_signed"] += 1
        else:
            peer.own_ad = peer.own_ad.model_copy(update={"seq": peer.ad_seq, "issued_at": EPOCH + now, "ttl": ttl})
            self.counters["ads_refreshed"] += 1
        return peer.own_ad

    def _publish_ad(self, peer: SimPeer, ttl: float) -> CapabilityAd:
        now = self.engine.now
        peer.ad_seq += 1
        addrs = self._addrs(peer)
        content = (peer.draining, peer.gpu.running, len(peer.flights), addrs, ttl)
        if peer.ads and content == peer.ad_content:
            ad = peer.ads[-1][1].model_copy(update={"seq": peer.ad_seq, "issued_at": EPOCH + now})
            self.counters["ads_refreshed"] += 1
        else:
            models = () if peer.draining else (self._offer(peer),)
            spec = GpuSpec(name=peer.gpu_name, vram_mib=int(peer.kind.vram_gib * 1024))
            unsigned = make_ad(
                peer.identity,
                seq=peer.ad_seq,
                now=EPOCH + now,
                ttl=ttl,
                addrs=addrs,
                models=models,
                version=VERSION,
                hardware=Hardware(gpus=(spec,)),
                region=region_of(peer.city),
            )
            peer.ad_wire = sign_ad(peer.identity, unsigned)
            ad = open_ad(peer.ad_wire, EPOCH + now)
            peer.ad_content = content
            self.counters["ads_signed"] += 1
        peer.last_ad = now
        self.published[peer.model].append(peer.idx)
        peer.ads.append(
            (now, ad, self.topo.side if self.topo.split else None)
        )  # side lists are replaced, never changed
        # Ads older than a TTL plus the slowest gossip can no longer be the newest to arrive.
        horizon = now - ttl - 10.0
        while len(peer.ads) > 2 and peer.ads[1][0] < horizon:
            peer.ads.pop(0)
        return ad

    # == what the peers pay ======================================================================

    def _cost_tick(self, end: float) -> None:
        """Every TABLE_SYNC_S: settle gossip, the periodic heads round, table syncs, pings."""
        online = self.topo.online_peers()
        peers = np.array(online, dtype=np.int64)
        degrees = np.array([self.topo.degree(i) for i in online], dtype=np.int64)
        self.meter.settle(peers, degrees)
        self.meter.upkeep(peers, cal.TABLE_SYNC_S, cal.IDLE_CONNECTIONS)
        # Heads go out on gossip only when an author's log grows (LedgerNet); idle, each peer compares a
        # digest of its heads with a random neighbour every ANTI_ENTROPY_S on average.
        digest = self.meter.costs.heads_bytes(1, 1)
        connected = peers[degrees > 0]
        self.meter.exchanges(connected, HEADS, cal.TABLE_SYNC_S / cal.ANTI_ENTROPY_S, digest, digest)
        self.mesh_table.expire(EPOCH + self.engine.now)
        for i in online:
            neighbours = sorted(self.topo.neighbours[i])
            if not neighbours:
                continue
            if self.legacy:
                self._table_sync(i, self._tables_rng.choice(neighbours))
            else:
                self._table_sync(i, self.peers[i].sync_partner.choose(neighbours, self._tables_rng.random()))
        # A connection is pinged every QUIET seconds when one end routes to the other (a provider) or
        # holds a reservation on it (a relay); every RELAXED seconds otherwise (core/liveness.py).
        closely = np.array([self._watched_closely(i) for i in online], dtype=np.int64)
        self.meter.pings(peers, closely, cal.TABLE_SYNC_S, LIVENESS_QUIET)
        self.meter.pings(peers, degrees - closely, cal.TABLE_SYNC_S, LIVENESS_RELAXED)
        if self.engine.now + cal.TABLE_SYNC_S <= end:
            self.engine.after(cal.TABLE_SYNC_S, self._cost_tick, end)

    def _watched_closely(self, i: int) -> int:
        """How many of peer ``i``'s connections are watched closely, by either end."""
        peer = self.peers[i]
        if peer.role == PROVIDER:
            return self.topo.degree(i)
        peers = self.peers
        return sum(
            1 for n in self.topo.neighbours[i] if peers[n].role == PROVIDER or n in peer.relays or i in peers[n].relays
        )

    def _settle_costs(self) -> None:
        online = self.topo.online_peers()
        self.meter.settle(
            np.array(online, dtype=np.int64), np.array([self.topo.degree(i) for i in online], dtype=np.int64)
        )

    def _connected(self, a: int, b: int) -> None:
        """A new connection: each side asks the other for its table (mesh/discovery.py)."""
        self._table_sync(a, b)
        self._table_sync(b, a)

    def _table_sync(self, asker: int, server: int) -> None:
        """``asker`` asks ``server`` for its table, through ``PeerTable.answer``: legacy, a full page each time;
        new, from the cursor the server gave it last time (``TableRequest``)."""
        peer = self.peers[asker]
        key = (server, self.peers[server].session)
        last = None if self.legacy else peer.cursors.get(key)
        request = TableRequest() if last is None else TableRequest(epoch=last.epoch, since=last.cursor)
        now = self.engine.now
        # Every server's table is the same table: within one second (ANSWER_REUSE_S) one answer serves every
        # asker with the same cursor; a full page costs a sort of the table.
        memo = (math.floor(now / ANSWER_REUSE_S), request.epoch, request.since)
        found = self._answers.get(memo)
        if found is None:
            if self._answers and next(iter(self._answers))[0] != memo[0]:
                self._answers.clear()
            answer = self.mesh_table.answer(b"", EPOCH + now, request)
            found = self._answers[memo] = (answer, sum(len(w) for w in answer.ads))
        answer, size = found
        if not self.legacy:
            peer.cursors[key] = answer.cursor
        served = len(answer.ads)  # the page and the server's own ad (the b"" placeholder here)
        down = size + len(self.peers[server].ad_wire) + (served + 1) * HEADER_SIZE + TABLE_REQUEST_BYTES
        self.meter.stream(asker, server, TABLES, up=TABLE_REQUEST_BYTES + HEADER_SIZE, down=down)
        ms = self.meter.ms
        self.meter.charge(asker, TABLES, served * ms["ad_check"])
        self.meter.charge(server, TABLES, (served - 1) * ms["table_answer_ad"])
        self.counters["table_syncs"] += 1

    def _newest_arrived(
        self, p: SimPeer, to: SimPeer, row, now: float, after_seq: int = 0, *, held_since_join: bool = False
    ) -> tuple[CapabilityAd, float] | None:
        """The newest ad of ``p`` newer than ``after_seq`` that has reached ``to`` by ``now``, and its arrival.

        An ad arrives at its publication plus the gossip delay between the two
        (``row``: from ``to`` to every peer now; the overlay is undirected); a
        provider that left uses the delays from when it left. One published
        before ``to`` came online, or across a partition, never arrives by
        gossip; with ``held_since_join`` (``to`` serving its table) it does: ``to``
        took its neighbours' tables when it joined, and ads now live for hours."""
        for published, ad, sides in reversed(p.ads):
            if ad.seq <= after_seq or (published < to.online_since and not held_since_join):
                return None
            if sides is not None and sides[p.idx] != sides[to.idx]:
                continue
            # ``item``: a Python float, not a numpy scalar, whose arithmetic in the table costs a third more.
            delay = row.item(p.idx) if p.online else p.last_row.item(to.idx)
            arrival = max(published + delay, min(to.online_since, now))
            if arrival <= now:
                return ad, arrival
        return None

    def _maybe_news(self, consumer: SimPeer, model: str) -> list[SimPeer]:
        """The providers of ``model`` that may hold an ad newer than the consumer applied, in index order
        (as ``providers_of``, so its table takes the ads in the same order): all of them at its first
        catch-up; then only those that published since its last, or whose newest ad was on its way then."""
        last = consumer.caught_up.get(model)
        if last is None:
            return self.providers_of[model]
        since, waiting = last
        return [self.peers[i] for i in sorted(waiting.union(self.published[model][since:]))]

    def _catch_up(self, consumer: SimPeer, model: str) -> None:
        """Apply to the consumer's table the newest ad of each provider that has reached it."""
        now = self.engine.now
        applied = consumer.applied_seq
        row = None
        waiting = set()
        table = consumer.table
        for p in self._maybe_news(consumer, model):
            if not p.ads:
                continue
            newest = p.ads[-1][1].seq
            after = applied.get(p.idx, 0)
            if newest <= after:
                continue  # nothing newer than what it applied (seqs grow along ``p.ads``)
            if row is None:  # a Dijkstra, and the overlay changes often: only when something is new
                row = self.topo.gossip_delay(consumer.idx)
            found = self._newest_arrived(p, consumer, row, now, after)
            if found is None:
                waiting.add(p.idx)
                continue
            ad, arrival = found
            applied[p.idx] = ad.seq
            if ad.seq < newest:
                waiting.add(p.idx)  # an older ad arrived; the newest is on its way
            try:
                table.apply(ad, EPOCH + arrival)
            except AdRejected:
                pass
        consumer.caught_up[model] = (len(self.published[model]), waiting)
        consumer.table.expire(EPOCH + now)

    # == requests ================================================================================

    def _rate_per_consumer(self) -> float:
        return self.scenario.load.requests_per_consumer_hour / 3600

    def _arrival(self) -> None:
        now = self.engine.now
        if now >= self.scenario.sim.duration_s:
            return
        rate = self._rate_per_consumer() * len(self.online_consumers) * rate_factor(self.scenario, now)
        if self.online_consumers and self._request_rng.random() < rate / self._lam_max:
            consumer = self.peers[self._request_rng.choice(self.online_consumers)]
            self._start(consumer)
        self.engine.after(self._request_rng.expovariate(self._lam_max), self._arrival)

    def _start(self, consumer: SimPeer) -> None:
        now = self.engine.now
        ask = draw_ask(self._ask_rng, self.scenario)
        self._next_request_id += 1
        rid = self._next_request_id
        conversation = self._conversations.turn(consumer.peer_id, f"sim-{rid}", ask.model)
        if conversation is not None:
            ask = replace(ask, model=conversation.model)
        record = RequestRecord(rid, consumer.peer_id, ask.model, now, ask.max_tokens, ask.stream)
        self.obs.requests.append(record)
        request_id = f"sim-{rid}"
        body = {
            "model": ask.model,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": ask.max_tokens,
            "stream": ask.stream,
        }
        # What the consumer's endpoint does (gateway/app.py): plan failover, then drive the policy.
        sending = plan(CHAT, body, None if self.scenario.load.failover else "off")
        head = RequestHead(request_id=request_id, path=CHAT, body=sending.body, timeout=self.scenario.load.timeout_s)
        policy = RequestPolicy(
            head,
            ask.model,
            now,
            transcript=Transcript(CHAT, sending) if sending.failover else None,
            client_stream=ask.stream,
            prompt_tokens=ask.prompt_tokens,
            first_bytes=consumer.first_bytes,
        )
        flight = Flight(record, consumer.idx, request_id, ask.prompt_tokens, policy)
        if conversation is not None:
            flight.affinity = conversation_affinity(conversation.model, conversation.id)
            flight.conversation = conversation
        consumer.in_flight += 1
        self._drive(flight)

    def _drive(self, flight: Flight) -> None:
        """Execute the policy's commands, then wake for its timer (gateway/answer.py, simulated)."""
        policy = flight.policy
        consumer = self.peers[flight.consumer]
        while commands := policy.commands():
            for command in commands:
                if isinstance(command, Route):
                    self._route(flight, command)
                elif isinstance(command, Open):
                    self._attempt(flight, command)
                elif isinstance(command, Close):
                    self._note(flight, flight.why or "closed")
                    self._stop_attempt(flight)
                elif isinstance(command, Ban):
                    consumer.router.failed(command.provider, EPOCH + self.engine.now)
                    if command.disconnect:
                        consumer.conns.pop(self.by_id[command.provider].idx, None)
                elif isinstance(command, Answering):
                    consumer.router.succeeded(command.provider)
                    consumer.router.served(flight.affinity, command.provider, EPOCH + self.engine.now)
                    if command.first and flight.conversation is not None:
                        self._turn_answered(flight.conversation, command.provider)
                elif isinstance(command, Delivered):
                    at = EPOCH + self.engine.now
                    entry = consumer.table.get(command.provider, at)
                    ad = entry.ad if entry is not None else None
                    consumer.router.delivered(ad, flight.record.model, command.delivery, at)
                elif isinstance(command, Finish):
                    self._finish(flight, command)
        self._arm_timer(flight)

    def _arm_timer(self, flight: Flight) -> None:
        """Wake at the policy's timer; one wake pending at a time (an early one re-arms)."""
        at = flight.policy.get_timer()
        if at is None or (flight.timer_at is not None and flight.timer_at <= at):
            return
        flight.timer_token += 1
        flight.timer_at = at
        self.engine.at(at, self._wake, flight, flight.timer_token)

    def _wake(self, flight: Flight, token: int) -> None:
        if flight.done or token != flight.timer_token:
            return
        flight.timer_at = None
        now = self.engine.now
        self._feed(flight, now)
        if now >= flight.policy.end:
            flight.why = "the request's deadline"
        else:
            flight.why = "first-byte deadline" if flight.fed < 0 and flight.streamed else "stall deadline"
        flight.policy.handle_timer(now)
        self._drive(flight)

    def _route(self, flight: Flight, command: Route) -> None:
        consumer = self.peers[flight.consumer]
        now = self.engine.now
        model = flight.record.model
        self._catch_up(consumer, model)
        tokens = command.expected_tokens or flight.record.max_tokens
        request = RouteRequest(model, expected_tokens=tokens, affinity=flight.affinity)
        ads = consumer.router.shortlist(consumer.table, request, EPOCH + now)
        if not ads and not flight.looked_up and not consumer.table.serving(model):
            # Nobody known: ask the DHT once (dispatch.py), then fetch the found peers' ads.
            flight.looked_up = True
            self.counters["dht_lookups"] += 1
            self.engine.after(cal.DHT_LOOKUP_S, self._looked_up, flight, command)
            return
        # Only providers we hold a connection to have a measured path; the rest are unknown (PathInfo()).
        paths = {ad.peer_id: self._path(consumer, self.by_id[ad.peer_id].idx) for ad in ads}
        candidates = consumer.router.choose(ads, request, paths, EPOCH + now)
        known = [] if candidates else ads or [e.ad for e in consumer.table.providers(model, EPOCH + now)]
        flight.policy.routed(candidates, known, request, now)

    def _turn_answered(self, conversation: Conversation, provider: str) -> None:
        """Count the later turns of conversations and those answered where the previous one was
        (cache-aware routing keeps them there while the provider is within its load bound)."""
        if conversation.last is not None:
            self.counters["conversation_turns"] = self.counters.get("conversation_turns", 0) + 1
            kept = self.counters.get("conversation_turns_kept", 0)
            self.counters["conversation_turns_kept"] = kept + (provider == conversation.last)
        conversation.last = provider

    def _looked_up(self, flight: Flight, command: Route) -> None:
        if flight.done:
            return
        consumer = self.peers[flight.consumer]
        now = self.engine.now
        found = [
            p
            for p in self.providers_of[flight.record.model]
            if p.online and not p.draining and p.ads and self.topo.same_side(p.idx, consumer.idx)
        ]
        for p in sorted(found, key=lambda p: p.peer_id)[:5]:
            ad = p.ads[-1][1]
            if ad.seq > consumer.applied_seq.get(p.idx, 0):
                consumer.applied_seq[p.idx] = ad.seq
                try:
                    consumer.table.apply(ad, EPOCH + now)
                except AdRejected:
                    pass
        self._route(flight, command)
        self._drive(flight)

    def _path(self, consumer: SimPeer, p: int) -> PathInfo:
        conn = consumer.conns.get(p)
        if conn is None or conn.dead:
            return PathInfo()
        relayed = conn.kind_at(self.engine.now) == "relayed"
        return PathInfo(rtt=self._rtt_over(consumer.idx, p, conn), relayed=relayed)

    def _rtt_over(self, c: int, p: int, conn: Conn) -> float:
        if conn.kind_at(self.engine.now) == "relayed" and conn.relay is not None:
            return self.topo.rtt(c, conn.relay) + self.topo.rtt(conn.relay, p)
        return self.topo.rtt(c, p)

    def _attempt(self, flight: Flight, command: Open) -> None:
        """Open the attempt's stream: over the connection held, or a new one (``Dispatcher.open``)."""
        now = self.engine.now
        consumer = self.peers[flight.consumer]
        provider = self.by_id[command.provider]
        p_idx = provider.idx
        flight.attempt = command.attempt
        flight.provider = p_idx
        flight.conn = None
        flight.key = 0
        flight.first_byte = None
        flight.fed = -1
        flight.silent_from = None
        flight.request_id = command.head.request_id
        flight.head = head_frame(command.head)
        flight.path = command.head.path
        flight.prompt_len, flight.tokens, flight.streamed = attempt_shape(command.head, flight.prompt_tokens)
        flight.record.attempts += 1
        flight.record.provider = provider.peer_id
        flight.why, flight.noted = "", False
        flight.record.tried.append(f"p{p_idx} {self._state_of(provider)}")
        conn = consumer.conns.get(p_idx)
        if conn is not None and (conn.dead or conn.session != provider.session or not provider.online):
            if provider.online and conn.session != provider.session:
                # A restarted provider answers the old connection with a reset: dial again at once.
                consumer.conns.pop(p_idx, None)
                self.counters["reset_retries"] += 1
                conn = None
            else:
                # The far end vanished silently: the HEAD goes out and nothing ever comes back
                # (the first-byte deadline ends the wait).
                conn.dead = True
                self.counters["silent_hangs"] += 1
                self._opened(flight, provider, conn)
                conn.hung.append((flight, flight.attempt))
                return
        if conn is None:
            conn = self._dial(consumer, provider)
            if conn is None:
                return self._dial_failed(flight, provider)
            consumer.conns[p_idx] = conn
            self._connected(consumer.idx, p_idx)
        self._opened(flight, provider, conn)
        conn.active.add(flight.record.id)
        send_at = max(now, conn.ready) + self._one_way_over(consumer.idx, p_idx, conn, max(now, conn.ready))
        self.engine.at(send_at, self._at_provider, flight, flight.attempt, provider, conn)

    def _opened(self, flight: Flight, provider: SimPeer, conn: Conn) -> None:
        self.peers[flight.consumer].router.started(provider.peer_id)
        flight.outstanding = provider.peer_id
        flight.conn = conn
        # When the relay will cut the connection, as ``Mesh.relay_deadline`` says (None: direct).
        relay_deadline = conn.expires if conn.kind_at(self.engine.now) == "relayed" else None
        flight.policy.opened(flight.attempt, self.engine.now, relay_deadline)

    @staticmethod
    def _relay_of(conn: Conn | None, at: float) -> int | None:
        """The relay carrying ``conn`` at ``at``, if relayed."""
        return conn.relay if conn is not None and conn.kind_at(at) == "relayed" else None

    def _one_way_over(self, c: int, p: int, conn: Conn, at: float) -> float:
        if conn.kind_at(at) == "relayed" and conn.relay is not None:
            return self.topo.one_way(c, conn.relay) + self.topo.one_way(conn.relay, p)
        return self.topo.one_way(c, p)

    def _dial(self, consumer: SimPeer, provider: SimPeer) -> Conn | None:
        """A new connection, or None if the provider cannot be reached now."""
        now = self.engine.now
        topo = self.topo
        c, p = consumer.idx, provider.idx
        if not provider.online or not topo.same_side(c, p):
            return None
        handshake = cal.HANDSHAKE_MS / 1000
        if topo.places[p].nat == PUBLIC or topo.loopback:
            self.counters["dials_direct"] += 1
            return Conn("direct", now + cal.HANDSHAKE_RTTS * topo.rtt(c, p) + handshake, provider.session)
        relays = [r for r in provider.relays if self.peers[r].online and topo.same_side(c, r)]
        if not relays:
            return None
        relay = consumer.rng.choice(relays)
        ready = (
            now + cal.HANDSHAKE_RTTS * topo.rtt(c, relay) + topo.rtt(relay, p) + cal.RELAY_DIAL_MS / 1000 + handshake
        )
        conn = Conn("relayed", ready, provider.session, relay=relay, expires=ready + cal.RELAY_CONNECTION_LIMIT_S)
        self.counters["dials_relayed"] += 1
        self.engine.at(conn.expires, self._relay_limit, consumer, p, conn)
        c_nat = topo.places[c].nat
        p_nat = topo.places[p].nat
        # DCUtR: a public consumer is dialled back; two cone NATs punch, and it works often.
        if c_nat == PUBLIC or (
            c_nat == CONE and p_nat == CONE and consumer.rng.random() < self.scenario.network.punch_success
        ):
            conn.direct_at = ready + consumer.rng.uniform(*cal.PUNCH_S)
            self.counters["punches"] += 1
        return conn

    def _relay_limit(self, consumer: SimPeer, p_idx: int, conn: Conn) -> None:
        """The relay's per-connection time limit: it cuts the connection, streams and all."""
        if not conn.closed and conn.kind_at(self.engine.now) == "relayed":
            self.counters["relay_time_cuts"] += 1
            self._break(consumer, p_idx, conn, "the relay's time limit")

    def _dial_failed(self, flight: Flight, provider: SimPeer) -> None:
        consumer = self.peers[flight.consumer]
        now = self.engine.now
        self.counters["dial_failures"] += 1
        if provider.online and provider.relays and not any(self.peers[r].online for r in provider.relays):
            # Every relay its ad names vanished (it has not noticed yet): the dials time out.
            delay = min(cal.DIAL_TIMEOUT_S, max(0.0, flight.policy.end - now))
            why = "its relays are gone: dial timeout"
        elif provider.online:
            # Refused (a partition with resets) or no relay to carry it: quick.
            delay = self.topo.rtt(consumer.idx, provider.idx) + cal.RELAY_DIAL_MS / 1000
            why = "dial refused" if not self.topo.same_side(consumer.idx, provider.idx) else "no relay to reach it"
        elif self.topo.places[provider.idx].nat != PUBLIC and any(self.peers[r].online for r in provider.relays):
            delay = (
                self.topo.rtt(consumer.idx, provider.relays[0]) + cal.RELAY_DIAL_MS / 1000
            )  # the relay: no reservation
            why = "its relay holds no reservation"
        else:
            delay = min(cal.DIAL_TIMEOUT_S, max(0.0, flight.policy.end - now))  # a host that is gone: time out
            why = "dial timeout"
        self._note(flight, why)
        self.engine.after(delay, self._open_failed, flight, flight.attempt)

    def _open_failed(self, flight: Flight, attempt: int) -> None:
        if flight.done:
            return
        flight.policy.open_failed(attempt, "no connection", self.engine.now)
        self._drive(flight)

    # -- the provider's side -----------------------------------------------------------------

    def _at_provider(self, flight: Flight, attempt: int, provider: SimPeer, conn: Conn) -> None:
        if flight.done or flight.attempt != attempt:
            return
        now = self.engine.now
        if conn.closed:
            return self._cut(flight, "the connection closed")
        if not provider.online or provider.session != conn.session:
            conn.dead = True
            conn.active.discard(flight.record.id)
            conn.hung.append((flight, attempt))
            self.counters["silent_hangs"] += 1
            return  # nobody there: the first-byte deadline ends the wait
        reader = RequestReader()
        head = reader.feed(flight.head)
        assert head is not None and head.request_id == flight.request_id
        relay = self._relay_of(conn, now)
        self.meter.stream(flight.consumer, provider.idx, REQUESTS, up=len(flight.head), down=0, relay=relay)
        if provider.draining:
            return self._refused(flight, provider, conn, DRAINING)
        # The provider's admission (``ProviderService._admit``): a slot, a place in line, or a 429.
        assert provider.admission is not None
        self._next_key += 1
        flight.key = self._next_key
        flight.arrived = now
        decision = provider.admission.request(self.peers[flight.consumer].peer_id, flight.key, now)
        if decision.outcome is Outcome.REFUSE:
            retry = max(1.0, decision.verdict.retry_after)
            return self._refused(flight, provider, conn, BUSY.model_copy(update={"retry_after": retry}))
        if decision.outcome is Outcome.WAIT:
            provider.waiting[flight.key] = flight
            self.engine.after(cal.QUEUE_WAIT_S, self._queue_timeout, flight, provider, flight.key)
            return
        self._admitted(flight, provider)

    def _admitted(self, flight: Flight, provider: SimPeer) -> None:
        """A slot is the attempt's: its tokens go on the GPU."""
        now = self.engine.now
        conn = flight.conn
        assert conn is not None
        flight.mark = provider.meter.begin(now)
        provider.flights[flight.key] = flight
        scale = 8.0 / provider.gpu.params_b
        ttft = provider.kind.ttft_ms / 1000 / scale * max(1.0, provider.gpu.running / 4)
        # Prefill counts as work at the single-stream rate: the stream's first token comes after it.
        provider.gpu.start(now, flight.tokens + ttft * provider.gpu.rate(1), flight.key)
        flight.first_byte = now + ttft
        flight.back = self._one_way_over(flight.consumer, provider.idx, conn, now) + cal.MESH_OVERHEAD_MS / 1000
        self._schedule_gpu(provider)
        self._ad_changed(provider)

    def _queue_timeout(self, flight: Flight, provider: SimPeer, key: int) -> None:
        """QUEUE_WAIT in line without a slot: the consumer would rather try another provider."""
        if provider.waiting.get(key) is not flight:
            return
        del provider.waiting[key]
        assert provider.admission is not None and flight.conn is not None
        provider.admission.cancel(key)
        self._refused(flight, provider, flight.conn, BUSY)

    def _release(self, provider: SimPeer, party: str, tokens: int) -> None:
        """A slot of ``party`` frees: start whoever the line says is next."""
        assert provider.admission is not None
        for ticket in provider.admission.release(party, tokens, self.engine.now):
            waiting = provider.waiting.pop(ticket, None)
            if waiting is not None:  # (a batch line never waits)
                self._admitted(waiting, provider)

    def _refused(self, flight: Flight, provider: SimPeer, conn: Conn, info: ErrorInfo) -> None:
        conn.active.discard(flight.record.id)
        flight.key = 0
        if info.status == 429:
            # A busy reply carries the provider's live load for the consumer's router (``ProviderService``).
            info = info.model_copy(update={"load": self._live_load(provider)})
        self.meter.frames(provider.idx, flight.consumer, REQUESTS, 1, 200, self._relay_of(conn, self.engine.now))
        back = self._one_way_over(flight.consumer, provider.idx, conn, self.engine.now)
        self.engine.after(back, self._deliver, flight, flight.attempt, ResponseFailed(info))

    def _deliver(self, flight: Flight, attempt: int, event: ResponseFailed) -> None:
        if flight.done or flight.attempt != attempt:
            return
        self._note(flight, str(event.info.error.code))
        provider = self.peers[flight.provider] if flight.provider is not None else None
        if event.info.load is not None and provider is not None:
            consumer = self.peers[flight.consumer]
            consumer.router.observe(provider.peer_id, flight.record.model, event.info.load, EPOCH + self.engine.now)
        flight.policy.received(attempt, event, self.engine.now)
        self._drive(flight)

    def _schedule_gpu(self, provider: SimPeer) -> None:
        when = provider.gpu.next_completion(self.engine.now)
        if when is not None:
            self.engine.at(when, self._gpu_tick, provider, provider.gpu.version)

    def _gpu_tick(self, provider: SimPeer, version: int) -> None:
        if provider.gpu.version != version:
            return
        provider.gpu.finish_due(self.engine.now, lambda key: self._served(provider, key))
        self._schedule_gpu(provider)

    def start_batch_line(self, provider: SimPeer, tokens: int, token: object) -> None:
        """A batch line starts on the provider's GPU, beside interactive requests."""
        now = self.engine.now
        self._next_key += 1
        key = self._next_key
        scale = 8.0 / provider.gpu.params_b
        ttft = provider.kind.ttft_ms / 1000 / scale
        # A job line takes a slot as the peer's own request (``ProviderService`` party LOCAL): the
        # jobs model starts one only when there is room.
        assert provider.admission is not None
        provider.admission.request(LOCAL_PARTY, key, now, contributor=True)
        provider.batch[key] = (token, now, provider.meter.begin(now), tokens)
        provider.gpu.start(now, tokens + ttft * provider.gpu.rate(1), key)
        self._schedule_gpu(provider)
        self._ad_changed(provider)

    def batch_receipt(
        self,
        provider: SimPeer,
        session: int,
        submitter: SimPeer,
        request_id: str,
        model: str,
        tokens: int,
        started: float,
        gpu_s: float,
    ) -> None:
        """A batch line's receipt: signed by the provider, counter-signed by the submitter, then logged."""
        now = self.engine.now
        receipt = Receipt(
            request_id=request_id,
            consumer=submitter.peer_id,
            provider=provider.peer_id,
            model=model,
            prompt_tokens=0,
            completion_tokens=tokens,
            gpus=1,
            gpu_us=gpu_us_of(gpu_s),
            start_ms=int((EPOCH + started) * 1000),
            end_ms=int((EPOCH + now) * 1000),
        )
        raw = encode_receipt(receipt)
        checked, raw, _ = unpack_signed(pack_signed(raw, sign_receipt(provider.identity, raw)))
        cosig = cosign_receipt(submitter.identity, raw)
        self.engine.after(
            self.topo.one_way(provider.idx, submitter.idx), self._cosigned, provider, session, checked, raw, cosig
        )

    def _served(self, provider: SimPeer, key: int) -> None:
        now = self.engine.now
        if key in provider.batch:
            token, started, mark, tokens = provider.batch.pop(key)
            self._release(provider, LOCAL_PARTY, tokens)
            provider.record.tokens += tokens
            self.jobs.line_done(provider, token, tokens, started, provider.meter.end(mark, now))
            self._ad_changed(provider)
            self._maybe_drained(provider)
            return
        flight = provider.flights.pop(key)
        flight.key = 0
        gpu_s = provider.meter.end(flight.mark, now)
        consumer = self.peers[flight.consumer]
        self._release(provider, consumer.peer_id, flight.prompt_len + flight.tokens)
        receipt = Receipt(
            request_id=flight.request_id,
            consumer=consumer.peer_id,
            provider=provider.peer_id,
            model=provider.model,
            prompt_tokens=flight.prompt_len,
            completion_tokens=flight.tokens,
            gpus=1,
            gpu_us=gpu_us_of(gpu_s),
            start_ms=int((EPOCH + flight.arrived) * 1000),
            end_ms=int((EPOCH + now) * 1000),
        )
        raw = encode_receipt(receipt)
        first_byte = flight.first_byte if flight.first_byte is not None else now
        info = EndInfo(
            usage=Usage(prompt_tokens=flight.prompt_len, completion_tokens=flight.tokens),
            timings=Timings(first_byte_ms=(first_byte - flight.arrived) * 1000, total_ms=(now - flight.arrived) * 1000),
            receipt=pack_signed(raw, sign_receipt(provider.identity, raw)),
            load=self._live_load(provider),
        )
        conn = flight.conn
        end = end_frame(info)
        frames = flight.tokens + 1 if flight.streamed else 2
        body = flight.tokens * (TOKEN_CHUNK_BYTES if flight.streamed else JSON_TOKEN_BYTES) + len(end)
        self.meter.frames(provider.idx, flight.consumer, REQUESTS, frames, body, self._relay_of(conn, now))
        self.meter.charge(provider.idx, REQUESTS, self.meter.ms["receipt"] / 2)
        provider.record.tokens += flight.tokens
        back = self._one_way_over(flight.consumer, provider.idx, conn, now) + cal.MESH_OVERHEAD_MS / 1000
        self.engine.after(back, self._at_consumer, flight, flight.attempt, provider, end)
        self._ad_changed(provider)
        self._maybe_drained(provider)

    def _feed(self, flight: Flight, now: float) -> None:
        """The attempt's stream as the consumer read it up to ``now``: its first chunk, then what
        the provider generated, every STREAM_TICK_S (read when the consumer looks: at its timer, a
        cut, the END), the last token held for the END's chunk. Nothing the provider sent after it
        went silent arrives."""
        if flight.first_byte is None or not flight.streamed or flight.provider is None or flight.done:
            return
        start = flight.first_byte + flight.back
        until = now if flight.silent_from is None else min(now, flight.silent_from + flight.back)
        provider = self.peers[flight.provider]
        rate = provider.gpu.rate(max(1, provider.gpu.running))
        at = start if flight.fed < 0 else flight.fed_at + cal.STREAM_TICK_S
        attempt = flight.attempt
        for _ in range(MAX_TICKS):
            if at > until or flight.done or flight.attempt != attempt:
                return
            if flight.fed < 0:
                data = first_chunk(flight.path, flight.prompt_len)
                flight.fed = 0
                if flight.record.stream and flight.record.first_byte is None:
                    flight.record.first_byte = at
            else:
                generated = min(flight.tokens - 1, int((at - start) * rate))
                if generated <= flight.fed:
                    at += cal.STREAM_TICK_S
                    continue
                data = token_chunk(flight.path, generated - flight.fed)
                flight.fed = generated
            flight.fed_at = at
            flight.policy.received(attempt, ResponseData(data), at)
            at += cal.STREAM_TICK_S

    def _at_consumer(self, flight: Flight, attempt: int, provider: SimPeer, data: bytes) -> None:
        if flight.done or flight.attempt != attempt:
            return
        now = self.engine.now
        consumer = self.peers[flight.consumer]
        if flight.conn is not None:
            flight.conn.active.discard(flight.record.id)
        self._feed(flight, now)
        if flight.done or flight.attempt != attempt:
            return
        [event] = ResponseReader().feed(data)
        assert isinstance(event, ResponseEnd)
        receipt, raw, _ = unpack_signed(event.info.receipt)
        problem = expected_receipt_problem(
            receipt,
            consumer=consumer.peer_id,
            provider=provider.peer_id,
            request_id=flight.request_id,
            model=flight.record.model,
        )
        assert problem is None, problem
        if event.info.load is not None:
            consumer.router.observe(provider.peer_id, flight.record.model, event.info.load, EPOCH + now)
        if not flight.streamed:
            body = b'{"object":"chat.completion"}'  # the provider's whole body, passed through
        else:
            rest = last_chunks(flight.path, flight.tokens - max(0, flight.fed), flight.prompt_len, flight.tokens)
            body = (first_chunk(flight.path, flight.prompt_len) if flight.fed < 0 else b"") + rest
        self._note(flight, "answered")
        flight.policy.received(attempt, ResponseData(body), now)
        flight.policy.received(attempt, event, now)
        provider.record.requests += 1
        self._drive(flight)
        cosig = cosign_receipt(consumer.identity, raw)
        self.meter.charge(consumer.idx, REQUESTS, self.meter.ms["receipt"] / 2)
        self.meter.frames(
            consumer.idx, provider.idx, REQUESTS, 1, len(cosig), self._relay_of(flight.conn, self.engine.now)
        )
        back = self._one_way_over(flight.consumer, provider.idx, flight.conn, self.engine.now)
        self.engine.after(back, self._cosigned, provider, provider.session, receipt, raw, cosig)

    def _cosigned(self, provider: SimPeer, session: int, receipt: Receipt, raw: bytes, cosig: bytes) -> None:
        if not provider.online or provider.session != session:
            return  # it left before the COSIGN arrived: no entry (the daemon counts a refusal)
        check_cosignature(receipt, raw, cosig)
        provider.log_seq += 1
        entry = make_entry(provider.identity, provider.log_seq, provider.log_prev, raw, cosig)
        provider.log_prev = entry.hash
        provider.state.add(entry)
        self.ledger.on_entry(provider, entry)

    # -- endings ---------------------------------------------------------------------------------

    def _finish(self, flight: Flight, finish: Finish) -> None:
        if flight.done:
            return
        self._stop_attempt(flight)
        flight.done = True
        consumer = self.peers[flight.consumer]
        consumer.in_flight -= 1
        now = self.engine.now
        record = flight.record
        record.ended = now
        record.failovers = flight.policy.failovers
        if finish.error is None:
            record.status, record.code = 200, None
            usage = flight.policy.usage
            record.tokens = usage.completion_tokens if usage is not None else record.max_tokens
            record.path = flight.conn.kind_at(now) if flight.conn else None
            if record.first_byte is None:
                record.first_byte = now
        else:
            record.status, record.code = finish.error.status, finish.error.error.code
            record.reachable, record.routable = self._reachability(consumer, record.model)

    def _state_of(self, provider: SimPeer) -> str:
        """A provider's state as the simulator knows it (the consumer does not): for the failure breakdown."""
        if not provider.online:
            return "vanished"
        path = "public" if self.topo.places[provider.idx].nat == PUBLIC else f"{len(provider.relays)} relays"
        return f"draining {path}" if provider.draining else f"online {path}"

    def _note(self, flight: Flight, outcome: str) -> None:
        """How the current attempt ended, once (the failure breakdown's ``tried``)."""
        if not flight.noted and flight.record.tried:
            flight.record.tried[-1] += f": {outcome}"
            flight.noted = True

    def _reachable(self, consumer: SimPeer, provider: SimPeer) -> bool:
        """Whether ``consumer`` could reach ``provider`` now and be served (the simulator's truth)."""
        if not provider.online or provider.draining or not self.topo.same_side(consumer.idx, provider.idx):
            return False
        if self.topo.places[provider.idx].nat == PUBLIC or self.topo.loopback:
            return True
        conn = consumer.conns.get(provider.idx)
        if conn is not None and not conn.dead and not conn.closed and conn.session == provider.session:
            return True
        return any(self.peers[r].online and self.topo.same_side(consumer.idx, r) for r in provider.relays)

    def _reachability(self, consumer: SimPeer, model: str) -> tuple[int, int]:
        """Providers of ``model`` the consumer could reach now, and of those the ones its table holds
        and its router has not banned."""
        now = EPOCH + self.engine.now
        reachable = [p for p in self.providers_of[model] if self._reachable(consumer, p)]
        routable = sum(
            1
            for p in reachable
            if consumer.table.get(p.peer_id, now) is not None and consumer.router.banned_until(p.peer_id) <= now
        )
        return len(reachable), routable

    def _stop_attempt(self, flight: Flight) -> None:
        """The policy closed the attempt (or the request ended): stop it and stop counting it."""
        self._stop_at_provider(flight)
        flight.first_byte = None  # nothing more of it is read (a wake before the next attempt feeds nothing)
        if flight.outstanding is not None:
            self.peers[flight.consumer].router.finished(flight.outstanding)
            flight.outstanding = None

    def _stop_at_provider(self, flight: Flight) -> None:
        """The stream is gone: the provider stops generating for it (or drops it from its line),
        and the connection forgets it."""
        if flight.provider is not None and flight.key:
            provider = self.peers[flight.provider]
            consumer = self.peers[flight.consumer].peer_id
            if provider.flights.get(flight.key) is flight:
                provider.flights.pop(flight.key)
                provider.meter.end(flight.mark, self.engine.now)
                provider.gpu.drop(self.engine.now, {flight.key})
                self._release(provider, consumer, flight.prompt_len + max(0, flight.fed))
                self._schedule_gpu(provider)
                self._maybe_drained(provider)
            elif provider.waiting.get(flight.key) is flight:
                del provider.waiting[flight.key]
                assert provider.admission is not None
                provider.admission.cancel(flight.key)
            flight.key = 0
        if flight.conn is not None:
            flight.conn.active.discard(flight.record.id)

    def _cut(self, flight: Flight, why: str) -> None:
        """The stream broke under the request (relay gone, reset, provider shut down): the consumer
        reads what arrived before, then the cut (core/request_policy.py decides what follows)."""
        if flight.done:
            return
        now = self.engine.now
        attempt = flight.attempt
        self._feed(flight, now)
        if flight.done or flight.attempt != attempt:
            return
        self._stop_at_provider(flight)
        self._note(flight, f"cut after {max(0, flight.fed)} tokens: {why}")
        flight.policy.received(attempt, truncated_failure(why), now)
        self._drive(flight)

    def _break(self, consumer: SimPeer, p_idx: int, conn: Conn, why: str) -> None:
        """A connection closes under its requests: those at the provider are cut; those on the way find it closed."""
        if consumer.conns.get(p_idx) is conn:
            consumer.conns.pop(p_idx)
        conn.closed = True
        ids = set(conn.active)
        conn.active.clear()
        provider = self.peers[p_idx]
        running = [*provider.flights.values(), *provider.waiting.values()]
        for flight in sorted((f for f in running if f.record.id in ids), key=lambda f: f.record.id):
            self._cut(flight, why)

    # == scenario events ==========================================================================

    def _event(self, event) -> None:
        now = self.engine.now
        if event.kind == "flash_crowd":
            self.obs.events.append((now, f"flash crowd ×{event.factor:g}"))
        elif event.kind == "job":
            self.jobs.submit(event)
        elif event.kind == "join":
            for _ in range(event.count):
                if self._join_queue:
                    peer = self.peers[self._join_queue.pop(0)]
                    self._come_online(peer)
            self.obs.events.append((now, f"{event.count} provider(s) join"))
        elif event.kind == "partition":
            side = [0 if self.peers[i].city in event.side else 1 for i in range(len(self.peers))]
            online = self.topo.online_peers()
            self.meter.resides(
                np.array(side),
                np.array(online, dtype=np.int64),
                np.array([self.topo.degree(i) for i in online], dtype=np.int64),
            )
            self.topo.partition(side)
            for consumer in self.peers:
                if consumer.role == CONSUMER:
                    for p_idx, conn in sorted(consumer.conns.items()):
                        if side[p_idx] != side[consumer.idx] or (
                            conn.relay is not None and side[conn.relay] != side[consumer.idx]
                        ):
                            self._break(consumer, p_idx, conn, "partition")
            self.obs.events.append((now, f"partition: {'/'.join(event.side)} | rest"))
        elif event.kind == "heal":
            cut = self.topo.heal()
            rng = stream(self.seed, "heal")
            for a, b in cut:
                self.engine.after(rng.uniform(0, cal.RECONNECT_S), self._relink, a, b)
            for p in self.peers:
                if p.role == PROVIDER and p.online and len(p.relays) < cal.RELAY_RESERVATIONS:
                    self._rereserve(p, p.session)
            self.ledger.healed()
            self.obs.events.append((now, "heal"))
        elif event.kind == "relay_loss":
            live = [r for r in self.relays if r.online]
            gone = stream(self.seed, "relay_loss", now).sample(live, round(len(live) * event.share))
            for relay in gone:
                self._leave(relay)
            self.obs.events.append((now, f"{len(gone)} of {len(live)} relays lost"))

    def _relink(self, a: int, b: int) -> None:
        if self.topo.link(a, b):
            pa, pb = self.peers[a], self.peers[b]
            if pa.state is not None and pb.state is not None:
                self.ledger.connected(pa, pb)


def run_world(scenario: Scenario, seed: int) -> Observations:
    """Simulate the scenario with this seed; what it observed."""
    return World(scenario, seed).run()
