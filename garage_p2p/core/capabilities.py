"""Signed capability ads and the peer table they fill.

Every peer gossips an ad on ``garage/caps/1``: who it is, where to dial it,
which models it serves, a sequence number and a time to live. The ad is
signed by the peer's own key (independently of gossipsub's per-message
signature, so that any peer can forward it). The wire form is
``signature (64 bytes) | payload (JSON)``; the signature covers a domain tag
and the exact payload bytes, so no canonical re-encoding is needed.

The table keeps the newest ad per peer and forgets it when it expires. The
expiry is measured on the receiver's clock (``now`` + ttl), so clocks need not
agree; an ad whose issued_at is far from our clock is refused as stale, and a
replayed old ad is refused by its sequence number.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field, field_validator

from .errors import PeerFault
from .identity import Identity, IdentityError, peer_id_from_public_key, verify
from .messages import WireModel, decode_json

TOPIC_CAPS = "garage/caps/1"
AD_DOMAIN = b"garage-caps-ad/1\n"
MAX_AD_BYTES = 64 * 1024
MAX_TTL = 300.0
MAX_CLOCK_SKEW = 300.0
"""Ads claiming to be issued further than this from our clock are refused."""


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


class Load(WireModel):
    """How busy a backend is right now."""

    running: float = Field(default=0, ge=0, le=1e6)
    """Requests the backend is running (vLLM ``num_requests_running``)."""
    waiting: float = Field(default=0, ge=0, le=1e6)
    """Requests queued in the backend (vLLM ``num_requests_waiting``)."""
    kv_cache_usage: float | None = Field(default=None, ge=0, le=1)
    """Fraction of the KV cache in use, if the backend reports it."""
    in_flight: int = Field(default=0, ge=0, le=1_000_000)
    """Mesh requests this peer is serving for the model."""


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

    gpus: tuple[GpuSpec, ...] = Field(default=(), max_length=64)
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
    issued_at: float = Field(ge=0)
    """Unix time the ad was made, on the issuer's clock."""
    ttl: float = Field(gt=0, le=MAX_TTL)
    """Seconds the ad stays valid."""
    addrs: tuple[str, ...] = Field(default=(), max_length=32)
    """Multiaddrs where the peer can be dialled."""
    models: tuple[ModelOffer, ...] = Field(default=(), max_length=128)
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
        if any(len(a) > 512 for a in addrs):
            raise ValueError("address longer than 512 characters")
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
    """An unsigned ad for ``identity``."""
    return CapabilityAd(
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


def open_ad(data: bytes, now: float) -> CapabilityAd:
    """Verify and parse a signed ad; PeerFault saying why if it is not acceptable."""
    if len(data) > MAX_AD_BYTES:
        raise PeerFault(f"ad of {len(data)} bytes exceeds {MAX_AD_BYTES}")
    if len(data) < 64 + 2:
        raise PeerFault("ad too short")
    signature, payload = data[:64], data[64:]
    ad = decode_json(CapabilityAd, payload)
    try:
        public_key = bytes.fromhex(ad.public_key)
        derived = peer_id_from_public_key(public_key)
    except (ValueError, IdentityError):
        raise PeerFault("ad carries an invalid public key") from None
    if derived != ad.peer_id:
        raise PeerFault("ad's peer id does not match its public key")
    if not verify(public_key, signature, AD_DOMAIN + payload):
        raise PeerFault("ad signature does not verify")
    if abs(ad.issued_at - now) > MAX_CLOCK_SKEW:
        raise PeerFault("ad issued too far from our clock (stale or skewed)")
    return ad


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the table knows of one peer."""

    ad: CapabilityAd
    """The newest valid ad."""
    expires_at: float
    """Local time after which the ad no longer counts."""
    received_at: float
    """Local time the ad arrived."""
    wire: bytes = b""
    """The signed ad as received, to pass on to peers that ask for our table."""


class AdRejected(Exception):
    """A valid ad that the table does not take (old or duplicate seq): not a fault."""


class PeerTable:
    """Newest ad per peer, with expiry; remembers seqs so replays are refused."""

    def __init__(
        self,
        self_peer_id: str | None = None,
        max_peers: int = 10_000,
        admits: Callable[[str], bool] = lambda peer_id: True,
    ) -> None:
        self._self = self_peer_id
        self._admits = admits
        self._entries: dict[str, PeerEntry] = {}
        # Highest seq seen per peer, kept after expiry (bounded, oldest dropped).
        self._seen_seq: OrderedDict[str, int] = OrderedDict()
        self._max_peers = max_peers
        self._own_seqs: OrderedDict[int, None] = OrderedDict()
        self.impostor_addrs: tuple[str, ...] = ()
        """Addresses of another peer signing ads with OUR key (a copied identity file)."""

    def note_own_seq(self, seq: int) -> None:
        """Remember a seq we issued, to tell our ads from an impostor's."""
        self._own_seqs[seq] = None
        while len(self._own_seqs) > 4096:
            self._own_seqs.popitem(last=False)

    def apply(self, ad: CapabilityAd, now: float, wire: bytes = b"") -> PeerEntry:
        """Store a verified ad. AdRejected if it is not newer than what we have."""
        if not self._admits(ad.peer_id):
            raise AdRejected("a peer this peer's allow/deny lists do not admit")
        if ad.peer_id == self._self:
            if ad.seq not in self._own_seqs:
                # Validly signed with our key, yet not issued by us.
                self.impostor_addrs = ad.addrs
                raise AdRejected("an ad signed with our key that we did not issue")
            raise AdRejected("our own ad")
        last = self._seen_seq.get(ad.peer_id)
        if last is not None and ad.seq <= last:
            raise AdRejected(f"seq {ad.seq} is not newer than {last}")
        self._seen_seq[ad.peer_id] = ad.seq
        self._seen_seq.move_to_end(ad.peer_id)
        while len(self._seen_seq) > self._max_peers:
            old, _ = self._seen_seq.popitem(last=False)
            self._entries.pop(old, None)
        entry = PeerEntry(ad=ad, expires_at=now + ad.ttl, received_at=now, wire=wire)
        self._entries[ad.peer_id] = entry
        return entry

    def is_new(self, ad: CapabilityAd) -> bool:
        """Whether ``ad`` is newer than anything seen from its peer (a replay is not)."""
        last = self._seen_seq.get(ad.peer_id)
        return last is None or ad.seq > last

    def forget(self, peer_id: str) -> None:
        """Drop a peer's ad now (its seq stays remembered against replays)."""
        self._entries.pop(peer_id, None)

    def expire(self, now: float) -> list[str]:
        """Drop expired entries; return their peer ids."""
        gone = [pid for pid, e in self._entries.items() if e.expires_at <= now]
        for pid in gone:
            del self._entries[pid]
        return gone

    def get(self, peer_id: str, now: float) -> PeerEntry | None:
        entry = self._entries.get(peer_id)
        return entry if entry is not None and entry.expires_at > now else None

    def entries(self, now: float) -> list[PeerEntry]:
        """Live entries, in peer-id order (deterministic)."""
        return [e for pid, e in sorted(self._entries.items()) if e.expires_at > now]

    def providers(self, model: str, now: float) -> list[PeerEntry]:
        """Live entries of peers serving ``model``."""
        return [e for e in self.entries(now) if any(m.name == model for m in e.ad.models)]

    def models(self, now: float) -> dict[str, list[str]]:
        """Model name → peer ids serving it."""
        out: dict[str, list[str]] = {}
        for entry in self.entries(now):
            for model in entry.ad.models:
                out.setdefault(model.name, []).append(entry.ad.peer_id)
        return out
