"""Signed capability ads and the peer table they fill.

Every peer gossips an ad on ``garage/caps/1``: who it is, where to dial it,
which models it serves, a sequence number and a time to live. The ad is
signed by the peer's own key (independently of gossipsub's per-message
signature, so that any peer can forward it). The wire form is
``signature (64 bytes) | payload (JSON)``; the signature covers a domain tag
and the exact payload bytes, so no canonical re-encoding is needed.

The table keeps the newest ad per peer and forgets it when it expires. An ad
lives ``ttl`` seconds from its issue time, plus MAX_CLOCK_SKEW for an issuer
whose clock is slow, and never longer than ``ttl`` from when it reached us (a
relayed ad must not outlive what its author meant by much); a replayed old ad
is refused by its sequence number. An ad its author delivered itself that is
out of that window tells us the author's clock is off (``PeerTable.clock_skew``).

Whom to blame for a bad ad (``PeerTable.offer``): whoever delivered bytes that
do not verify (a relay verified every ad before storing it, and serves it
unchanged); the author, for a signed ad that is not valid, only when the author
delivered it itself; nobody for an ad that is stale, a duplicate, or does not
fit in the table (it was valid when the relay got it).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from operator import attrgetter

from pydantic import Field, field_validator

from .endpoints import DEFAULT_PATH_IDS, MAX_PATH_IDS, PATH_ID_PATTERN, path_id
from .errors import PeerFault
from .identity import Identity, IdentityError, peer_id_from_public_key, verify
from .limits import Limiter, Limits
from .messages import Load as Load  # ads carry it; defined with the frames that carry it too
from .messages import WireModel, decode_json
from .provider_index import IndexedSet, ProviderIndex
from .wire import HEADER_SIZE

PATH_ID = re.compile(PATH_ID_PATTERN.strip("^$"))
TOPIC_CAPS = "garage/caps/1"
AD_DOMAIN = b"garage-caps-ad/1\n"
MAX_AD_BYTES = 8 * 1024
"""An honest ad is about 1 KB (a few models, a dozen addresses); 8 KiB leaves room for a large
rig without letting one ad weigh as much as sixty."""
MAX_AD_ADDRS = 24
"""Addresses in an ad: TCP and QUIC on a handful of interfaces, plus relay reservations."""
MAX_AD_MODELS = 16
"""Models in an ad: one per backend, and a rig rarely runs more than a few."""
MAX_AD_GPU_KINDS = 16
"""Kinds of GPU in an ad (cards of one model and memory size are one kind with a count)."""
MAX_TTL = 24 * 3600.0
"""The longest ad life: ads are refreshed on change and by a heartbeat that stretches with the mesh
(``core.ad_schedule``, up to 12 h), and live two heartbeats."""
MAX_CLOCK_SKEW = 60.0
"""How far a peer's clock may be from ours, either way, and its ads still count. Consumer PCs
without working NTP drift by tens of seconds: without this allowance a peer 20 s slow would lose its
ads that much early. Past it, ads are dropped (not a fault)."""
SERVE_MARGIN = 5.0
"""A table serves an ad only while it has this long left to live on our clock, and while it is
within its ttl of its issue time on our clock, so that a receiver whose clock runs up to
MAX_CLOCK_SKEW ahead of ours still takes it."""
MAX_SKEWED_PEERS = 256
"""Peers whose clock we remember as off (``PeerTable.clock_skew``): the latest ones."""
MAX_TABLE_PEERS = 4096
"""Ads a table holds at most."""
MAX_TABLE_BYTES = 8 * 1024 * 1024
"""Signed bytes a table holds at most (what it keeps, and serves, of other peers' ads)."""
SOURCE_SHARE = 0.25
"""The part of the table one source (the connection ads came through) may fill with ads of peers
we are not connected to: one hostile connection cannot evict everyone else's."""
TABLE_PAGE_ADS = 512
"""Ads in one answer to a table request (besides the server's own): a joining peer learns the rest by gossip."""
TABLE_PAGE_BYTES = 1024 * 1024
"""Signed bytes in one answer to a table request."""
TABLE_ANSWER_ADS = TABLE_PAGE_ADS + 1
"""Ads (one frame each) in one answer to a table request: a page and the server's own ad."""
TABLE_CONTROL_BYTES = 256
"""Bytes of a table request or of the answer's cursor (small JSON) at most."""
HAVE_DIGEST_BYTES = 8
"""Bytes of an ad's digest in a have-list (``ad_digest``): 2⁶⁴ makes a collision among a table's
ads, which would only withhold one ad from one answer, a non-event."""
TABLE_HAVE_BYTES = TABLE_PAGE_ADS * HAVE_DIGEST_BYTES
"""Bytes of a have-list at most (a TABLE_HAVE frame): the digests of a page of ads."""
TABLE_ANSWER_BYTES = TABLE_CONTROL_BYTES + TABLE_PAGE_BYTES + MAX_AD_BYTES + (TABLE_ANSWER_ADS + 1) * HEADER_SIZE
"""Bytes of one answer on the stream at most, frame headers included: the receiver's bound on what
an honest server sends (``PeerTable.answer``: its cursor, its own ad and a page)."""
TABLE_FETCH_GAP = 5.0
"""An honest peer asks one peer for its table at most once in this many seconds."""
TABLE_REQUESTS = Limits(rpm=30, concurrency=2)
"""Table requests served per peer: two and a half times what TABLE_FETCH_GAP lets an honest one ask."""
AD_RATE = Limits(rpm=120)
"""New ads taken per gossip publisher: twice what an honest one publishes at most (one a second)."""


class Benchmark(WireModel):
    """What ``garage bench`` measured on a backend."""

    single_stream_tps: float = Field(ge=0, le=1e7)
    """Generated tokens per second of one stream alone."""
    aggregate_tps: float = Field(ge=0, le=1e8)
    """Generated tokens per second over ``concurrency`` parallel streams."""
    concurrency: int = Field(ge=1, le=4096)
    """How many streams ran at once for ``aggregate_tps``."""
    ttft_p50_ms: float = Field(ge=0, le=3.6e6)
    """Median time to first token of one stream alone, in milliseconds."""
    measured_at: float = Field(ge=0)
    """Unix time of the measurement."""


class ModelCard(WireModel):
    """The fields of a backend's ``/v1/models`` entry that clients read (vLLM's ``ModelCard``;
    ``context_length`` is its ``max_model_len``). A field the backend sent longer than its limit
    is left out rather than cut: the ad stays small (MAX_AD_BYTES) and says nothing untrue."""

    owned_by: str | None = Field(default=None, max_length=64)
    """Who owns the model, as the backend says (vLLM: ``vllm``)."""
    root: str | None = Field(default=None, max_length=256)
    """The model the backend loaded: a hub id or a path on the provider's machine."""
    parent: str | None = Field(default=None, max_length=256)
    """The base model of an adapter (a LoRA), else None."""


class ModelOffer(WireModel):
    """One model a peer serves."""

    name: str = Field(min_length=1, max_length=256)
    """The model name clients ask for (the OpenAI ``model`` field)."""
    context_length: int | None = Field(default=None, ge=1, le=10_000_000)
    """Longest context the backend accepts, if known."""
    quantization: str | None = Field(default=None, max_length=64)
    """Weight format, e.g. ``fp16`` or ``awq``, if known."""
    max_concurrency: int | None = Field(default=None, ge=1, le=1_000_000)
    """Requests the peer admits at once for this model."""
    benchmark: Benchmark | None = None
    """The latest benchmark of the backend, if one was run."""
    load: Load | None = None
    """Live load when the ad was made."""
    card: ModelCard | None = None
    """What the backend's ``/v1/models`` says of the model, for the endpoint's ``/v1/models``."""
    paths: tuple[str, ...] | None = Field(default=None, max_length=MAX_PATH_IDS)
    """Ids of the endpoint paths served for the model (core/endpoints.py ``PATH_IDS``: ``chat``,
    ``embeddings``, ``tokenize``…), as the backend publishes them; None (an ad from before them):
    chat and completions. Ids this peer does not know are a newer peer's: kept, never routed to."""

    @field_validator("paths")
    @classmethod
    def _path_ids(cls, paths: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if paths is not None and not all(PATH_ID.fullmatch(p) for p in paths):
            raise ValueError("a path id is not a short lowercase name")
        return paths

    def serves(self, path: str) -> bool:
        """Whether the model is served on endpoint ``path``."""
        pid = path_id(path)
        return pid is not None and pid in (DEFAULT_PATH_IDS if self.paths is None else self.paths)


class GpuSpec(WireModel):
    """A kind of GPU in the rig."""

    name: str = Field(min_length=1, max_length=128)
    """Marketing name, as nvidia-smi reports it."""
    vram_mib: int = Field(ge=0, le=10_000_000)
    """Memory of one card, MiB."""
    count: int = Field(default=1, ge=1, le=1024)
    """How many such cards."""


class Hardware(WireModel):
    """The rig's accelerators; no GPUs means the CPU serves."""

    gpus: tuple[GpuSpec, ...] = Field(default=(), max_length=MAX_AD_GPU_KINDS)
    """GPUs by kind; empty on a CPU-only peer."""

    @property
    def label(self) -> str:
        """``2x RTX 4090 (24564 MiB)`` or ``cpu``."""
        if not self.gpus:
            return "cpu"
        return ", ".join(f"{g.count}x {g.name} ({g.vram_mib} MiB)" for g in self.gpus)


class CapabilityAd(WireModel):
    """What a peer tells the mesh about itself."""

    peer_id: str = Field(min_length=1, max_length=128)
    """The advertising peer."""
    public_key: str = Field(min_length=64, max_length=64)
    """Its ed25519 public key, hex; must hash to ``peer_id``."""
    seq: int = Field(ge=0, lt=2**63)
    """Strictly increasing per peer; an ad with a seq we have seen is old news."""
    issued_at: float = Field(ge=0, allow_inf_nan=False)
    """Unix time the ad was made, on the issuer's clock."""
    ttl: float = Field(gt=0, le=MAX_TTL)
    """Seconds the ad stays valid."""
    addrs: tuple[str, ...] = Field(default=(), max_length=MAX_AD_ADDRS)
    """Multiaddrs where the peer can be dialled."""
    models: tuple[ModelOffer, ...] = Field(default=(), max_length=MAX_AD_MODELS)
    """Models the peer serves now; empty means none (or withdrawn)."""
    version: str = Field(default="", max_length=64)
    """The peer's software version."""
    hardware: Hardware = Hardware()
    """What the peer serves with."""
    region: str | None = Field(default=None, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    """Self-declared location, e.g. ``se-sto``; ``x-garage-region: se`` matches it."""
    relay: bool = False
    """The peer offers a circuit relay (v2) to peers behind NAT."""

    @field_validator("addrs")
    @classmethod
    def _short_addrs(cls, addrs: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(a) > 320 for a in addrs):
            raise ValueError("address longer than 320 characters")
        return addrs


def sign_ad(identity: Identity, ad: CapabilityAd) -> bytes:
    """The wire bytes of a signed ad."""
    payload = ad.model_dump_json(exclude_none=True).encode()
    return identity.sign(AD_DOMAIN + payload) + payload


def make_ad(
    identity: Identity,
    *,
    seq: int,
    now: float,
    ttl: float,
    addrs: tuple[str, ...],
    models: tuple[ModelOffer, ...],
    version: str,
    hardware: Hardware = Hardware(),
    region: str | None = None,
    relay: bool = False,
) -> CapabilityAd:
    """An unsigned ad for ``identity``; without the models' cards if they would make it too big
    to be taken (MAX_AD_BYTES: many models with long ``root`` paths)."""
    ad = CapabilityAd(
        peer_id=identity.peer_id,
        public_key=identity.public_key.hex(),
        seq=seq,
        issued_at=now,
        ttl=ttl,
        addrs=addrs,
        models=models,
        version=version,
        hardware=hardware,
        region=region,
        relay=relay,
    )
    signed_size = len(ad.model_dump_json(exclude_none=True)) + 64  # sign_ad's payload and signature
    if any(m.card is not None for m in models) and signed_size > MAX_AD_BYTES:
        ad = ad.model_copy(update={"models": tuple(m.model_copy(update={"card": None}) for m in models)})
    return ad


class AdRejected(Exception):
    """A valid ad that the table does not take (old or duplicate seq, no room): not a fault."""


class AdStale(AdRejected):
    """An ad that has expired, or claims to be issued far in our future: dropped, whoever passed it on."""

    def __init__(self, reason: str, ad: CapabilityAd | None = None) -> None:
        super().__init__(reason)
        self.ad = ad
        """The ad, whose issue time says how far off its author's clock is if it came from the author."""


class AdContentFault(PeerFault):
    """An ad its author signed that is not a valid ad: the author's fault, not a relay's."""

    def __init__(self, reason: str, author: str) -> None:
        super().__init__(reason)
        self.author = author


def _claimed_author(payload: bytes) -> tuple[str, str]:
    """The peer id and public key (hex) an ad payload names; PeerFault if it names none, or a key
    that is not the id's."""
    try:
        fields = json.loads(payload)
    except (ValueError, RecursionError):
        raise PeerFault("ad payload is not JSON") from None
    peer_id = fields.get("peer_id") if isinstance(fields, dict) else None
    public_key = fields.get("public_key") if isinstance(fields, dict) else None
    if not isinstance(peer_id, str) or not isinstance(public_key, str) or len(public_key) != 64:
        raise PeerFault("ad names no author")
    try:
        derived = peer_id_from_public_key(bytes.fromhex(public_key))
    except (ValueError, IdentityError):
        raise PeerFault("ad carries an invalid public key") from None
    if derived != peer_id:
        raise PeerFault("ad's peer id does not match its public key")
    return peer_id, public_key


def expiry(ad: CapabilityAd, now: float) -> float:
    """Local time ``ad`` stops counting, having reached us at ``now``: ``ttl`` from its issue time
    plus MAX_CLOCK_SKEW (its author's clock may be slow), and at most ``ttl`` from ``now`` (an issue
    time in our future does not lengthen it), through whomever it came."""
    return min(now + ad.ttl, ad.issued_at + ad.ttl + MAX_CLOCK_SKEW)


def check_fresh(ad: CapabilityAd, now: float) -> float:
    """AdStale if ``ad`` no longer counts at ``now``, or claims to be issued far in our future;
    else its ``expiry``."""
    if ad.issued_at > now + MAX_CLOCK_SKEW:
        raise AdStale("ad issued too far in our future (skewed clock)", ad)
    expires_at = expiry(ad, now)
    if expires_at <= now:
        raise AdStale("ad expired", ad)
    return expires_at


def open_ad(data: bytes, now: float) -> CapabilityAd:
    """Verify and parse a signed ad.

    PeerFault if the bytes are not an ad its author signed (whoever delivered them is at fault);
    AdContentFault if the author signed something that is not a valid ad; AdStale if it is
    expired or from the future (nobody's fault).
    """
    if len(data) > MAX_AD_BYTES:
        raise PeerFault(f"ad of {len(data)} bytes exceeds {MAX_AD_BYTES}")
    if len(data) < 64 + 2:
        raise PeerFault("ad too short")
    signature, payload = data[:64], data[64:]
    # The signature is checked before the fields, so that a bad field is pinned on the author.
    author, public_key = _claimed_author(payload)
    if not verify(bytes.fromhex(public_key), signature, AD_DOMAIN + payload):
        raise PeerFault("ad signature does not verify")
    try:
        ad = decode_json(CapabilityAd, payload)
    except PeerFault as exc:
        raise AdContentFault(str(exc), author) from None
    if (ad.peer_id, ad.public_key) != (author, public_key):
        # Two JSON parsers read the payload; an ad they read differently is a forgery attempt.
        raise PeerFault("ad names two authors")
    check_fresh(ad, now)
    return ad


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the table knows of one peer."""

    ad: CapabilityAd
    """The newest valid ad."""
    expires_at: float
    """Local time after which the ad no longer counts (``expiry``)."""
    received_at: float
    """Local time the ad arrived."""
    wire: bytes = b""
    """The signed ad as received, to pass on to peers that ask for our table."""
    source: str = ""
    """The peer whose connection brought the ad: the author itself, a table relay or a gossip forwarder."""
    first_seen: float = 0.0
    """Local time the table first took an ad of this peer (kept across its newer ads)."""
    arrival: int = 0
    """Order of arrival in this table (1, 2, …): a table request asks for what arrived after a cursor."""

    @property
    def direct(self) -> bool:
        """The author itself delivered the ad."""
        return self.source == self.ad.peer_id


def ad_digest(wire: bytes) -> bytes:
    """A signed ad's digest in a have-list."""
    return hashlib.sha256(wire).digest()[:HAVE_DIGEST_BYTES]


def parse_have(payload: bytes) -> frozenset[bytes]:
    """The digests of a TABLE_HAVE frame; PeerFault if it is not a whole number of them."""
    if len(payload) % HAVE_DIGEST_BYTES:
        raise PeerFault(f"a have-list of {len(payload)} bytes, not a multiple of {HAVE_DIGEST_BYTES}")
    return frozenset(payload[i : i + HAVE_DIGEST_BYTES] for i in range(0, len(payload), HAVE_DIGEST_BYTES))


def servable(entry: PeerEntry, now: float) -> bool:
    """Whether a table may pass ``entry`` on at ``now``: it has SERVE_MARGIN left to live, and is
    within its ttl of its issue time, so a receiver whose clock is up to MAX_CLOCK_SKEW ahead of
    ours still takes it (``expiry``). A slow author's ad therefore travels by gossip only."""
    return entry.expires_at - now >= SERVE_MARGIN and now < entry.ad.issued_at + entry.ad.ttl


def choose_page(
    entries: Iterable[PeerEntry], now: float, max_ads: int, max_bytes: int, favoured: Collection[str]
) -> list[PeerEntry]:
    """The entries a table serves, at most ``max_ads`` and ``max_bytes`` of signed ads: only those a
    receiver will still take (``servable``); those of ``favoured`` peers (the ones we are connected
    to), or that came from their author, first; then the longest known (a sybil flood is the newest).
    The daemon's table and the simulator's both serve by this rule."""
    live = sorted(
        (e for e in entries if servable(e, now)),
        key=lambda e: (not (e.direct or e.ad.peer_id in favoured), e.first_seen, e.ad.peer_id),
    )
    out: list[PeerEntry] = []
    total = 0
    for entry in live[:max_ads]:
        total += len(entry.wire)
        if total > max_bytes:
            break
        out.append(entry)
    return out


class TableRequest(WireModel):
    """What a peer asks a table server for (the first frame of ``/garage/caps/2.0.0``)."""

    epoch: int | None = Field(default=None, ge=0, lt=2**63)
    """The server's table epoch the cursor belongs to; another epoch (a restarted server) means from the start."""
    since: int | None = Field(default=None, ge=0, lt=2**63)
    """The cursor the server gave last time: only ads that arrived after it. None: the first page
    by ``choose_page``; 0: everything, in arrival order, a page at a time."""
    have_follows: bool = False
    """A TABLE_HAVE frame follows: the digests of ads the asker holds, which a first page leaves out
    (a server of an older version ignores the field and never reads the frame)."""


class TableCursor(WireModel):
    """The server's answer header: where the asker continues next time."""

    epoch: int = Field(ge=0, lt=2**63)
    """The server's table epoch."""
    cursor: int = Field(ge=0, lt=2**63)
    """Ask with ``since`` = this next time."""


@dataclass(frozen=True, slots=True)
class TableAnswer:
    """One answer to a table request."""

    ads: list[bytes]
    """The server's own ad, then one page of signed ads."""
    cursor: TableCursor
    """Where the asker continues."""


@dataclass(frozen=True, slots=True)
class Intake:
    """What became of one ad offered to the table."""

    entry: PeerEntry | None = None
    """The stored entry, if the table took the ad."""
    blame: str | None = None
    """The peer at fault for the ad, if anyone is."""
    reason: str = ""
    """Why the ad was not taken."""
    flood: bool = False
    """Refused because its publisher's new ads came faster than AD_RATE."""
    clock_skew: float | None = None
    """Seconds the deliverer's clock is off from ours (its own ad was out of its time), the first
    time the table notices; None otherwise."""


_offer_name = attrgetter("name")


class PeerTable:
    """Newest ad per peer, with expiry; remembers seqs so replays are refused.

    Bounded in ads and bytes. When full, a new peer's ad takes the place of an ad of a peer we
    are not connected to, from the source holding the most such ads (its latest arrivals first);
    one that would come from that source itself is refused, so incumbents keep their place.
    """

    def __init__(
        self,
        self_peer_id: str | None = None,
        max_peers: int = MAX_TABLE_PEERS,
        admits: Callable[[str], bool] = lambda peer_id: True,
        *,
        max_bytes: int = MAX_TABLE_BYTES,
        epoch: int = 0,
    ) -> None:
        self._self = self_peer_id
        self.epoch = epoch
        """Tells this table's arrival numbers from those of an earlier run (the caller draws it at random)."""
        self._arrivals = 0
        self._admits = admits
        self._entries: dict[str, PeerEntry] = {}
        self._wires: dict[bytes, str] = {}
        """The signed bytes of every held ad, to its peer. Every table a joining peer fetches holds
        most of the mesh, and a peer fetching a joiner's table gets back its own: the same bytes
        offered again are known without verifying and parsing them again (~0.4 ms an ad)."""
        # Highest seq seen per peer, kept after expiry (bounded, oldest dropped).
        self._seen_seq: OrderedDict[str, int] = OrderedDict()
        self._max_peers = max_peers
        self._max_bytes = max_bytes
        self._bytes = 0
        self._held: Counter[str] = Counter()
        """Entries per source."""
        self._held_bytes: Counter[str] = Counter()
        """Signed bytes per source."""
        self._relayed = 0
        """Entries another peer brought (not ``direct``): with none, no entry is evictable by source."""
        # (time, arrival, peer id) of every entry, oldest first; an item whose entry was replaced or
        # dropped since is stale and skipped. Expiry and "oldest received" cost O(log n), not a scan.
        self._by_expiry: list[tuple[float, int, str]] = []
        self._by_received: list[tuple[float, int, str]] = []
        self._own_seqs: OrderedDict[int, None] = OrderedDict()
        self._suspended: OrderedDict[str, PeerEntry] = OrderedDict()
        """Entries ``suspend`` took out, oldest first (at most ``max_peers``), for ``resume``."""
        self._publishers = Limiter(max_parties=4 * max_peers)
        self._index = ProviderIndex()
        """The peers held, by model and region, for the router's random draws."""
        self.dealt_with: Callable[[], Collection[str]] = frozenset
        """Peers whose ads the table keeps first (the daemon: those we are connected to)."""
        self.impostor_addrs: tuple[str, ...] = ()
        """Addresses of another peer signing ads with OUR key (a copied identity file)."""
        self.clock_skew: OrderedDict[str, float] = OrderedDict()
        """Peer → seconds its clock is off from ours (negative: slow), for peers whose own ads
        reached us out of their time (beyond MAX_CLOCK_SKEW); forgotten once one fits again."""

    def note_own_seq(self, seq: int) -> None:
        """Remember a seq we issued, to tell our ads from an impostor's."""
        self._own_seqs[seq] = None
        while len(self._own_seqs) > 4096:
            self._own_seqs.popitem(last=False)

    def offer(self, wire: bytes, now: float, *, via: str, publisher: str | None = None) -> Intake:
        """Verify and store a signed ad that ``via``'s connection brought, and say whom to blame.

        ``publisher`` is the gossip message's signer (gossipsub with strict signing: forwarders
        cannot alter what it published); None for an ad from a table.
        """
        deliverer = publisher or via
        held = self._wires.get(wire)
        if held is not None and self._entries[held].expires_at > now:
            if held == deliverer:
                self.clock_skew.pop(held, None)  # its clock fits again, as below
            return Intake(reason="an ad the table holds already")
        try:
            ad = open_ad(wire, now)
        except AdContentFault as exc:
            # Only the author made these fields; a relay passing them on cannot be held to them.
            return Intake(blame=exc.author if exc.author in (via, publisher) else None, reason=str(exc))
        except PeerFault as exc:
            return Intake(blame=deliverer, reason=str(exc))
        except AdStale as exc:
            skew = self._note_skew(exc.ad, deliverer, now)
            return Intake(reason=str(exc), clock_skew=skew)
        if ad.peer_id == deliverer:
            self.clock_skew.pop(ad.peer_id, None)  # its clock fits again
        if publisher is not None and self.is_new(ad):
            # The flood rule counts what a publisher put on the topic, never the author of what
            # someone else republished.
            if not self._publishers.admit(publisher, AD_RATE, now).ok:
                return Intake(blame=publisher, reason="new ads faster than one a second", flood=True)
            self._publishers.done(publisher, 0, now)
        try:
            return Intake(entry=self.apply(ad, now, wire, source=via))
        except AdRejected as exc:
            return Intake(reason=str(exc))

    def _note_skew(self, ad: CapabilityAd | None, deliverer: str, now: float) -> float | None:
        """Remember how far off the clock of an author that delivered its own stale or future ad is;
        the skew if this is news. A relayed ad says nothing of its author's clock: it may be old."""
        if ad is None or ad.peer_id != deliverer:
            return None
        known = deliverer in self.clock_skew
        self.clock_skew[deliverer] = ad.issued_at - now
        self.clock_skew.move_to_end(deliverer)
        while len(self.clock_skew) > MAX_SKEWED_PEERS:
            self.clock_skew.popitem(last=False)
        return None if known else ad.issued_at - now

    def apply(self, ad: CapabilityAd, now: float, wire: bytes = b"", source: str = "") -> PeerEntry:
        """Store a verified ad (``source`` brought it; the author if not given).

        AdRejected if it is not newer than what we have, or there is no room for it.
        """
        # A consumer's table takes every provider's ad, so this runs often: fields read once into locals.
        peer_id, seq = ad.peer_id, ad.seq
        if not self._admits(peer_id):
            raise AdRejected("a peer this peer's allow/deny lists do not admit")
        if peer_id == self._self:
            if seq not in self._own_seqs:
                # Validly signed with our key, yet not issued by us.
                self.impostor_addrs = ad.addrs
                raise AdRejected("an ad signed with our key that we did not issue")
            raise AdRejected("our own ad")
        seen = self._seen_seq
        last = seen.get(peer_id)
        if last is not None and seq <= last:
            raise AdRejected(f"seq {seq} is not newer than {last}")
        expires_at = check_fresh(ad, now)
        source = source or peer_id
        old = self._entries.get(peer_id)
        if old is not None:
            self._drop(peer_id)
        else:
            self._make_room(peer_id, source, len(wire), now)
        seen[peer_id] = seq
        if last is not None:
            seen.move_to_end(peer_id)  # a new key is last already
        if self._suspended:
            self._suspended.pop(peer_id, None)  # a newer ad: nothing to resume
        while len(seen) > 2 * self._max_peers:
            gone, _ = seen.popitem(last=False)
            if gone in self._entries:
                self._drop(gone)
        arrival = self._arrivals = self._arrivals + 1
        first_seen = now if old is None else old.first_seen
        entry = PeerEntry(
            ad=ad,
            expires_at=expires_at,
            received_at=now,
            wire=wire,
            source=source,
            first_seen=first_seen,
            arrival=arrival,
        )
        self._entries[peer_id] = entry
        if wire:
            self._wires[wire] = peer_id
        if source != peer_id:
            self._relayed += 1
        heapq.heappush(self._by_expiry, (expires_at, arrival, peer_id))
        heapq.heappush(self._by_received, (now, arrival, peer_id))
        if len(self._by_expiry) > 2 * len(self._entries) + 64:
            self._reindex()
        self._index.add(peer_id, map(_offer_name, ad.models), ad.region)
        self._bytes += len(wire)
        # get, not Counter's own lookup: a missing source (every direct ad's) is a Python-level call there.
        self._held[source] = self._held.get(source, 0) + 1
        self._held_bytes[source] = self._held_bytes.get(source, 0) + len(wire)
        return entry

    def _current(self, item: tuple[float, int, str]) -> bool:
        """Whether a heap item still stands for the entry held (not one replaced or dropped since)."""
        entry = self._entries.get(item[2])
        return entry is not None and entry.arrival == item[1]

    def _reindex(self) -> None:
        """Rebuild the heaps from the entries held (drops their stale items)."""
        held = self._entries.values()
        self._by_expiry = [(e.expires_at, e.arrival, e.ad.peer_id) for e in held]
        self._by_received = [(e.received_at, e.arrival, e.ad.peer_id) for e in held]
        heapq.heapify(self._by_expiry)
        heapq.heapify(self._by_received)

    def _oldest_received(self) -> PeerEntry:
        """The entry received first (of equal times, the first to arrive), from a non-empty table."""
        while not self._current(self._by_received[0]):
            heapq.heappop(self._by_received)
        return self._entries[self._by_received[0][2]]

    def _drop(self, peer_id: str) -> None:
        entry = self._entries.pop(peer_id)
        if self._wires.get(entry.wire) == peer_id:
            del self._wires[entry.wire]
        self._relayed -= not entry.direct
        self._index.remove(peer_id, (m.name for m in entry.ad.models), entry.ad.region)
        self._bytes -= len(entry.wire)
        self._held[entry.source] -= 1
        self._held_bytes[entry.source] -= len(entry.wire)
        if self._held[entry.source] <= 0:
            del self._held[entry.source], self._held_bytes[entry.source]

    def _make_room(self, peer_id: str, source: str, size: int, now: float) -> None:
        """Room for a new peer's ad from ``source``; AdRejected if it is not to have any."""
        if source == peer_id and len(self._entries) < self._max_peers and self._bytes + size <= self._max_bytes:
            return  # the common case, in short: its author brought it and the table has room
        dealt_with = set(self.dealt_with())
        favoured = source == peer_id or peer_id in dealt_with
        if not favoured and (
            self._held[source] >= self._max_peers * SOURCE_SHARE
            or self._held_bytes[source] + size > self._max_bytes * SOURCE_SHARE
        ):
            raise AdRejected(f"{source} brought its share of the table already")

        def full() -> bool:
            return len(self._entries) >= self._max_peers or self._bytes + size > self._max_bytes

        if not full():
            return

        def evictable(entry: PeerEntry) -> bool:
            return not entry.direct and entry.ad.peer_id not in dealt_with

        self.expire(now)
        while full():
            held: Counter[str] = (
                Counter(e.source for e in self._entries.values() if evictable(e)) if self._relayed else Counter()
            )
            if held:
                biggest, count = held.most_common(1)[0]
                if not favoured and count <= held[source] + 1:
                    raise AdRejected("the table is full")
                victim = max(
                    (e for e in self._entries.values() if e.source == biggest and evictable(e)),
                    key=lambda e: e.first_seen,
                )
            elif favoured:
                victim = self._oldest_received()
            else:
                raise AdRejected("the table is full")
            self._drop(victim.ad.peer_id)

    def is_new(self, ad: CapabilityAd) -> bool:
        """Whether ``ad`` is newer than anything seen from its peer (a replay is not)."""
        last = self._seen_seq.get(ad.peer_id)
        return last is None or ad.seq > last

    def suspend(self, peer_id: str) -> bool:
        """Drop a peer's ad, keeping its seq: the same ad (from a table or a late gossip copy) is refused
        as old news, a newer one (the peer restarted, or its heartbeat) brings it back. For a provider
        found gone by its connection (ads live for hours: liveness is not their job). True if it was held."""
        entry = self._entries.get(peer_id)
        if entry is None:
            return False
        self._drop(peer_id)
        self._suspended[peer_id] = entry
        while len(self._suspended) > self._max_peers:
            self._suspended.popitem(last=False)
        return True

    def suspended(self, peer_id: str, now: float) -> PeerEntry | None:
        """The suspended entry of ``peer_id`` if its ad has not expired (its addresses, to try it again)."""
        entry = self._suspended.get(peer_id)
        return entry if entry is not None and entry.expires_at > now else None

    def resume(self, peer_id: str, now: float) -> bool:
        """Bring back a suspended ad: its peer was heard from again (a new connection to it), and its
        ad is still its newest and unexpired. Without this a peer back from a freeze stayed unrouted
        until its next heartbeat (minutes): its table answer carries the same ad, refused as old news.
        True if it came back."""
        entry = self._suspended.pop(peer_id, None)
        if entry is None or entry.expires_at <= now or self._seen_seq.get(peer_id) != entry.ad.seq:
            return False
        del self._seen_seq[peer_id]  # apply takes only what is newer than the seq it saw
        try:
            self.apply(entry.ad, now, entry.wire, entry.source)
        except AdRejected:  # no room any more, or expired by its issue time
            self._seen_seq[peer_id] = entry.ad.seq
            return False
        return True

    def forget(self, peer_id: str) -> None:
        """Drop a peer's ad and its seq now, as if we had never heard of it."""
        if peer_id in self._entries:
            self._drop(peer_id)
        self._seen_seq.pop(peer_id, None)
        self._suspended.pop(peer_id, None)

    def expire(self, now: float) -> list[str]:
        """Drop expired entries; return their peer ids (in order of arrival)."""
        found: list[tuple[int, str]] = []
        while self._by_expiry and self._by_expiry[0][0] <= now:
            item = heapq.heappop(self._by_expiry)
            if self._current(item):
                found.append((item[1], item[2]))
        gone = [pid for _, pid in sorted(found)]
        for pid in gone:
            self._drop(pid)
        return gone

    @property
    def size_bytes(self) -> int:
        """Signed bytes of the ads held."""
        return self._bytes

    def __len__(self) -> int:
        """Ads held (expired ones until the next ``expire``)."""
        return len(self._entries)

    def mesh_size(self) -> int:
        """Peers heard of: those held and those whose ads expired or were pushed out since (their
        seqs are remembered, up to twice ``max_peers``). The heartbeat's estimate of the mesh
        (``core.ad_schedule``): a full table would stop it at ``max_peers``."""
        return len(self._seen_seq)

    def get(self, peer_id: str, now: float) -> PeerEntry | None:
        entry = self._entries.get(peer_id)
        return entry if entry is not None and entry.expires_at > now else None

    def entries(self, now: float) -> list[PeerEntry]:
        """Live entries, in peer-id order (deterministic)."""
        return [e for pid, e in sorted(self._entries.items()) if e.expires_at > now]

    def page(self, now: float, max_ads: int, max_bytes: int, have: Collection[bytes] = ()) -> list[bytes]:
        """Signed ads to serve a peer that asks for our table, at most ``max_ads`` and ``max_bytes``
        (``choose_page``), leaving out those whose digest is in ``have``."""
        held = (e for e in self._entries.values() if e.wire and (not have or ad_digest(e.wire) not in have))
        return [e.wire for e in choose_page(held, now, max_ads, max_bytes, set(self.dealt_with()))]

    def have(self, now: float) -> bytes:
        """Our have-list (a TABLE_HAVE payload): the digests of up to TABLE_PAGE_ADS ads we hold, the
        latest arrived first. A table server leaves those out of our first page: a joiner's
        neighbours each held the mesh's ads already, and fetching its copy of them both ways on every
        new connection was most of what a joining mesh cost (issue 17)."""
        digests: list[bytes] = []
        for entry in reversed(self._entries.values()):
            if len(digests) >= TABLE_PAGE_ADS:
                break
            if entry.wire and entry.expires_at > now:
                digests.append(ad_digest(entry.wire))
        return b"".join(digests)

    def answer(
        self, own_ad: bytes, now: float, request: TableRequest = TableRequest(), have: Collection[bytes] = ()
    ) -> TableAnswer:
        """What a table server sends a peer that asks: its own ad, then one page (within
        TABLE_ANSWER_ADS and TABLE_ANSWER_BYTES once framed), and the cursor to ask from next time.

        A first request (no cursor, or one of another epoch) gets the page ``choose_page`` picks of
        the ads whose digests are not in ``have`` (the asker's have-list); if that was not all of
        them, the cursor is 0 and the asker pages through the rest in arrival order. A request with
        a cursor gets only what arrived after it: an idle mesh answers (almost) nothing, so periodic
        anti-entropy costs what changed, not the table's size.
        """
        if request.since is None or request.epoch != self.epoch:
            page = self.page(now, TABLE_PAGE_ADS, TABLE_PAGE_BYTES, have)
            servable_count = sum(
                1
                for e in self._entries.values()
                if e.wire and servable(e, now) and (not have or ad_digest(e.wire) not in have)
            )
            cursor = self._arrivals if len(page) == servable_count else 0
            return TableAnswer([own_ad, *page], TableCursor(epoch=self.epoch, cursor=cursor))
        # ``_entries`` is in arrival order (``apply`` drops a replaced entry and adds the new one last),
        # so what arrived after the cursor is its tail: O(what changed), not O(table).
        newer: list[PeerEntry] = []
        for entry in reversed(self._entries.values()):
            if entry.arrival <= request.since:
                break
            if entry.wire and servable(entry, now):
                newer.append(entry)
        newer.reverse()
        ads: list[bytes] = []
        total, cursor = 0, self._arrivals
        for entry in newer:
            total += len(entry.wire)
            if len(ads) >= TABLE_PAGE_ADS or total > TABLE_PAGE_BYTES:
                cursor = entry.arrival - 1  # the asker continues from this entry next time
                break
            ads.append(entry.wire)
        return TableAnswer([own_ad, *ads], TableCursor(epoch=self.epoch, cursor=cursor))

    def providers(self, model: str, now: float) -> list[PeerEntry]:
        """Live entries of peers serving ``model``, in peer-id order."""
        held = (self.get(peer_id, now) for peer_id in sorted(self._index.members(model)))
        return [e for e in held if e is not None]

    def serving(self, model: str, region: str | None = None) -> IndexedSet:
        """The peers held that serve ``model`` in ``region`` (a superset for a region deeper than
        the index's; expired ones until ``expire`` runs), for ``routing.Router.shortlist``'s draws."""
        return self._index.members(model, region)

    def live_ad(self, peer_id: str, now: float) -> CapabilityAd | None:
        """The ad of ``peer_id`` if it is held and has not expired."""
        entry = self.get(peer_id, now)
        return entry.ad if entry is not None else None

    def models(self, now: float) -> dict[str, list[str]]:
        """Model name → peer ids serving it."""
        out: dict[str, list[str]] = {}
        for entry in self.entries(now):
            for model in entry.ad.models:
                out.setdefault(model.name, []).append(entry.ad.peer_id)
        return out
