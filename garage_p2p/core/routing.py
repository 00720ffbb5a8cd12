"""Choosing the provider that will answer a request fastest.

Pure: the caller passes ``now``, owns the ``random.Random`` and tells us what
it knows of the paths (RTT, relayed or direct). The estimate of a provider's
completion time, in seconds:

    rtt + relay_penalty + ttft × (1 + waiting / concurrency) + tokens / rate(n + 1)
        + failure_penalty × recent failures + fork_penalty if the ledger flags it

where ``n`` is what runs there now (``running + waiting`` from its live load,
plus the requests we sent since), ``tokens`` is the request's ``max_tokens`` (or
a default) and ``rate(k)`` is the per-stream speed with ``k`` streams,
interpolated between the benchmark's single-stream and aggregate figures. A
provider with no benchmark gets pessimistic defaults. A KV cache over 95 %
full scales the estimate by 1.5 (the backend starts preempting).

``ttft`` and the single-stream speed are not the ad's figures but what the
provider delivered to us (``core.delivery``: decayed means of its answers' TTFT
and tokens/s, fed by ``delivered``), with the ad's benchmark only a prior that a
few answers override. A provider that delivers far below its claim
(``overclaims``) loses its benchmark altogether: it is scored at the worse of
what it delivered and the pessimistic defaults.

The live load is the fresher of the ad's (when it is under AD_LOAD_MAX_AGE
old: ads are re-sent on change and a long heartbeat, not every few seconds)
and the one the provider itself put in its last END or busy reply to us
(``observe``).

Only a shortlist is scored (``shortlist``), so that choosing costs the same
with ten providers of a model or ten thousand: the providers we heard from
last, plus a few drawn at random from the table's per-model index (region
constraints applied by the index, a pinned peer looked up directly).

The order to try: power of two choices (two eligible providers of the
shortlist drawn at random, the better one first), then the rest best first.
The random draw keeps many consumers from herding onto the one provider that
looks best in everyone's slightly stale table; the score keeps them off slow
ones. A request with an affinity (``core.affinity``: it shares a prefix with
earlier requests, which a provider's prefix cache holds) tries that provider
first instead, while it is within the load bound, else spills to the next
in its hash order within the bound (``Router.affinity``); the shortlist
always includes it.

A provider that fails before its first byte is banned with exponential
backoff (1 s, 2 s, 4 s … one minute); a success clears it. A provider whose
ledger log forked (it signed two histories) stays eligible but is tried only
when every honest provider is far worse.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Protocol

from .affinity import (
    HASH_SCAN_MAX,
    HASH_SHORTLIST,
    MAX_SLOWDOWN,
    NO_AFFINITY,
    Affinity,
    AffinityBook,
    AffinityKey,
    load_cap,
    rendezvous,
)
from .capabilities import CapabilityAd, Load, ModelOffer
from .delivery import Claim, Delivery, DeliveryBook
from .endpoints import CHAT
from .provider_index import IndexedSet

DEFAULT_TOKENS = 256
RELAY_PENALTY = 0.15
FAILURE_PENALTY = 1.0
FORK_PENALTY = 30.0
KV_FULL = 0.95
SAMPLE_SIZE = 8
"""Providers drawn at random per request. Power of two choices needs two; eight leave room for
banned and busy ones, and the first choice is as good as when every provider was scored
(benchmarks/route_cost.py), at a cost that does not grow with the mesh."""
RECENT_SIZE = 4
"""Providers we heard from last (their END or busy reply) that are always on the shortlist: their
load is the freshest we know, and a connection to them is likely open."""
SHORTLIST_MAX = RECENT_SIZE + SAMPLE_SIZE
"""Providers scored per request, besides the ones the caller always adds (its own backend)."""
DRAW_ROUNDS = 4
"""Draws of SAMPLE_SIZE at most when drawn providers are banned, expired or out of the region: a
mostly banned model still finds its good providers, in bounded time."""
AD_LOAD_MAX_AGE = 30.0
"""An ad's load older than this (by its issue time) is ignored: ads are re-sent only on change and
on a long heartbeat, so an ad's queue may be minutes old; idle is a better guess than that."""
OBSERVED_MAX_AGE = 180.0
"""An observed load (from an END or busy reply) is forgotten after this many seconds."""
MAX_OBSERVED_PER_MODEL = 64
"""Providers of one model whose observed load we keep (the latest heard from)."""
MAX_OBSERVED_MODELS = 16
"""Models we keep observed loads for (the latest used)."""


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the client asked for, as far as routing cares."""

    model: str
    """The model name."""
    expected_tokens: int = DEFAULT_TOKENS
    """Tokens the request may generate (its ``max_tokens``)."""
    region: str | None = None
    """Only providers in this region (``se`` matches ``se`` and ``se-sto``)."""
    pinned_peer: str | None = None
    """Only this provider."""
    path: str = CHAT
    """The endpoint path: only providers advertising it for the model (``ModelOffer.serves``)."""
    affinity: Affinity = NO_AFFINITY
    """The prefixes it shares with earlier requests (``core.affinity.affinity_keys``)."""


@dataclass(frozen=True, slots=True)
class PathInfo:
    """How we reach a provider."""

    rtt: float | None = None
    """Round-trip time in seconds, if measured."""
    relayed: bool = False
    """True when the only connection runs through a relay."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider, scored and explained."""

    peer_id: str
    """The provider."""
    estimate: float
    """Expected seconds to complete the request; lower is better."""
    eligible: bool
    """False when a constraint or a ban rules it out."""
    reason: str = ""
    """Why it is not eligible."""
    parts: Mapping[str, float] = field(default_factory=dict)
    """The estimate's terms, for ``garage route``."""
    load: float = 0.0
    """Requests running and queued there, ours included (the affinity's load bound)."""
    alone: float = 0.0
    """Seconds to decode the request's expected tokens as its only stream there, by its benchmark
    (or, with none or an overclaim, what delivery and the prior say): its speed without its load,
    which the affinity's slowdown rule compares (the load bound judges the load)."""
    speed_known: bool = False
    """Whether ``alone`` rests on its ad's benchmark (or on what it delivered, if that proved the
    benchmark an overclaim): a provider with no benchmark is not held to the slowdown rule."""


@dataclass(frozen=True, slots=True)
class AffinityChoice:
    """What the request's affinity asked for and whether routing honoured it (``garage route``)."""

    key: AffinityKey | None
    """The key that matched (learned), or None when the provider comes from the anchor's hash."""
    provider: str | None
    """The provider it prefers (None: the request has no key, or no provider to hash to)."""
    target: str | None
    """The provider tried first: ``provider`` if honoured, else where it spills (None: the usual order)."""
    reason: str
    """Why it is or is not honoured."""

    @property
    def honoured(self) -> bool:
        """True when ``provider`` is tried first."""
        return self.provider is not None and self.target == self.provider


class ProviderPool(Protocol):
    """Where the shortlist draws providers from: ``PeerTable``."""

    def serving(self, model: str, region: str | None = None) -> IndexedSet:
        """Peers serving ``model`` in ``region`` (a superset is fine: the draw is filtered)."""
        ...

    def live_ad(self, peer_id: str, now: float) -> CapabilityAd | None:
        """The peer's ad, if held and not expired."""
        ...


@dataclass(frozen=True, slots=True)
class Observed:
    """A provider's load as it told us itself."""

    load: Load
    """What its END or busy reply said."""
    at: float
    """When we read it (the ``now`` the caller gave)."""
    ours: int = 0
    """Our own requests in flight there when it said so: its figure counts them, and so does
    ``Router.outstanding`` while they last (counting both made a burst spill for phantom load)."""


def offer_of(ad: CapabilityAd, model: str) -> ModelOffer | None:
    """What ``ad`` offers of ``model``, if it serves it."""
    return next((m for m in ad.models if m.name == model), None)


def region_matches(wanted: str | None, region: str | None) -> bool:
    if wanted is None:
        return True
    return region is not None and (region == wanted or region.startswith(wanted + "-"))


@dataclass(slots=True)
class _Failures:
    count: int
    banned_until: float


class Router:
    def __init__(
        self,
        rng: random.Random,
        *,
        base_ban: float = 1.0,
        max_ban: float = 60.0,
        relay_penalty: float = RELAY_PENALTY,
        flagged: Callable[[str], bool] = lambda peer_id: False,
    ) -> None:
        self._rng = rng
        self._flagged = flagged
        self._base_ban = base_ban
        self._max_ban = max_ban
        self._relay_penalty = relay_penalty
        self._failures: dict[str, _Failures] = {}
        self._observed: OrderedDict[str, OrderedDict[str, Observed]] = OrderedDict()
        """Model → provider → its latest observed load, least recently heard first."""
        self.outstanding: dict[str, int] = {}
        """Requests we have running at each provider."""
        self.delivery = DeliveryBook()
        """What each provider delivered to us, per model (``delivered``)."""
        self.affinities = AffinityBook()
        """Which provider served each prefix last (``served``)."""

    # -- bookkeeping ------------------------------------------------------------

    def banned_until(self, peer_id: str) -> float:
        record = self._failures.get(peer_id)
        return record.banned_until if record else 0.0

    def failures(self, peer_id: str) -> int:
        record = self._failures.get(peer_id)
        return record.count if record else 0

    def failed(self, peer_id: str, now: float) -> float:
        """A failure before the first byte; returns when the ban ends."""
        record = self._failures.get(peer_id) or _Failures(0, 0.0)
        record.count += 1
        record.banned_until = now + min(self._max_ban, self._base_ban * 2 ** (record.count - 1))
        self._failures[peer_id] = record
        return record.banned_until

    def succeeded(self, peer_id: str) -> None:
        self._failures.pop(peer_id, None)

    def served(self, affinity: Affinity, peer_id: str, now: float) -> None:
        """``peer_id`` answered a request of ``affinity`` (its first event came): its cache holds the
        request's prefix."""
        if affinity:
            self.affinities.learn(affinity, peer_id, now)

    def started(self, peer_id: str) -> None:
        self.outstanding[peer_id] = self.outstanding.get(peer_id, 0) + 1

    def finished(self, peer_id: str) -> None:
        left = self.outstanding.get(peer_id, 0) - 1
        if left > 0:
            self.outstanding[peer_id] = left
        else:
            self.outstanding.pop(peer_id, None)

    def observe(self, peer_id: str, model: str, load: Load, now: float) -> None:
        """``peer_id`` told us its live load for ``model`` (in an END or busy reply) at ``now``."""
        seen = self._observed.get(model)
        if seen is None:
            seen = self._observed[model] = OrderedDict()
            while len(self._observed) > MAX_OBSERVED_MODELS:
                self._observed.popitem(last=False)
        self._observed.move_to_end(model)
        # The request whose END or busy reply carries ``load`` is one of ours and is not in it.
        seen[peer_id] = Observed(load, now, max(0, self.outstanding.get(peer_id, 0) - 1))
        seen.move_to_end(peer_id)
        while len(seen) > MAX_OBSERVED_PER_MODEL:
            seen.popitem(last=False)

    def delivered(self, ad: CapabilityAd | None, model: str, delivery: Delivery, now: float) -> None:
        """``ad``'s provider finished an answer of ``model`` at ``now`` and delivered ``delivery``
        (None: we no longer hold its ad; its benchmark's curve is then unknown)."""
        if ad is None:
            return
        offer = offer_of(ad, model)
        self.delivery.record(ad.peer_id, model, delivery, offer.benchmark if offer else None, now)

    def claim(self, ad: CapabilityAd, offer: ModelOffer, now: float) -> Claim:
        """``ad``'s speed for ``offer`` as routing believes it: the benchmark corrected by delivery."""
        return self.delivery.claim(ad.peer_id, offer.name, offer.benchmark, now)

    def overclaimers(self, pool: ProviderPool, now: float) -> set[str]:
        """Providers flagged ``overclaims`` for a model whose ad we hold (bounded by the book's size)."""
        out: set[str] = set()
        for peer_id, model in self.delivery.tracked():
            ad = pool.live_ad(peer_id, now)
            offer = offer_of(ad, model) if ad is not None else None
            if ad is not None and offer is not None and self.claim(ad, offer, now).overclaims:
                out.add(peer_id)
        return out

    def _heard(self, model: str, now: float) -> OrderedDict[str, Observed]:
        """The observed loads of ``model``'s providers, the ones past OBSERVED_MAX_AGE dropped
        (oldest first, so this costs what it drops)."""
        seen = self._observed.get(model)
        if seen is None:
            return OrderedDict()
        while seen and next(iter(seen.values())).at < now - OBSERVED_MAX_AGE:
            seen.popitem(last=False)
        return seen

    def recent(self, model: str, now: float) -> Iterator[str]:
        """The providers of ``model`` we heard from last, latest first (RECENT_SIZE at most)."""
        return islice(reversed(self._heard(model, now)), RECENT_SIZE)

    def live_load(self, ad: CapabilityAd, offer: ModelOffer, now: float) -> Observed | None:
        """The fresher of the ad's load (if under AD_LOAD_MAX_AGE old) and the observed one."""
        issued = min(ad.issued_at, now)  # an issuer whose clock is ahead is not fresher for it
        advertised = offer.load if offer.load is not None and now - issued <= AD_LOAD_MAX_AGE else None
        seen = self._heard(offer.name, now).get(ad.peer_id)
        if seen is not None and (advertised is None or seen.at >= issued):
            return seen
        return Observed(advertised, issued) if advertised is not None else None

    def busy(self, peer_id: str, seen: Observed | None) -> float:
        """Requests at ``peer_id`` now, ours included: the others it last told us of, plus ours now,
        plus its backend's queue.

        The others are its own count of the mesh requests its backend works on (``in_flight``, exact
        when it sent it) less ours of that moment (it counted them). Not its backend's running
        figure: that is scraped every few seconds, so a burst that has ended still shows in it (the
        last answer of a burst, told "0 others", once fell back to it and saw seven phantoms). The
        backend's queue (``waiting``) is added though it lags as much: requests queued there are
        past what its batch runs at once, whoever sent them (a local user's, another consumer's),
        and a queue two seconds old is still a reason to go elsewhere.
        """
        ours = self.outstanding.get(peer_id, 0)
        if seen is None:
            return float(ours)
        return float(max(0, seen.load.in_flight - seen.ours) + ours) + seen.load.waiting

    # -- scoring ----------------------------------------------------------------

    def score(self, ad: CapabilityAd, request: RouteRequest, path: PathInfo, now: float) -> Candidate:
        offer = offer_of(ad, request.model)
        peer = ad.peer_id
        if offer is None:
            return Candidate(peer, float("inf"), False, "does not serve the model")
        seen = self.live_load(ad, offer, now)
        load = seen.load if seen is not None else None
        busy = self.busy(peer, seen)
        claim = self.claim(ad, offer, now)
        concurrency = claim.curve.concurrency if claim.curve else 1
        waiting = load.waiting if load else 0.0
        queue_factor = 1 + waiting / max(1, concurrency)
        parts = {
            "rtt": path.rtt or 0.0,
            "relay": self._relay_penalty if path.relayed else 0.0,
            "ttft": claim.ttft * queue_factor,
            # Requests queued at its backend start before ours, a batch at a time: a batch's worth
            # of decode per `concurrency` of them. A TTFT scaled by the queue was not enough: a
            # provider whose answers come in one burst has a TTFT near nothing, and 40 queued
            # requests cost it 60 ms.
            "queue": (waiting / max(1, concurrency)) * request.expected_tokens / max(1e-6, claim.rate(concurrency)),
            "generate": request.expected_tokens / max(1e-6, claim.rate(busy + 1)),
            "failures": FAILURE_PENALTY * self.failures(peer),
            "ledger_fork": FORK_PENALTY if self._flagged(peer) else 0.0,
        }
        estimate = sum(parts.values())
        if load and load.kv_cache_usage is not None and load.kv_cache_usage > KV_FULL:
            estimate *= 1.5
            parts["kv_full_factor"] = 1.5
        reason = ""
        if not offer.serves(request.path):
            reason = f"does not serve {request.path}"
        elif request.pinned_peer is not None and peer != request.pinned_peer:
            reason = "not the pinned peer"
        elif not region_matches(request.region, ad.region):
            reason = f"region {ad.region or 'unset'} is not {request.region}"
        elif self.banned_until(peer) > now:
            reason = f"banned for {self.banned_until(peer) - now:.1f} s after {self.failures(peer)} failures"
        # The slowdown rule compares like with like: each provider's benchmark (taken the same way
        # on every rig, 64-token answers), or what it delivered if that proved the benchmark an
        # overclaim; never a blend with the slow prior or with short answers' streams, which is for
        # the estimate. Mixed, a provider we used much was judged against one we used little
        # (near the prior), and an 8-token answer's stream, its tokens in one burst, "decoded" at
        # 800 tokens/s against another's 20: conversations left their provider for noise.
        comparable = claim.single_tps if claim.overclaims else claim.claimed_tps
        alone = request.expected_tokens / max(1e-6, comparable or claim.single_tps)
        return Candidate(
            peer,
            estimate,
            not reason,
            reason,
            parts,
            busy,
            alone,
            comparable is not None,
        )

    def shortlist(
        self, pool: ProviderPool, request: RouteRequest, now: float, also: Sequence[CapabilityAd] = ()
    ) -> list[CapabilityAd]:
        """The eligible providers worth scoring for ``request``: those of ``also`` (our own ad), the
        ones we heard from last (RECENT_SIZE) and SAMPLE_SIZE drawn at random from ``pool``'s
        index; a pinned peer alone. The work is bounded by DRAW_ROUNDS × SAMPLE_SIZE lookups, however
        many providers the model has."""
        model, pinned = request.model, request.pinned_peer

        def eligible(ad: CapabilityAd | None) -> bool:
            offer = offer_of(ad, model) if ad is not None else None
            return (
                ad is not None
                and offer is not None
                and offer.serves(request.path)
                and (pinned is None or ad.peer_id == pinned)
                and region_matches(request.region, ad.region)
                and self.banned_until(ad.peer_id) <= now
            )

        picked = {ad.peer_id: ad for ad in also if eligible(ad)}
        if pinned is not None:
            ad = picked.get(pinned) or pool.live_ad(pinned, now)
            return [ad] if ad is not None and eligible(ad) else []
        members = pool.serving(model, request.region)
        for peer_id in chain(self._affine(request, members, now), self.recent(model, now)):
            ad = pool.live_ad(peer_id, now)
            if ad is not None and eligible(ad):
                picked.setdefault(peer_id, ad)
        drawn: set[str] = set()
        sampled = 0
        for _ in range(DRAW_ROUNDS):
            if sampled >= SAMPLE_SIZE or len(drawn) >= len(members):
                break
            for peer_id in members.sample(SAMPLE_SIZE, self._rng):
                if peer_id in drawn:
                    continue
                drawn.add(peer_id)
                if peer_id in picked:
                    continue
                ad = pool.live_ad(peer_id, now)
                if ad is not None and eligible(ad):
                    picked[peer_id] = ad
                    sampled += 1
                    if sampled >= SAMPLE_SIZE:
                        break
        return list(picked.values())

    def _affine(self, request: RouteRequest, members: IndexedSet, now: float) -> list[str]:
        """The providers ``request``'s affinity prefers, for the shortlist: the one learned, and the
        anchor's hash favourites when the model has at most HASH_SCAN_MAX providers."""
        if not request.affinity:
            return []
        known = self.affinities.known(request.affinity, now)
        out = [known[1]] if known is not None else []
        if request.affinity.anchor is not None and len(members) <= HASH_SCAN_MAX:
            out += rendezvous(request.affinity.anchor, members)[:HASH_SHORTLIST]
        return out

    def affinity(self, ranked: Sequence[Candidate], request: RouteRequest, now: float) -> AffinityChoice:
        """The provider ``request``'s affinity asks for among ``ranked`` (best first) and where the
        request goes first: the one learned for its most specific known key, else the anchor's hash
        favourite, if it is within the bound; else the next in the anchor's hash order within the
        bound (consistent hashing with bounded loads); else the usual order."""
        affinity = request.affinity
        if not affinity:
            return AffinityChoice(None, None, None, "the request has no affinity key")
        eligible = {c.peer_id: c for c in ranked if c.eligible}
        loads = [c.load for c in eligible.values()]
        cap = load_cap(loads)
        # Decode speed only: the prefill a cache hit saves is in the TTFT term, and a provider's
        # delivered TTFT swings with its cache (a miss prefills the whole prompt); its load is the
        # bound's to judge (with it, one more stream of ours made a provider "too slow").
        best = min((c.alone for c in eligible.values() if c.speed_known), default=0.0)
        # Too slow only on a benchmark's evidence: a provider with none is scored near the
        # pessimistic prior until it has delivered much (an honest rig earns its speed), and
        # refusing it the prefixes hashed to it would keep it unused, and unmeasured, for ever.

        def refusal(peer: str, best: float = best) -> str:
            c = eligible.get(peer)
            if c is None:
                listed = any(r.peer_id == peer for r in ranked)
                return "not eligible" if listed else "not eligible or no longer known (banned, out of region, gone)"
            if c.load + 1 > cap:
                return f"over the load bound ({c.load:g} + 1 > {cap} of {len(loads)} providers)"
            if c.speed_known and c.alone > MAX_SLOWDOWN * best:
                return f"too slow (decodes alone in {c.alone:.2f} s > {MAX_SLOWDOWN:g} × the best {best:.2f} s)"
            return ""

        known = self.affinities.known(affinity, now)
        order = rendezvous(affinity.anchor, eligible) if affinity.anchor is not None else []
        if known is not None:
            key, wanted = known
        elif order:
            key, wanted = None, order[0]
        else:
            return AffinityChoice(None, None, None, "no provider learned for its keys, none to hash to")
        why = refusal(wanted)
        if not why:
            how = "learned" if key is not None else "hashed"
            return AffinityChoice(key, wanted, wanted, f"{how}, within the bound ({cap})")
        # Spill as consistent hashing with bounded loads does: to the next provider in the anchor's
        # hash order within the bound, the same for every consumer (its cache then holds it too).
        # A spill target is judged against the provider it relieves, not the best: the router believes
        # a provider it used little near its pessimistic prior, and an overloaded one must shed load.
        relieved = eligible[wanted].alone if wanted in eligible else best
        spill = next((p for p in order if p != wanted and not refusal(p, max(best, relieved))), None)
        if spill is None:
            return AffinityChoice(key, wanted, None, why)
        return AffinityChoice(key, wanted, spill, f"{why}; spilled to {spill[-8:]}, next in hash order")

    def rank(
        self,
        ads: Sequence[CapabilityAd],
        request: RouteRequest,
        paths: Mapping[str, PathInfo],
        now: float,
    ) -> list[Candidate]:
        """Every provider scored, eligible ones first, best first (``garage route``)."""
        scored = [self.score(ad, request, paths.get(ad.peer_id, PathInfo()), now) for ad in ads]
        return sorted(scored, key=lambda c: (not c.eligible, c.estimate, c.peer_id))

    def choose(
        self,
        ads: Sequence[CapabilityAd],
        request: RouteRequest,
        paths: Mapping[str, PathInfo],
        now: float,
    ) -> list[Candidate]:
        """The eligible ones of ``ads`` in the order to try them (give it a ``shortlist``: it scores
        every ad)."""
        ranked = [c for c in self.rank(ads, request, paths, now) if c.eligible]
        if len(ranked) < 2:
            return ranked
        if request.affinity:
            target = self.affinity(ranked, request, now).target
            if target is not None:
                return [c for c in ranked if c.peer_id == target] + [c for c in ranked if c.peer_id != target]
        a, b = self._rng.sample(ranked, 2)
        first = b if b.estimate < a.estimate else a  # a tie goes to the random draw
        return [first] + [c for c in ranked if c is not first]
