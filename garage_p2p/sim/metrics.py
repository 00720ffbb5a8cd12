"""What a run observed, and the figures the report is made of.

The simulator and the emulation (real peers) fill the same ``Observations``
and ``summarize`` turns either into the same figures, so the two can be put
side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """One client request, from arrival to its response or error."""

    id: int
    """Sequence number within the run."""
    consumer: str
    """Peer id of the peer whose endpoint took the request."""
    model: str
    """The model asked for."""
    submitted: float
    """Seconds from the start when the client sent it."""
    max_tokens: int
    """Tokens it may generate."""
    stream: bool
    """Server-sent events or one JSON body."""
    ended: float | None = None
    """When the client had the whole response or the error; None while in flight."""
    status: int | None = None
    """200, or the HTTP status of the OpenAI error the client got."""
    code: str | None = None
    """The error's code (``provider_busy``, ``deadline_exceeded`` …)."""
    provider: str | None = None
    """Who answered (the last provider tried, for an error)."""
    path: str | None = None
    """``direct`` or ``relayed``: the connection that carried the answer."""
    attempts: int = 0
    """Providers tried."""
    first_byte: float | None = None
    """When the first response byte reached the client."""
    tokens: int = 0
    """Tokens generated."""
    failovers: int = 0
    """Times the answer continued at another provider after its provider was lost mid-answer."""
    tried: list[str] = field(default_factory=list)
    """What each attempt met, in order: the provider, its state when tried, and how the attempt ended
    (simulator only: ``p17 vanished relayed: no reservation``)."""
    reachable: int | None = None
    """For a failure: providers of the model the consumer could have reached when it failed (online,
    serving, a path to them); None where unknown (real peers) or for a success."""
    routable: int | None = None
    """For a failure: of those, the ones its table held and its router had not banned."""

    @property
    def cut(self) -> bool:
        """A streamed answer that ended in an error after the client had its first bytes."""
        return self.stream and self.status not in (None, 200) and self.first_byte is not None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(slots=True)
class JoinRecord:
    """A peer came online: how long until the mesh knew it."""

    peer: str
    """The new peer."""
    at: float
    """When it started."""
    known_99: float | None
    """Seconds until 99 % of the peers online had its ad; None if never."""


@dataclass(slots=True)
class ProviderRecord:
    """One provider's share of the work."""

    peer: str
    """The provider."""
    gpu: str
    """Its GPU kind (or ``stand-in``)."""
    capacity_tps: float
    """Aggregate tokens/s it can serve."""
    online_s: float = 0.0
    """Seconds it was online during the run."""
    tokens: int = 0
    """Tokens it generated."""
    requests: int = 0
    """Requests it completed."""


@dataclass(slots=True)
class JobRecord:
    """One batch job."""

    job_id: str
    """The job."""
    model: str
    """Its model."""
    lines: int
    """Lines submitted."""
    submitted: float
    """When it was submitted."""
    finished: float | None = None
    """When its last line's result arrived; None if never."""
    lines_done: int = 0
    """Lines with a result."""
    leases: int = 0
    """Shards leased (re-leases and duplicates included)."""
    duplicates: int = 0
    """Duplicate leases of a running shard (tail stealing)."""
    early_claims: int = 0
    """Leases granted to a provider still working on another (the next claimed before the last ended)."""


@dataclass
class Observations:
    """Everything a run saw; ``summarize`` makes the figures."""

    duration_s: float
    """Seconds of arrivals."""
    sample_s: float
    """Width of a time bucket."""
    requests: list[RequestRecord] = field(default_factory=list)
    joins: list[JoinRecord] = field(default_factory=list)
    providers: list[ProviderRecord] = field(default_factory=list)
    ledger_lag: list[float] = field(default_factory=list)
    """Seconds from a receipt's entry to its arrival at each replica that got it."""
    ledger_converged_after_heal: float | None = None
    """Seconds from the heal until every replica online held the same state; None if no heal or never."""
    ledger_replicas: int = 0
    """Replicas simulated (or real peers checked)."""
    ledger_entries: int = 0
    """Log entries written in the run."""
    jobs: list[JobRecord] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    """Scenario events as they happened (time, description)."""
    online: list[tuple[float, int, int]] = field(default_factory=list)
    """(time, providers online, consumers online) samples."""
    counters: dict[str, int] = field(default_factory=dict)
    """Model counters: dials, punches, relay cuts, DHT lookups, ads signed …"""
    cost: dict | None = None
    """What each peer paid in CPU and bytes (``sim.cost.CostMeter.summary``); None where not modelled."""


MAX_FAILURES_LISTED = 200
"""Failed requests listed one by one in the summary (the first ones; ``failure_kinds`` counts them all)."""


def _reach(r: RequestRecord) -> str:
    """Whether the failed request had anyone to go to: the breakdown's second key."""
    if r.reachable is None:
        return "reachability unknown"
    if r.reachable == 0:
        return "no provider reachable"
    if not r.routable:
        return f"{r.reachable} reachable, none routable (unknown or banned)"
    return "a provider was routable"


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100), nearest-rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def jain(values: list[float]) -> float | None:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    if not values:
        return None
    total = sum(values)
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else total * total / (len(values) * squares)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarize(obs: Observations) -> dict:
    """The report's figures: plain JSON types, rounded, deterministic."""
    reqs = obs.requests
    done = [r for r in reqs if r.ended is not None]
    ok = [r for r in done if r.ok]
    latency = [r.ended - r.submitted for r in ok]
    ttft = [r.first_byte - r.submitted for r in ok if r.first_byte is not None]
    errors: dict[str, int] = {}
    for r in done:
        if not r.ok:
            key = f"{r.status} {r.code}"
            errors[key] = errors.get(key, 0) + 1
    paths = {"direct": 0, "relayed": 0}
    for r in ok:
        if r.path in paths:
            paths[r.path] += 1
    # Fairness: utilisation (tokens served / tokens it could serve while online)
    # of providers online for at least a tenth of the run.
    util = [
        p.tokens / (p.capacity_tps * p.online_s)
        for p in obs.providers
        if p.online_s >= 0.1 * obs.duration_s and p.capacity_tps > 0
    ]
    known = [j.known_99 for j in obs.joins if j.known_99 is not None]
    buckets = int(math.ceil(obs.duration_s / obs.sample_s)) or 1
    series = {
        "t": [_r(i * obs.sample_s, 1) for i in range(buckets)],
        "requests": [0] * buckets,
        "success_rate": [None] * buckets,
        "latency_p50": [None] * buckets,
        "latency_p99": [None] * buckets,
        "relayed_share": [None] * buckets,
    }
    by_bucket: list[list[RequestRecord]] = [[] for _ in range(buckets)]
    for r in done:
        by_bucket[min(buckets - 1, int(r.submitted // obs.sample_s))].append(r)
    for i, bucket in enumerate(by_bucket):
        series["requests"][i] = len(bucket)
        good = [r for r in bucket if r.ok]
        if bucket:
            series["success_rate"][i] = _r(len(good) / len(bucket))
        if good:
            lat = [r.ended - r.submitted for r in good]
            series["latency_p50"][i] = _r(percentile(lat, 50))
            series["latency_p99"][i] = _r(percentile(lat, 99))
            series["relayed_share"][i] = _r(sum(r.path == "relayed" for r in good) / len(good))
    failed = [r for r in done if not r.ok]
    breakdown: dict[str, int] = {}
    for r in failed:
        key = f"{r.status} {r.code}, {_reach(r)}"
        breakdown[key] = breakdown.get(key, 0) + 1
    return {
        "requests": {
            "total": len(reqs),
            "ok": len(ok),
            "errors": dict(sorted(errors.items())),
            "lost": len(reqs) - len(done),
            "cut_mid_stream": sum(r.cut for r in done),
            "failovers": sum(r.failovers for r in done),
            "failed_over": sum(r.failovers > 0 for r in done),
            "success_rate": _r(len(ok) / len(done)) if done else None,
            "latency_s": {f"p{q}": _r(percentile(latency, q)) for q in (50, 90, 99)},
            "ttft_s": {f"p{q}": _r(percentile(ttft, q)) for q in (50, 90, 99)},
            "direct": paths["direct"],
            "relayed": paths["relayed"],
            "relayed_share": _r(paths["relayed"] / len(ok)) if ok else None,
            "tokens": sum(r.tokens for r in ok),
            "failure_kinds": dict(sorted(breakdown.items())),
            "failures": [
                {
                    "at": _r(r.submitted, 3),
                    "took": _r(r.ended - r.submitted, 3),
                    "error": f"{r.status} {r.code}",
                    "cut": r.cut,
                    "tried": r.tried,
                    "reachable": r.reachable,
                    "routable": r.routable,
                }
                for r in failed[:MAX_FAILURES_LISTED]
            ],
        },
        "discovery": {
            "joins": len(obs.joins),
            "known_99_s": {f"p{q}": _r(percentile(known, q)) for q in (50, 90, 99)},
            "never_known": len(obs.joins) - len(known),
        },
        "fairness": {
            "providers": len(util),
            "jain_utilisation": _r(jain(util)),
            "utilisation_p50": _r(percentile(util, 50)),
        },
        "ledger": {
            "replicas": obs.ledger_replicas,
            "entries": obs.ledger_entries,
            "lag_s": {f"p{q}": _r(percentile(obs.ledger_lag, q)) for q in (50, 99)},
            "converged_after_heal_s": _r(obs.ledger_converged_after_heal, 2),
        },
        "jobs": [
            {
                "id": j.job_id,
                "model": j.model,
                "lines": j.lines,
                "lines_done": j.lines_done,
                "duration_s": _r(None if j.finished is None else j.finished - j.submitted, 3),
                "leases": j.leases,
                "duplicates": j.duplicates,
                "early_claims": j.early_claims,
            }
            for j in obs.jobs
        ],
        "events": [[_r(t, 3), what] for t, what in obs.events],
        "online": [[_r(t, 1), p, c] for t, p, c in obs.online],
        "counters": dict(sorted(obs.counters.items())),
        "cost": obs.cost,
        "series": series,
        "known_99_samples": [_r(k) for k in known],
        "utilisation_samples": [_r(u) for u in util],
    }
