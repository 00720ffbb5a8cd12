"""Prometheus metrics of one peer, served at ``/metrics``.

Two kinds, as the Prometheus client guidelines suggest:

- events are counted where they happen: requests this peer's endpoint sent
  into the mesh (``garage_requests_total``, latency and time-to-first-token
  histograms, tokens) and requests it served as a provider
  (``garage_served_*``);
- state is read when scraped (``MeshSnapshot``): peers by connection kind,
  ads received and rejected, the ledger, jobs, in-flight requests.

Every peer has its own registry (several peers can share a process in the
tests and the simulator's emulation). Label values are bounded: a model is
named only once a provider answered for it (else ``other``), a provider by
its peer id (the first ``MAX_PROVIDER_LABELS``, then ``other``), a status by
its HTTP code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from ..core.live_requests import LiveRequest, LiveRequests, Role

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
OTHER = "other"
"""The model label of requests for models no provider answered for (bounds the label's values)."""
MAX_PROVIDER_LABELS = 256
"""Providers named in labels; later ones count as ``other`` (a big mesh would otherwise make thousands of series)."""


@dataclass(frozen=True)
class MeshSnapshot:
    """The peer's state at scrape time (the daemon fills it in)."""

    peers_by_connection: dict[str, int] = field(default_factory=dict)
    """Peers with a live ad, by how we reach them: ``direct``, ``relayed``, ``none``."""
    connections: int = 0
    """Open libp2p connections."""
    connections_opened: int = 0
    """libp2p connections opened since start, either side dialling."""
    connections_closed: int = 0
    """libp2p connections closed since start (a duplicate of a pair's connection included)."""
    ads_received: int = 0
    """Signed ads accepted from gossip since start."""
    ads_published: int = 0
    """Our own ads published on gossip since start (changes and heartbeats)."""
    ads_rejected: dict[str, int] = field(default_factory=dict)
    """Ads refused since start, by reason: ``invalid`` (schema, signature, clock), ``flood`` (rate)."""
    banned_peers: int = 0
    """Peers banned now for repeated faults."""
    overclaiming_providers: int = 0
    """Providers whose delivered tokens/s is far below their benchmark's (core/delivery.py)."""
    faults: dict[str, int] = field(default_factory=dict)
    """Faults of other peers since start, by the service that counted them (``ledger``, ``jobs``...)."""
    gossip_published: dict[str, int] = field(default_factory=dict)
    """Gossip messages this peer published since start, by topic."""
    gossip_received: dict[str, int] = field(default_factory=dict)
    """Gossip messages of other publishers its validators looked at since start, by topic (a copy gossipsub
    has seen already is dropped before that, uncounted)."""
    gossip_received_bytes: dict[str, int] = field(default_factory=dict)
    """Their payload bytes, by topic."""
    gossip_dropped: dict[str, int] = field(default_factory=dict)
    """Of those, dropped by the topic's flood or replay rule or as bad input, by topic (ads count theirs apart)."""
    ledger_entries: int = 0
    """Entries in this peer's replica of the ledger."""
    ledger_authors: int = 0
    """Providers with a log in the replica."""
    ledger_forked_authors: int = 0
    """Authors caught signing two entries at one seq (their balances stop counting there)."""
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    """Batch jobs this peer submitted, by status."""
    job_lines: dict[str, int] = field(default_factory=dict)
    """Lines of those jobs: ``total``, ``done``, ``failed``, ``in_flight``."""
    job_shards: int = 0
    """Shards of those jobs."""
    job_lines_served: int = 0
    """Batch lines this peer answered as a worker since start."""
    draining: bool = False
    """Whether the provider refuses new requests (shutting down or drained)."""
    spot_checks: dict[str, int] = field(default_factory=dict)
    """Spot-checks of answers this peer received, by outcome, and verdicts heard, by what became of them
    (gateway/spot_checks.py)."""
    refuted_providers: int = 0
    """Providers a check (ours, or a verdict we confirmed) proved to serve another model."""


class Metrics:
    """One peer's registry, its event counters, and the live request list."""

    def __init__(
        self, peer_id: str, version: str, snapshot: Callable[[], MeshSnapshot] = MeshSnapshot, *, process: bool = True
    ) -> None:
        self.live = LiveRequests()
        """In-flight and recent requests (``/garage/v1/requests``, the dashboard)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._snapshot = snapshot
        r = self.registry
        self.requests = Counter(
            "garage_requests",
            "Requests this peer's endpoint sent into the mesh, by outcome.",
            ["model", "status", "provider"],
            registry=r,
        )
        self.latency = Histogram(
            "garage_request_duration_seconds",
            "Seconds from a request's arrival to its last byte.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "garage_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first response bytes.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "garage_prompt_tokens",
            "Prompt tokens of answered requests, as the provider reported them.",
            ["model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "garage_completion_tokens",
            "Completion tokens of answered requests, as the provider reported them.",
            ["model"],
            registry=r,
        )
        self.served = Counter(
            "garage_served_requests",
            "Requests this peer served as a provider, by outcome.",
            ["model", "status"],
            registry=r,
        )
        self.served_latency = Histogram(
            "garage_served_duration_seconds",
            "Seconds this provider spent on a request, admission to END.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.served_prompt_tokens = Counter(
            "garage_served_prompt_tokens", "Prompt tokens this provider processed.", ["model"], registry=r
        )
        self.served_completion_tokens = Counter(
            "garage_served_completion_tokens", "Completion tokens this provider generated.", ["model"], registry=r
        )
        self._info = {"peer_id": peer_id, "version": version}
        self._served_models: set[str] = set()
        self._providers: set[str] = set()
        r.register(_Scraped(self))
        if process:
            ProcessCollector(registry=r)

    # -- events ------------------------------------------------------------------

    def begin(self, role: Role, request_id: str, model: str, stream: bool, peer: str | None = None) -> LiveRequest:
        return self.live.begin(request_id, role, model, stream, time.monotonic(), peer)

    def data(self, request: LiveRequest, chunk: bytes) -> None:
        self.live.data(request, chunk, time.monotonic())

    def end(self, request: LiveRequest, status: int, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Count a finished request once (a second call for the same request is ignored)."""
        if (request.role, request.id) not in self.live.in_flight:
            return
        done = self.live.end(request, status, time.monotonic(), time.time(), prompt_tokens, completion_tokens)
        if request.role == "consumer":
            # A model gets its own label once some provider answered for it.
            model = done.model if done.peer is not None and status < 500 and status != 404 else OTHER
            self.requests.labels(model, str(status), self._provider_label(done.peer)).inc()
            self.latency.labels(model).observe(done.latency_s)
            if done.ttft_s is not None:
                self.ttft.labels(model).observe(done.ttft_s)
            self.prompt_tokens.labels(model).inc(prompt_tokens)
            self.completion_tokens.labels(model).inc(completion_tokens)
        else:
            model = done.model if done.model in self._served_models else OTHER
            self.served.labels(model, str(status)).inc()
            self.served_latency.labels(model).observe(done.latency_s)
            self.served_prompt_tokens.labels(model).inc(prompt_tokens)
            self.served_completion_tokens.labels(model).inc(completion_tokens)

    def _provider_label(self, peer: str | None) -> str:
        if peer is None:
            return "none"
        if peer not in self._providers and len(self._providers) < MAX_PROVIDER_LABELS:
            self._providers.add(peer)
        return peer if peer in self._providers else OTHER

    def serving(self, models: set[str]) -> None:
        """The models this peer serves (their names may be labels on the provider side)."""
        self._served_models = set(models)

    # -- scraping ----------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _Scraped:
    """State read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        s = m._snapshot()
        info = InfoMetricFamily("garage_peer", "This peer's identity and version.")
        info.add_metric([], m._info)
        yield info
        in_flight = GaugeMetricFamily(
            "garage_requests_in_flight", "Requests running now, by this peer's role in them.", labels=["role"]
        )
        for role in ("consumer", "provider"):
            in_flight.add_metric([role], m.live.count(role))
        yield in_flight
        yield _gauge_by(
            "garage_peers",
            "Peers with a live ad, by how this peer reaches them.",
            "connection",
            s.peers_by_connection,
            ("direct", "relayed", "none"),
        )
        yield GaugeMetricFamily("garage_connections", "Open libp2p connections.", value=s.connections)
        yield CounterMetricFamily(
            "garage_connections_opened", "libp2p connections opened, either side dialling.", value=s.connections_opened
        )
        yield CounterMetricFamily(
            "garage_connections_closed", "libp2p connections closed, for any reason.", value=s.connections_closed
        )
        yield CounterMetricFamily(
            "garage_ads_received", "Signed capability ads accepted from gossip.", value=s.ads_received
        )
        yield CounterMetricFamily(
            "garage_ads_published", "Own capability ads published on gossip.", value=s.ads_published
        )
        rejected = CounterMetricFamily("garage_ads_rejected", "Capability ads refused, by reason.", labels=["reason"])
        for reason in sorted({"invalid", "flood", *s.ads_rejected}):
            rejected.add_metric([reason], s.ads_rejected.get(reason, 0))
        yield rejected
        yield GaugeMetricFamily("garage_banned_peers", "Peers banned now after repeated faults.", value=s.banned_peers)
        yield GaugeMetricFamily(
            "garage_overclaiming_providers",
            "Providers delivering far below their advertised benchmark (routing ignores the claim).",
            value=s.overclaiming_providers,
        )
        faults = CounterMetricFamily(
            "garage_peer_faults", "Faults of other peers (bad input), by the service counting them.", labels=["service"]
        )
        for service, count in sorted(s.faults.items()):
            faults.add_metric([service], count)
        yield faults
        checks = CounterMetricFamily(
            "garage_spot_checks",
            "Spot-checks of received answers by outcome (passed, refuted, inconclusive, unchecked, dropped), and "
            "verdicts heard by what became of them (verdict_confirmed, verdict_false, verdict_invalid ...).",
            labels=["result"],
        )
        for result in sorted({"passed", "refuted", "inconclusive", *s.spot_checks}):
            checks.add_metric([result], s.spot_checks.get(result, 0))
        yield checks
        yield GaugeMetricFamily(
            "garage_refuted_providers",
            "Providers proved to serve another model than they advertise (routed around).",
            value=s.refuted_providers,
        )
        for name, documentation, counts in (
            ("garage_gossip_published", "Gossip messages this peer published, by topic.", s.gossip_published),
            (
                "garage_gossip_received",
                "Gossip messages of other peers validated (not seen before), by topic.",
                s.gossip_received,
            ),
            ("garage_gossip_received_bytes", "Payload bytes of those messages, by topic.", s.gossip_received_bytes),
            (
                "garage_gossip_dropped",
                "Received gossip dropped (flood, replay, bad input), by topic.",
                s.gossip_dropped,
            ),
        ):
            family = CounterMetricFamily(name, documentation, labels=["topic"])
            for topic, count in sorted(counts.items()):
                family.add_metric([topic], count)
            yield family
        yield GaugeMetricFamily(
            "garage_ledger_entries", "Entries in this peer's ledger replica.", value=s.ledger_entries
        )
        yield GaugeMetricFamily(
            "garage_ledger_authors", "Providers with a log in the ledger replica.", value=s.ledger_authors
        )
        yield GaugeMetricFamily(
            "garage_ledger_forked_authors",
            "Authors that signed two entries at one seq (a fork).",
            value=s.ledger_forked_authors,
        )
        yield _gauge_by(
            "garage_jobs",
            "Batch jobs this peer submitted, by status.",
            "status",
            s.jobs_by_status,
            ("running", "completed", "failed", "cancelled"),
        )
        yield _gauge_by(
            "garage_job_lines",
            "Lines of this peer's batch jobs, by state.",
            "state",
            s.job_lines,
            ("total", "done", "failed", "in_flight"),
        )
        yield GaugeMetricFamily("garage_job_shards", "Shards of this peer's batch jobs.", value=s.job_shards)
        yield CounterMetricFamily(
            "garage_job_lines_served", "Batch lines this peer answered as a worker.", value=s.job_lines_served
        )
        yield GaugeMetricFamily("garage_draining", "1 while the provider refuses new requests.", value=int(s.draining))

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are only known at collection (no clash checks needed)


def _gauge_by(
    name: str, documentation: str, label: str, values: dict[str, int], always: tuple[str, ...]
) -> GaugeMetricFamily:
    """A gauge with one series per label value; the ``always`` values appear even at zero."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key in sorted({*always, *values}):
        family.add_metric([key], values.get(key, 0))
    return family
