"""The simulated peers: identity, place, role and what each one holds.

A peer here holds the daemon's own core objects: its ``Identity``, a
``PeerTable`` and a ``Router`` (consumers), a ``GpuMeter`` and its log in a
``LedgerState`` (providers), a replica ``LedgerState`` (sampled peers).
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..core.ad_schedule import AdSchedule
from ..core.admission import Admission
from ..core.capabilities import CapabilityAd, PeerTable, TableCursor
from ..core.deadlines import FirstByteHistory
from ..core.gpu_meter import GpuMeter
from ..core.identity import Identity
from ..core.ledger import ZERO_HASH, LedgerState
from ..core.request_policy import RequestPolicy
from ..core.routing import Router
from ..core.sync_partner import SyncPartner
from .hardware import GpuKind
from .metrics import ProviderRecord, RequestRecord
from .provider import SharedGpu

PROVIDER, CONSUMER, RELAY = "provider", "consumer", "relay"


def region_of(city: str) -> str:
    """``se-sto`` for Stockholm: an ad's region field (ASCII, lower case)."""
    ascii_name = unicodedata.normalize("NFKD", city).encode("ascii", "ignore").decode().lower()
    return "se-" + ascii_name[:3]


@dataclass(slots=True)
class Conn:
    """A consumer's connection to a provider, as the consumer sees it."""

    kind: str
    """``direct`` or ``relayed`` (until a hole punch makes it direct)."""
    ready: float
    """When the first stream can be opened."""
    session: int
    """The provider's session it reaches (a restarted provider answers an old one with a reset)."""
    relay: int | None = None
    """The relay carrying it, while relayed."""
    direct_at: float | None = None
    """When DCUtR makes it direct, if it will."""
    expires: float | None = None
    """When the relay cuts it (its per-connection time limit)."""
    dead: bool = False
    """The far end vanished without a word: the connection looks open but nothing comes back."""
    closed: bool = False
    """Reset or closed: requests still on their way find it gone."""
    active: set[int] = field(default_factory=set)
    """Requests running over it."""
    hung: list[tuple[Flight, int]] = field(default_factory=list)
    """Attempts (flight, attempt number) waiting on it since its far end vanished: liveness cuts them."""

    def kind_at(self, now: float) -> str:
        return "direct" if self.direct_at is not None and now >= self.direct_at else self.kind


@dataclass(slots=True)
class Flight:
    """One client request on its way: the consumer's side, driving ``core.request_policy``, and
    the provider side of its current attempt."""

    record: RequestRecord
    consumer: int
    request_id: str
    prompt_tokens: int
    policy: RequestPolicy
    """The request's policy: attempts, deadlines, bans, failover, errors."""
    looked_up: bool = False
    done: bool = False
    timer_at: float | None = None
    """When the policy's timer is next checked (one wake pending at a time)."""
    timer_token: int = 0
    """Names the pending wake; an older one is stale."""
    # The current attempt:
    attempt: int = 0
    """The policy's number of it (callbacks of an older attempt are ignored)."""
    provider: int | None = None
    conn: Conn | None = None
    head: bytes = b""
    """Its HEAD frame, as the consumer encoded it."""
    outstanding: str | None = None
    """The provider the router counts it against (``Router.started`` until ``finished``)."""
    path: str = ""
    """Its endpoint (a continuation's is ``/v1/completions``)."""
    prompt_len: int = 0
    """Its prompt tokens (a continuation's holds the answer so far)."""
    tokens: int = 0
    """Tokens it generates."""
    streamed: bool = True
    """Whether its provider streams (a non-streamed one sends its body at the end)."""
    fed: int = -1
    """Tokens the consumer has read of it (-1: not even the first chunk)."""
    fed_at: float = 0.0
    """When the consumer read its latest data."""
    back: float = 0.0
    """One-way time from its provider back to the consumer, with the mesh's overhead."""
    silent_from: float | None = None
    """When its provider went silent (vanished): nothing it sends after reaches the consumer."""
    why: str = ""
    """What the consumer's timer found when it last fired on the attempt (for the failure breakdown)."""
    noted: bool = False
    """Whether the attempt's ending is in the record's ``tried`` already."""
    # Provider side, while it runs there:
    key: int = 0
    arrived: float = 0.0
    mark: float = 0.0
    first_byte: float | None = None
    """When the provider sent its first token."""


@dataclass(slots=True)
class SimPeer:
    idx: int
    identity: Identity
    peer_id: str
    role: str
    city: str
    rng: random.Random
    """This peer's own random stream (its router draws from it)."""
    online: bool = False
    session: int = 0
    """Incremented each time it comes online."""
    online_since: float = 0.0
    # consumer
    table: PeerTable | None = None
    router: Router | None = None
    applied_seq: dict[int, int] = field(default_factory=dict)
    caught_up: dict[str, tuple[int, set[int]]] = field(default_factory=dict)
    """Per model, at its last catch-up: the length of ``World.published`` then, and the providers whose
    newest ad had not reached it yet (only those and the ones that published since can have news)."""
    conns: dict[int, Conn] = field(default_factory=dict)
    in_flight: int = 0
    first_bytes: FirstByteHistory = field(default_factory=FirstByteHistory)
    """How fast each provider started answering it (the first-byte deadline's history)."""
    # provider
    gpu_name: str = ""
    kind: GpuKind | None = None
    model: str = ""
    gpu: SharedGpu | None = None
    meter: GpuMeter | None = None
    flights: dict[int, Flight] = field(default_factory=dict)
    """Requests running on its GPU (admitted)."""
    waiting: dict[int, Flight] = field(default_factory=dict)
    """Requests in its admission line."""
    admission: Admission | None = None
    """Its slots, shared among consumer peers as the daemon's provider shares them (``core.admission``)."""
    batch: dict[int, tuple] = field(default_factory=dict)
    """Batch lines on the GPU: key → (job token, started, meter mark, tokens)."""
    draining: bool = False
    relays: list[int] = field(default_factory=list)
    reserving: int = 0
    """Names its pending look for relays (``World._rereserve``): an older one is stale."""
    ad_seq: int = 0
    schedule: AdSchedule | None = None
    """When its next ad goes out (the new gossip policy; None under the legacy one)."""
    told: tuple = ()
    """What its last published ad said that counts as a change (not seq, times or load)."""
    own_ad: CapabilityAd | None = None
    """A consumer's or relay's ad (model-less), last published."""
    ad_wire: bytes = b""
    """Its last signed ad, as sent (sizes the gossip and table traffic)."""
    cursors: dict[tuple[int, int], TableCursor] = field(default_factory=dict)
    """Table cursors it holds, per (server, server's session): where its next table request continues."""
    sync_partner: SyncPartner[int] = field(default_factory=SyncPartner)
    """The neighbour its periodic table syncs follow (the new gossip policy; legacy asks at random)."""
    ads: list[tuple[float, CapabilityAd, list[int] | None]] = field(default_factory=list)
    """Recent ads: (published at, ad, partition sides then or None when whole)."""
    last_row: np.ndarray | None = None
    """Gossip delays from it to every peer when it left (its last ads still travel)."""
    ad_content: tuple = ()
    last_ad: float = -1e9
    next_ad: float = 0.0
    ad_version: int = 0
    record: ProviderRecord | None = None
    # ledger
    state: LedgerState | None = None
    replica: bool = False
    log_seq: int = 0
    log_prev: bytes = ZERO_HASH
    last_heads: float = -1e9
    heads_pending: bool = False
