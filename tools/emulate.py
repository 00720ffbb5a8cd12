"""Emulation: the scenario's twin run with real peers, to hold the simulator to account.

A developer's instrument, run from a checkout (it starts real daemons, so it lives
beside the other harnesses and not in the simulator, which must not depend on them)::

    .venv/bin/python -m tools.emulate simulations/flash-crowd.toml [--seed S] [--out DIR] [--json]

simulates the scenario as ``garage sim run`` does, then runs its twin here and puts
both side by side in the report.

``run_emulation`` starts ``twin.peers.count`` real garage peers in this process
(``daemon.open_peer`` on 127.0.0.1, daemon defaults apart from the loopback
addresses and mDNS off), gives each provider a StandInBackend that generates
tokens at the speed of the ``stand-in`` GPU kind, sends Poisson-arriving
requests to the consumers' OpenAI endpoints, starts the joining providers at
their time, and fills the same ``Observations`` the simulator fills, so
``metrics.summarize`` can set both side by side.

What it measures, and how:

- requests: the client's view (httpx), timed from the start of the request phase;
- joins: seconds from a provider's start until 99 % of the other running peers
  hold its ad offering its model (their ``PeerTable``, polled every 20 ms);
- ledger: each peer's ``LedgerState`` polled every 100 ms; an entry's lag at a
  replica is its first sighting there minus its first sighting at its author.

Every random draw comes from ``engine.stream(seed, "emulation", ...)``, so the
plan (roles, models, bootstrap tree, arrivals, asks) is the same for a seed;
the timings are real and vary from run to run.

All peers share one trio loop on one core: past about 15 peers on a small
host the loop saturates and the timings become the host's. The counters
``loop_lag_p50_ms``/``loop_lag_p99_ms`` (how late a sleeper wakes) say so, and
a warning is logged. A peer that dies mid-run is recorded (an event, the
``peer_crashes`` counter) and the run goes on without it.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
import typer

from garage_p2p.cli.client import JsonOption
from garage_p2p.cli.sim import simulate_and_report
from garage_p2p.core.capabilities import Benchmark
from garage_p2p.daemon import Peer, open_peer
from garage_p2p.settings import Settings
from garage_p2p.sim.engine import stream
from garage_p2p.sim.hardware import CONCURRENCY, GPUS, STANDIN_DELAYS
from garage_p2p.sim.metrics import JoinRecord, Observations, ProviderRecord, RequestRecord, percentile
from garage_p2p.sim.scenario import TWIN_GPU, Scenario, twin_scenario
from garage_p2p.sim.workload import Ask, draw_ask, peak_factor, rate_factor
from garage_p2p.store.bench_store import save_benchmark
from tools.standin_backend import create_standin_app, serve_standin

MAX_IN_FLIGHT = 200
"""Requests in flight at once; an arrival beyond that is refused (429 ``emulator_overloaded``)."""
READY_TIMEOUT = 60.0
"""Seconds the consumers get to learn of every initial provider before requests start."""
KNOWN_POLL = 0.02
KNOWN_GIVE_UP = 30.0
"""A joined provider not known by 99 % of the peers this long after its start counts as never known."""
KNOWN_SHARE = 0.99
LEDGER_POLL = 0.1
LEDGER_SETTLE = 20.0
"""Seconds after the last request for every replica to receive every entry (then measured as is)."""
LEDGER_QUIET = 3.0
"""Seconds every replica must have held every entry before the ledger counts as settled."""
STOP_TIMEOUT = 20.0
"""Seconds the peers get to stop before they are cancelled."""
LOOP_PROBE = 0.05
LOOP_SATURATED = 0.1
"""A p99 event-loop lag above this many seconds means the host, not the mesh, sets the figures."""
PROMPT = "Tell me something about GPUs in garages."

STANDIN = GPUS[TWIN_GPU]
STANDIN_BENCHMARK = {
    "single_stream_tps": STANDIN.single_tps,
    "aggregate_tps": STANDIN.aggregate_tps,
    "concurrency": CONCURRENCY,
    "ttft_p50_ms": STANDIN.ttft_ms,
}
"""What each provider advertises (``HOME/bench.json``), as ``garage bench`` would have measured."""


@dataclass
class _Node:
    """One real peer of the emulation, planned before any starts."""

    index: int
    """Start order: initial peers first, then the joining providers by join time."""
    home: Path
    model: str | None
    """The model its StandInBackend serves; None for a consumer."""
    bootstrap_to: int | None
    """Index of the earlier peer it bootstraps to (None for peer 0)."""
    join_at: float | None = None
    """Seconds into the request phase it starts at; None: before the phase."""
    peer: Peer | None = None
    started: float | None = None
    """When it was started, seconds from the start of the request phase (negative before it)."""
    addr: list[str] = field(default_factory=list)
    """Its loopback multiaddr (with /p2p/), for the peers that bootstrap to it."""
    crashed: str | None = None
    """Why the peer died during the run, if it did."""
    crashed_at: float | None = None
    stop: trio.Event = field(default_factory=trio.Event)

    @property
    def running(self) -> bool:
        return self.peer is not None and self.crashed is None and not self.stop.is_set()

    @property
    def provider(self) -> bool:
        return self.model is not None

    @property
    def peer_id(self) -> str:
        assert self.peer is not None
        return self.peer.identity.peer_id


def _plan(twin: Scenario, seed: int, root: Path, log: Callable[[str], None]) -> list[_Node]:
    """Roles, models and the bootstrap tree; every draw from the seed."""
    count = twin.peers.count
    providers = min(count - 1, max(2, round(count * twin.peers.provider_share)))
    joins = sorted(e.at_s for e in twin.events if e.kind == "join" for _ in range(e.count))
    if len(joins) > providers - 1:
        # At least one provider must be there from the start, or nothing is served.
        log(f"emulation: {len(joins)} joins but {providers} providers; only the first {providers - 1} join")
        joins = joins[: providers - 1]
    initial = count - len(joins)
    roles = stream(seed, "emulation", "roles")
    initial_providers = set(roles.sample(range(initial), providers - len(joins)))
    models = stream(seed, "emulation", "models")
    names = list(twin.models)
    weights = [twin.models[n].weight for n in names]
    tree = stream(seed, "emulation", "bootstrap")
    nodes: list[_Node] = []
    for i in range(count):
        is_provider = i in initial_providers or i >= initial
        model = models.choices(names, weights=weights)[0] if is_provider else None
        node = _Node(i, root / f"peer-{i:03d}", model, tree.randrange(i) if i else None)
        if i >= initial:
            node.join_at = joins[i - initial]
        if model is not None:
            # The daemon puts HOME/bench.json's figures in its ad, as after `garage bench`.
            save_benchmark(node.home, model, Benchmark(**STANDIN_BENCHMARK, measured_at=time.time()))
        nodes.append(node)
    return nodes


async def _run_node(
    node: _Node, bootstrap: list[str], on_crash: Callable[[_Node], None], *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """One peer (and its StandInBackend) until ``node.stop`` is set; started() gives the Peer.

    A peer that dies once running is recorded (``node.crashed``, ``on_crash``),
    not raised: one peer's failure must not end the others' run.
    """
    async with trio.open_nursery() as nursery:
        backends: dict[str, str] = {}
        if node.model is not None:
            app = create_standin_app(node.model, **STANDIN_DELAYS, max_running=CONCURRENCY)
            bound = await nursery.start(serve_standin, app, "127.0.0.1", 0)
            backends[node.model] = bound[0] + "/v1"
        # Daemon defaults (ad interval, TTLs, concurrency, timeouts) so that the
        # emulation measures the daemon as shipped; only the addresses are
        # loopback, and mDNS is off (it would multicast on the real interface).
        settings = Settings(
            home=node.home,
            listen=["/ip4/127.0.0.1/tcp/0"],
            api="127.0.0.1:0",
            mdns=False,
            bootstrap=bootstrap,
            backends=backends,
        )
        try:
            async with open_peer(settings) as peer:
                node.peer = peer
                node.addr = _loopback_addr(peer)
                task_status.started(peer)
                await node.stop.wait()
        except Exception as exc:  # a group, usually; Cancelled is no Exception
            if node.peer is None:
                raise  # it did not even start: the run cannot go on as planned
            node.crashed = _describe(exc)
            on_crash(node)
        nursery.cancel_scope.cancel()


def _describe(exc: BaseException) -> str:
    """The innermost errors of an exception (group), briefly."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_describe(e) for e in exc.exceptions))
    return f"{type(exc).__name__}: {exc}"[:200]


def _loopback_addr(peer: Peer) -> list[str]:
    return [a for a in peer.mesh.addrs() if "/127.0.0.1/" in a][:1]


def _knows(observer: Peer, peer_id: str, model: str) -> bool:
    """``observer``'s table holds a live ad of ``peer_id`` offering ``model``."""
    entry = observer.table.get(peer_id, time.time())
    return entry is not None and any(m.name == model for m in entry.ad.models)


class _LedgerWatch:
    """First sightings of every ledger entry at every peer, kept cheap.

    A peer's state is walked only when its entry count changed, and then only
    from the first seq of each author not yet seen there.
    """

    def __init__(self, nodes: list[_Node], t0: float) -> None:
        self.nodes = nodes
        self.t0 = t0
        self.authored: dict[bytes, float] = {}
        """Entry hash → when it appeared in its author's own ledger."""
        self.arrived: dict[bytes, dict[int, float]] = {}
        """Entry hash → node index → when it appeared at that replica."""
        self._count: dict[int, int] = {}
        self._next: dict[int, dict[str, int]] = {}
        self._seen: dict[int, set[bytes]] = {}

    def poll(self) -> None:
        now = trio.current_time() - self.t0
        for node in self.nodes:
            if not node.running:
                continue
            state = node.peer.ledger.state
            if len(state) == self._count.get(node.index):
                continue
            self._count[node.index] = len(state)
            me = node.peer_id
            seen = self._seen.setdefault(node.index, set())
            next_seq = self._next.setdefault(node.index, {})
            for author in state.authors():
                first = next_seq.get(author, 1)
                for entry in state.range(author, first, 1_000_000):
                    if entry.hash in seen:
                        continue
                    seen.add(entry.hash)
                    if author == me:
                        self.authored[entry.hash] = now
                    else:
                        self.arrived.setdefault(entry.hash, {})[node.index] = now
                while state.at(author, first):
                    first += 1
                next_seq[author] = first

    def settled(self) -> bool:
        """Every running peer has seen every authored entry."""
        want = len(self.authored)
        return all(len(self._seen.get(n.index, ())) >= want for n in self.nodes if n.running)

    def lags(self, online_only: bool = False) -> list[float]:
        """Arrival at a replica minus appearance at the author, per (entry, replica).

        With ``online_only``, only replicas that were running when the entry
        was written (a provider that joins later catches up on the whole
        history, which is not propagation delay).
        """
        return [
            max(0.0, at - self.authored[h])
            for h, replicas in self.arrived.items()
            if h in self.authored
            for i, at in replicas.items()
            if not online_only or (self.nodes[i].started or 0.0) <= self.authored[h]
        ]

    async def run(self) -> None:
        while True:
            self.poll()
            await trio.sleep(LEDGER_POLL)


def _error_code(data: bytes) -> str | None:
    """``error.code`` of an OpenAI error body, if it is one."""
    try:
        code = json.loads(data)["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return None if code is None else str(code)


def _read_sse(data: bytes) -> tuple[int, str | None]:
    """(tokens, error code or None) of a streamed answer.

    Tokens: ``usage.completion_tokens`` if the stream reports it, else the
    chunks with content. An error event, or no ``[DONE]``, is a failure.
    """
    chunks, usage, done = 0, None, False
    for line in data.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            return chunks, "bad_sse"
        if "error" in event:
            return chunks, _error_code(payload) or "stream_error"
        if event.get("usage"):
            usage = event["usage"].get("completion_tokens")
        for choice in event.get("choices") or ():
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                chunks += 1
    if not done:
        return chunks, "stream_truncated"
    return (usage if isinstance(usage, int) else chunks), None


class _Client:
    """Sends the asks to the consumers' endpoints and records what the client sees."""

    def __init__(self, http: httpx.AsyncClient, t0: float, timeout: float) -> None:
        self.http = http
        self.t0 = t0
        self.timeout = timeout
        self.in_flight = 0

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def send(self, node: _Node, ask: Ask, record: RequestRecord) -> None:
        self.in_flight += 1
        try:
            with trio.move_on_after(self.timeout):
                await self._exchange(node, ask, record)
        except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
            # The endpoint broke the connection: the client sees a gateway failure.
            record.status, record.code = 502, f"client_{type(exc).__name__}"
        finally:
            self.in_flight -= 1
            if record.ended is None:
                # The deadline passed, or the drain cancelled it: the client gave up.
                record.ended = self.now()
                if record.status is None or record.status == 200:
                    record.status, record.code = 504, "client_timeout"

    async def _exchange(self, node: _Node, ask: Ask, record: RequestRecord) -> None:
        body = {
            "model": ask.model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": ask.max_tokens,
            "stream": ask.stream,
        }
        if ask.stream:
            body["stream_options"] = {"include_usage": True}
        assert node.peer is not None
        parts: list[bytes] = []
        async with self.http.stream("POST", node.peer.api_url + "/chat/completions", json=body) as response:
            record.provider = response.headers.get("x-garage-provider")
            async for chunk in response.aiter_bytes():
                if chunk and record.first_byte is None:
                    record.first_byte = self.now()
                parts.append(chunk)
        ended = self.now()
        data = b"".join(parts)
        record.attempts = 1  # the endpoint does not say how many providers it tried
        if response.status_code != 200:
            record.status, record.code = response.status_code, _error_code(data)
        elif ask.stream:
            record.tokens, error = _read_sse(data)
            # A stream that failed after its 200 is a failure all the same.
            record.status, record.code = (200, None) if error is None else (502, error)
        else:
            try:
                record.tokens = int(json.loads(data)["usage"]["completion_tokens"])
                record.status = 200
            except (ValueError, KeyError, TypeError):
                record.status, record.code = 502, "bad_json"
        if record.provider is not None:
            # On loopback every connection is direct; read it anyway, as the mesh sees it.
            record.path = node.peer.paths.connection_kind(record.provider) or "direct"
        record.ended = ended


async def _arrivals(twin: Scenario, seed: int, consumers: list[_Node], client: _Client, obs: Observations) -> None:
    """Poisson arrivals over the run (thinned for rate changes), then the drain."""
    per_consumer = twin.load.requests_per_consumer_hour / 3600
    peak = peak_factor(twin)
    top = len(consumers) * per_consumer * peak
    arrivals = stream(seed, "emulation", "arrivals")
    chooser = stream(seed, "emulation", "consumer")
    asks = stream(seed, "emulation", "asks")
    duration = twin.sim.duration_s
    async with trio.open_nursery() as requests:
        t = 0.0
        while top > 0:
            t += arrivals.expovariate(top)
            if t >= duration:
                break
            if arrivals.random() * peak >= rate_factor(twin, t):
                continue
            node = chooser.choice(consumers)
            ask = draw_ask(asks, twin)
            await trio.sleep_until(client.t0 + t)
            record = RequestRecord(
                id=len(obs.requests),
                consumer=node.peer_id,
                model=ask.model,
                submitted=client.now(),
                max_tokens=ask.max_tokens,
                stream=ask.stream,
            )
            obs.requests.append(record)
            if client.in_flight >= MAX_IN_FLIGHT:
                record.ended, record.status, record.code = record.submitted, 429, "emulator_overloaded"
                continue
            requests.start_soon(client.send, node, ask, record)
        # Requests still running when the drain ends are cut (recorded as client timeouts).
        await trio.sleep_until(client.t0 + duration)
        requests.cancel_scope.deadline = trio.current_time() + min(twin.sim.drain_s, twin.load.timeout_s)


async def _join(
    node: _Node,
    nodes: list[_Node],
    start_peer: Callable[[_Node], Awaitable[None]],
    t0: float,
    obs: Observations,
    log: Callable[[str], None],
) -> None:
    """Start a joining provider at its time and time how fast the mesh learns of it."""
    await trio.sleep_until(t0 + node.join_at)
    started = trio.current_time()
    node.started = started - t0
    await start_peer(node)
    obs.events.append((node.started, f"join: provider {node.peer_id} ({node.model})"))
    known_99 = None
    with trio.move_on_after(KNOWN_GIVE_UP - (trio.current_time() - started)):
        while True:
            others = [n.peer for n in nodes if n is not node and n.running]
            knowing = sum(_knows(p, node.peer_id, node.model) for p in others)
            if knowing >= math.ceil(KNOWN_SHARE * len(others) - 1e-9):
                known_99 = trio.current_time() - started
                break
            await trio.sleep(KNOWN_POLL)
    obs.joins.append(JoinRecord(peer=node.peer_id, at=node.started, known_99=known_99))
    log(
        f"emulation: provider {node.peer_id[-8:]} joined at {node.started:.1f} s; "
        + (
            f"known by 99 % after {known_99:.2f} s"
            if known_99 is not None
            else f"not known by 99 % after {KNOWN_GIVE_UP:.0f} s"
        )
    )


async def _probe_loop(lags: list[float]) -> None:
    """How late the event loop wakes a sleeper.

    Every peer shares this one loop: once it is saturated (about 15-20 peers
    on one core), every delay measured is the host's, not the mesh's.
    """
    while True:
        due = trio.current_time() + LOOP_PROBE
        await trio.sleep_until(due)
        lags.append(trio.current_time() - due)


async def _sample_online(nodes: list[_Node], t0: float, obs: Observations) -> None:
    step, k = obs.sample_s, 0
    while k * step < obs.duration_s:
        await trio.sleep_until(t0 + k * step)
        running = [n for n in nodes if n.running]
        obs.online.append((k * step, sum(n.provider for n in running), sum(not n.provider for n in running)))
        k += 1


async def _emulate(twin: Scenario, seed: int, root: Path, log: Callable[[str], None]) -> Observations:
    wall, cpu = time.monotonic(), time.process_time()
    nodes = _plan(twin, seed, root, log)
    providers = [n for n in nodes if n.provider]
    consumers = [n for n in nodes if not n.provider]
    initial = [n for n in nodes if n.join_at is None]
    obs = Observations(duration_s=twin.sim.duration_s, sample_s=twin.sim.sample_s)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    timeout = twin.load.timeout_s
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as http, trio.open_nursery() as peers:
        t_start = trio.current_time()
        t0 = t_start  # until the request phase starts

        def on_crash(node: _Node) -> None:
            node.crashed_at = when = trio.current_time() - t0
            obs.events.append((when, f"crash: peer {node.peer_id}: {node.crashed}"))
            log(f"emulation: peer {node.peer_id[-8:]} died at {when:.1f} s: {node.crashed}")

        async def start_peer(node: _Node) -> None:
            bootstrap = [] if node.bootstrap_to is None else nodes[node.bootstrap_to].addr
            with trio.fail_after(READY_TIMEOUT):
                await peers.start(_run_node, node, bootstrap, on_crash)

        try:
            for node in initial:
                node.started = trio.current_time()
                await start_peer(node)
            late = len(providers) - sum(n.provider for n in initial)
            log(
                f"emulation: {len(initial)} peers started in {trio.current_time() - t_start:.1f} s "
                f"({len(providers)} providers, {late} of them join later; {len(consumers)} consumers)"
            )
            ready = [(c.peer, p.peer_id, p.model) for c in consumers for p in initial if p.provider]
            with trio.move_on_after(READY_TIMEOUT) as waiting:
                while not all(_knows(*r) for r in ready):
                    await trio.sleep(0.1)
            if waiting.cancelled_caught:
                missing = sum(not _knows(*r) for r in ready)
                log(
                    f"emulation: after {READY_TIMEOUT:.0f} s, {missing} of {len(ready)} (consumer, provider) pairs "
                    "still unknown; starting anyway"
                )
            else:
                log(
                    "emulation: every consumer knows every initial provider "
                    f"after {trio.current_time() - t_start:.1f} s"
                )

            t0 = trio.current_time()
            for node in initial:
                node.started -= t0
            client = _Client(http, t0, timeout)
            ledger = _LedgerWatch(nodes, t0)
            loop_lags: list[float] = []
            async with trio.open_nursery() as monitors:
                monitors.start_soon(ledger.run)
                monitors.start_soon(_probe_loop, loop_lags)
                monitors.start_soon(_sample_online, nodes, t0, obs)
                async with trio.open_nursery() as work:
                    for node in nodes:
                        if node.join_at is not None:
                            work.start_soon(_join, node, nodes, start_peer, t0, obs, log)
                    work.start_soon(_arrivals, twin, seed, consumers, client, obs)
                log(
                    f"emulation: {len(obs.requests)} requests done at {trio.current_time() - t0:.1f} s; letting the "
                    "ledger settle"
                )
                # The last receipts are counter-signed just after their answers, and
                # the heads go out within a second: settled must hold for a while.
                with trio.move_on_after(LEDGER_SETTLE):
                    quiet_since = None
                    while quiet_since is None or trio.current_time() - quiet_since < LEDGER_QUIET:
                        if not ledger.settled():
                            quiet_since = None
                        elif quiet_since is None:
                            quiet_since = trio.current_time()
                        await trio.sleep(LEDGER_POLL)
                ledger.poll()
                monitors.cancel_scope.cancel()
        finally:
            # Stop every peer at once; any still running after STOP_TIMEOUT is cancelled.
            for node in nodes:
                node.stop.set()
            peers.cancel_scope.deadline = trio.current_time() + STOP_TIMEOUT

    obs.joins.sort(key=lambda j: j.at)
    obs.events.sort()
    # As the simulator counts it: replicas that were running when the entry was
    # written (one that joins later catches up on history, which is not lag).
    obs.ledger_lag = sorted(ledger.lags(online_only=True))
    log(f"emulation: ledger lag p50/p99 {_ms(percentile(obs.ledger_lag, 50))}/{_ms(percentile(obs.ledger_lag, 99))}")
    obs.ledger_entries = len(ledger.authored)
    obs.ledger_replicas = len(nodes)
    for node in providers:
        if node.peer is None:
            continue
        pid = node.peer_id
        served = [r for r in obs.requests if r.ok and r.provider == pid]
        obs.providers.append(
            ProviderRecord(
                peer=pid,
                gpu=TWIN_GPU,
                capacity_tps=STANDIN.aggregate_tps,
                online_s=max(
                    0.0,
                    min(obs.duration_s, node.crashed_at if node.crashed_at is not None else math.inf)
                    - max(0.0, node.started or 0.0),
                ),
                tokens=sum(r.tokens for r in served),
                requests=len(served),
            )
        )
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    lag_p50, lag_p99 = (percentile(loop_lags, q) or 0.0 for q in (50, 99))
    if lag_p99 > LOOP_SATURATED:
        log(
            f"emulation: WARNING the event loop was saturated (wake-up lag p50 {lag_p50 * 1000:.0f} ms, p99 "
            f"{lag_p99 * 1000:.0f} ms): the timings are this host's, use fewer peers"
        )
    obs.counters = {
        "real_peers": len(nodes),
        "providers": len(providers),
        "peer_crashes": sum(n.crashed is not None for n in nodes),
        "consumers": len(consumers),
        "emulator_cpu_ms": round(cpu * 1000),
        "emulator_wall_ms": round(wall * 1000),
        "loop_lag_p50_ms": round(lag_p50 * 1000),
        "loop_lag_p99_ms": round(lag_p99 * 1000),
    }
    log(f"emulation: done in {wall:.1f} s wall, {cpu:.1f} s CPU ({cpu / wall:.0%} of a core)")
    return obs


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def run_emulation(scenario: Scenario, seed: int, *, log: Callable[[str], None] = print) -> Observations:
    """Run the scenario's emulation twin with real peers; the observations, as the simulator's.

    Takes about ``emulation.duration_s`` plus the start-up (a few seconds per
    ten peers) and up to a minute of drain; peers' homes live in a temporary
    directory removed at the end.
    """
    twin = twin_scenario(scenario)
    with tempfile.TemporaryDirectory(prefix="garage-emulation-") as tmp:
        obs = trio.run(_emulate, twin, seed, Path(tmp), log)
    leftover = [
        t.name
        for t in threading.enumerate()
        if t is not threading.current_thread() and not t.name.startswith("Trio thread")
    ]
    if leftover:
        log(f"emulation: threads still running after the run: {leftover}")
    return obs


def main(
    scenario: Path = typer.Argument(..., help="A scenario file, e.g. simulations/flash-crowd.toml."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default: the scenario's)."),
    out: Path | None = typer.Option(None, "--out", help="Report directory (default sim-out/<scenario name>)."),
    json_out: bool = JsonOption,
) -> None:
    """Simulate a scenario, run its twin on real peers (127.0.0.1), and report both side by side."""
    simulate_and_report(scenario, seed, out, json_out, emulator=run_emulation)


if __name__ == "__main__":
    typer.run(main)
