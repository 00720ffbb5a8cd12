"""What each provider actually delivered to us, against what its benchmark claims (sans-IO).

A provider's ad carries a benchmark it ran itself (``Benchmark``: single-stream tokens/s, the
aggregate over ``concurrency`` streams, median TTFT). Nothing checks it, so routing on it alone
rewards a rig that claims 10× its speed. ``DeliveryBook`` keeps, per provider and model, what its
answers delivered to this consumer, and ``Claim`` is what routing uses instead of the bare ad.

One observation per finished attempt (``attempt_delivery``, from the request policy):

- TTFT: head out → first response event, less the path's RTT (a term of its own in the routing
  estimate) and the admission queue the provider reports in its END (``Timings.queue_ms``: a
  provider whose slots are full is busy, not slow; the credit is capped at MAX_QUEUE_CREDIT, the
  longest an honest provider keeps a request in line, so a provider cannot excuse a slow GPU by
  reporting a long queue). Time in vLLM's own queue is not reported and counts as TTFT; routing
  scales the TTFT term by the live queue anyway.
- Decode tokens/s: (tokens − 1) / (first event → END), the provider's own pace, free of RTT, dial
  and the mesh's per-request overhead. Only streamed attempts give one (every attempt is, unless
  failover is off or the request would not continue exactly: a non-streamed body's first byte is its
  last). Tokens are the ones we counted in the transcript when there is one, else the END's usage.
  A stream's speed depends on how many streams the provider runs; the observed speed is turned into
  its single-stream equivalent along the provider's own benchmark curve (``stream_rate``) at the
  streams its END says it runs (``Load``: the larger of the backend's running requests and the mesh
  requests in flight), capped at the benchmark's concurrency. Claiming more load to excuse a slow
  stream is no gain: the router scores the same load as a queue and routes away.

Decay: every figure is an exponentially weighted mean whose weights halve every HALF_LIFE seconds
(``now`` is the caller's clock): a rig that got slower, or faster, shows it within minutes, and an
old verdict fades.

Prior: the claim counts as PRIOR_WEIGHT observations, blended with the delivered ones in time (seconds
per token, seconds of TTFT), not in rate. The estimate routing needs is a time (tokens / rate), so a
mean of times is the expected time; and an inflated claim weighs little in it: a provider claiming
200 tokens/s that delivers 20 is blended to 36 tokens/s after one answer and 29 after two (a mean
of rates would still say 110 and 80), and the third flags it (below). One unverified figure from
the party that gains by it is worth one observation and no more; a few answers override it. With no
benchmark the prior is the pessimistic default (DEFAULT_SINGLE_TPS, DEFAULT_TTFT): an honest rig
that never benchmarked earns its speed, slowly (the slow prior weighs much in a mean of times).

Overclaim: when at least OVERCLAIM_MIN_OBSERVATIONS (decayed) tokens/s observations say the provider
delivers under OVERCLAIM_RATIO of its claimed single-stream speed, it ``overclaims``: its benchmark
is ignored altogether (the single-stream figure, the aggregate curve, the TTFT) and it is scored at
the worse of what it delivered and the pessimistic default. Only tokens/s flags: TTFT grows with the
prompt's prefill, which a short-prompt benchmark does not measure, so a slow start on a long prompt is
no evidence of a lie. The flag fades with its observations: a rig that stopped lying gets traffic
back after some half-lives (and is flagged again if it did not).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .capabilities import Benchmark
from .messages import EndInfo

DEFAULT_SINGLE_TPS = 20.0
"""Tokens/s assumed of a provider with no benchmark (pessimistic)."""
DEFAULT_TTFT = 0.5
"""Seconds to first token assumed of a provider with no benchmark (pessimistic)."""
HALF_LIFE = 300.0
"""Seconds after which an observation weighs half as much."""
PRIOR_WEIGHT = 1.0
"""Observations the advertised benchmark is worth."""
OVERCLAIM_RATIO = 1 / 3
"""Delivered single-stream tokens/s under this share of the claim is an overclaim."""
OVERCLAIM_MIN_OBSERVATIONS = 2.5
"""Decayed weight of tokens/s observations needed before a provider can be flagged: three answers
within a minute or two (each weighs a little less than the next)."""
MIN_DECODE_TOKENS = 16
"""Tokens an attempt must generate for its tokens/s to count. Fewer are a few frames' jitter, and
one stall decides them: vLLM interleaves other requests' prefills with a stream's decode, so an
8-token answer's seven gaps held one 1,100-token prefill of another conversation and "ran" at a
quarter of its speed. Two honest twin servers were flagged as overclaiming by such answers under
the cache-routing benchmark's load, and their conversations refused as too slow."""
MAX_QUEUE_CREDIT = 2.0
"""Seconds of reported admission queue taken out of a TTFT at most (the provider's QUEUE_WAIT)."""
MAX_TRACKED = 1024
"""(provider, model) pairs remembered, the latest updated."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one finished attempt delivered, as the consumer measured it."""

    ttft: float
    """Seconds from the head to the first event, less the RTT and the reported admission queue."""
    tokens: int
    """Tokens the attempt generated."""
    decode: float
    """Seconds from the first event to the END."""
    streams: float
    """Streams the provider said it was running (its END's load), at least 1."""


def attempt_delivery(
    *, sent: float, first: float, ended: float, rtt: float, tokens: int, end: EndInfo
) -> Delivery | None:
    """The observation of a streamed attempt (times on one clock), or None if it says nothing."""
    if first < sent or ended < first:
        return None
    queue = min(MAX_QUEUE_CREDIT, end.timings.queue_ms / 1000)
    load = end.load
    streams = max(1.0, load.running, float(load.in_flight)) if load is not None else 1.0
    return Delivery(ttft=max(0.0, first - sent - rtt - queue), tokens=tokens, decode=ended - first, streams=streams)


def stream_rate(bench: Benchmark | None, streams: float) -> float:
    """Tokens/s one stream gets while ``streams`` run at once, by the benchmark's curve: linear from
    the single-stream figure at 1 stream to aggregate/concurrency at ``concurrency``, the aggregate
    shared beyond; with no curve, the single figure shared."""
    single = bench.single_stream_tps if bench and bench.single_stream_tps > 0 else DEFAULT_SINGLE_TPS
    if streams <= 1:
        return single
    if bench and bench.aggregate_tps > 0 and bench.concurrency > 1:
        c = bench.concurrency
        at_c = bench.aggregate_tps / c
        if streams <= c:
            return single + (at_c - single) * (streams - 1) / (c - 1)
        return bench.aggregate_tps / streams
    return single / streams


def _decay(now: float, at: float) -> float:
    return float(0.5 ** (max(0.0, now - at) / HALF_LIFE))


@dataclass(slots=True)
class _Mean:
    """An exponentially decayed mean: weights halve every HALF_LIFE."""

    weight: float = 0.0
    total: float = 0.0
    at: float = 0.0

    def add(self, value: float, now: float) -> None:
        f = _decay(now, self.at)
        self.weight = self.weight * f + 1.0
        self.total = self.total * f + value
        self.at = max(self.at, now)

    def read(self, now: float) -> tuple[float, float]:
        """(decayed weight, decayed sum) at ``now``."""
        f = _decay(now, self.at)
        return self.weight * f, self.total * f


@dataclass(slots=True)
class _Record:
    ttft: _Mean
    """Seconds to first token."""
    spt: _Mean
    """Seconds per token of one stream alone (the single-stream equivalent)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A provider's speed as routing should believe it: its benchmark, corrected by what it delivered."""

    single_tps: float
    """Single-stream tokens/s to route on."""
    ttft: float
    """Seconds to first token to route on."""
    curve: Benchmark | None
    """The benchmark whose shape scales ``single_tps`` with the streams running (None: shared)."""
    claimed_tps: float | None
    """The advertised single-stream tokens/s (None: no benchmark)."""
    claimed_ttft: float | None
    """The advertised TTFT in seconds (None: no benchmark)."""
    delivered_tps: float | None
    """Single-stream tokens/s delivered (decayed mean), if observed."""
    delivered_ttft: float | None
    """Seconds to first token delivered (decayed mean), if observed."""
    observations: float
    """Decayed tokens/s observations behind ``delivered_tps``."""
    overclaims: bool
    """True when it delivers far below its claim: the claim is ignored."""

    def rate(self, streams: float) -> float:
        """Tokens/s one stream gets while ``streams`` run there."""
        # The curve's shape, scaled to the single-stream figure believed.
        return stream_rate(self.curve, streams) * self.single_tps / stream_rate(self.curve, 1.0)


def _blend(prior: float, weight: float, total: float) -> float:
    """The mean of ``prior`` (worth PRIOR_WEIGHT) and the observations (``total`` over ``weight``)."""
    return (PRIOR_WEIGHT * prior + total) / (PRIOR_WEIGHT + weight)


class DeliveryBook:
    """Per provider and model: what it delivered to us, decayed (bounded: MAX_TRACKED pairs)."""

    def __init__(self) -> None:
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    def record(self, peer_id: str, model: str, delivery: Delivery, bench: Benchmark | None, now: float) -> None:
        """``peer_id`` delivered ``delivery`` for ``model`` at ``now``; ``bench``: its ad's benchmark
        (the curve that turns a loaded stream's speed into its single-stream equivalent)."""
        key = (peer_id, model)
        rec = self._records.pop(key, None) or _Record(_Mean(at=now), _Mean(at=now))
        self._records[key] = rec
        while len(self._records) > MAX_TRACKED:
            self._records.popitem(last=False)
        rec.ttft.add(delivery.ttft, now)
        if delivery.tokens >= MIN_DECODE_TOKENS and delivery.decode > 0:
            observed = (delivery.tokens - 1) / delivery.decode
            concurrency = bench.concurrency if bench is not None else 1
            streams = min(delivery.streams, float(concurrency))
            single = observed * stream_rate(bench, 1.0) / stream_rate(bench, streams)
            rec.spt.add(1.0 / max(1e-9, single), now)

    def claim(self, peer_id: str, model: str, bench: Benchmark | None, now: float) -> Claim:
        """What routing should believe of ``peer_id``'s ``model`` at ``now``, its ad saying ``bench``."""
        claimed_tps = bench.single_stream_tps if bench and bench.single_stream_tps > 0 else None
        claimed_ttft = bench.ttft_p50_ms / 1000 if bench and bench.ttft_p50_ms > 0 else None
        rec = self._records.get((peer_id, model))
        w_spt, s_spt = rec.spt.read(now) if rec else (0.0, 0.0)
        w_ttft, s_ttft = rec.ttft.read(now) if rec else (0.0, 0.0)
        delivered_tps = w_spt / s_spt if w_spt > 0 and s_spt > 0 else None
        delivered_ttft = s_ttft / w_ttft if w_ttft > 0 else None
        overclaims = (
            claimed_tps is not None
            and delivered_tps is not None
            and w_spt >= OVERCLAIM_MIN_OBSERVATIONS
            and delivered_tps < OVERCLAIM_RATIO * claimed_tps
        )
        if overclaims:
            assert delivered_tps is not None
            single = min(delivered_tps, DEFAULT_SINGLE_TPS)
            ttft = max(delivered_ttft or DEFAULT_TTFT, DEFAULT_TTFT)
            curve = None
        else:
            single = 1.0 / _blend(1.0 / (claimed_tps or DEFAULT_SINGLE_TPS), w_spt, s_spt)
            ttft = _blend(claimed_ttft if claimed_ttft is not None else DEFAULT_TTFT, w_ttft, s_ttft)
            curve = bench
        return Claim(
            single_tps=single,
            ttft=ttft,
            curve=curve,
            claimed_tps=claimed_tps,
            claimed_ttft=claimed_ttft,
            delivered_tps=delivered_tps,
            delivered_ttft=delivered_ttft,
            observations=w_spt,
            overclaims=overclaims,
        )

    def tracked(self) -> list[tuple[str, str]]:
        """The (provider, model) pairs with a record, least recently updated first."""
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)
