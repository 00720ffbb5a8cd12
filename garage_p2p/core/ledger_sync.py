"""Ledger anti-entropy: heads on gossip, missing ranges pulled over a stream.

When its own log grows, a peer publishes some of its heads (author → prefix
length, hash, first conflict) on ``garage/ledger/1``: its own head, then the
others in rotation, so a message stays small however many authors there are.
An idle peer publishes nothing. A receiver compares them with its own state
(``plan_pulls``) and pulls what it lacks from the announcer over
``/garage/ledger/1.0.0``: one request frame, one reply frame, repeated on the
same stream. On a new connection, and now and then with one neighbour, the two
sides compare their whole head lists: the first request carries a digest of
the asker's heads (``heads_digest``) and a server holding the same heads says
so in a few bytes; only when they differ are the heads paged through.

Pages of entries are zlib-compressed (receipts repeat peer ids and field
names); the decompressed size is bounded before anything is allocated.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .errors import PeerFault
from .gossip_guard import TopicRule
from .ledger import MAX_ENTRY_BYTES, Head, LedgerState
from .ledger_caps import ReplicationPolicy
from .limits import Limits
from .messages import WireModel
from .wire import FrameType, KiB, MiB

TOPIC_LEDGER = "garage/ledger/1"
PROTOCOL_LEDGER = "/garage/ledger/1.0.0"
MAX_ANNOUNCED_HEADS = 64
MAX_HEADS_PAGE = 1000
MAX_RANGE_ENTRIES = 2048
MAX_PAGE_BYTES = 4 * MiB
"""Decompressed size of one page of entries."""
MAX_PUSH_RECEIPTS = 256
LEDGER_GOSSIP = TopicRule("ledger", Limits(rpm=120))
"""Heads announcements taken per publisher: twice what an honest one publishes at most (one a second,
when its own log grows: a busy provider's receipts are batched into one announcement a second)."""

LEDGER_LIMITS = {
    FrameType.LEDGER_REQUEST: 512 * KiB,
    FrameType.LEDGER_REPLY: 256 * KiB,
    FrameType.LEDGER_ENTRIES: 2 * MiB,
}
"""Largest payload per ledger frame type (a compressed page stays far below its limit)."""

_LEN = struct.Struct(">I")


class HeadInfo(WireModel):
    """One author's head as a peer announces it."""

    author: str = Field(min_length=1, max_length=128)
    """The author's peer id."""
    seq: int = Field(ge=0)
    """Length of the author's counted prefix."""
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the prefix's last entry."""
    conflict: int | None = Field(default=None, ge=1)
    """First seq where the announcer holds proof of a fork or broken chain."""

    @classmethod
    def of(cls, author: str, head: Head) -> HeadInfo:
        return cls(author=author, seq=head.seq, hash=head.hash.hex(), conflict=head.conflict)


class HeadsAnnouncement(WireModel):
    """The gossip message on ``garage/ledger/1``."""

    peer: str = Field(min_length=1, max_length=128)
    """The announcer, who can serve every entry up to these heads."""
    heads: tuple[HeadInfo, ...] = Field(max_length=MAX_ANNOUNCED_HEADS)
    """Some of the announcer's heads (its own first, the rest in rotation)."""
    authors: int = Field(ge=0)
    """How many authors the announcer knows in all."""


class LedgerRequest(WireModel):
    """A request on ``/garage/ledger/1.0.0``."""

    op: Literal["heads", "range", "push"]
    """``heads``: a page of heads; ``range``: entries of one author; ``push``: counter-signed receipts for the
    provider's log."""
    after: str | None = Field(default=None, max_length=128)
    """heads: return authors sorted after this one."""
    author: str | None = Field(default=None, max_length=128)
    """range: whose entries. heads: only this author's head (a restarting peer asks for its own log's)."""
    from_seq: int = Field(default=1, ge=1)
    """range: first seq wanted."""
    limit: int = Field(default=MAX_RANGE_ENTRIES, ge=1, le=MAX_RANGE_ENTRIES)
    """heads/range: most items wanted (the server may send fewer)."""
    receipts: tuple[str, ...] = Field(default=(), max_length=MAX_PUSH_RECEIPTS)
    """push: base64 of provider signature (64 bytes) | counter-signature (64 bytes) | receipt
    (``ledger.book.pack_pending``)."""
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """heads (first page): the asker's ``heads_digest``; a server with the same heads answers ``same``
    and no heads (a server that predates it ignores the field and pages as before)."""


class HeadsPage(WireModel):
    """The reply to ``heads``."""

    heads: tuple[HeadInfo, ...] = Field(max_length=MAX_HEADS_PAGE)
    """Heads sorted by author."""
    more: bool = False
    """True if there are authors after the last one."""
    same: bool = False
    """The server's heads digest equals the request's: nothing to compare (no heads sent)."""


class PushReply(WireModel):
    """The reply to ``push``."""

    accepted: int = 0
    """Receipts newly appended to the provider's log."""
    known: int = 0
    """Receipts already in it."""
    rejected: tuple[str, ...] = ()
    """Why each rejected receipt was refused."""


def announcement(
    state: LedgerState, own: str, cursor: int, limit: int = MAX_ANNOUNCED_HEADS
) -> tuple[HeadsAnnouncement, int]:
    """The next gossip message and the next rotation cursor."""
    heads = state.heads()
    heads.setdefault(own, Head(0, bytes(32)))
    others = [a for a in heads if a != own]
    picked = [own]
    if others:
        start = cursor % len(others)
        rotated = others[start:] + others[:start]
        picked += rotated[: limit - 1]
        cursor = (start + limit - 1) % len(others)
    return HeadsAnnouncement(
        peer=own, heads=tuple(HeadInfo.of(a, heads[a]) for a in picked), authors=len(heads)
    ), cursor


def heads_digest(state: LedgerState) -> str:
    """SHA-256 (hex) over every head: two replicas with the same digest have nothing to pull from each other.

    Computed afresh each time (no cache to fall out of step with the state): a hash over one short line
    per author, microseconds each, against a page of heads on the wire per compare.
    """
    digest = hashlib.sha256()
    for author, head in state.heads().items():
        digest.update(f"{author} {head.seq} {head.hash.hex()} {head.conflict or 0}\n".encode())
    return digest.hexdigest()


def heads_page(
    state: LedgerState,
    after: str | None,
    limit: int = MAX_HEADS_PAGE,
    digest: str | None = None,
    author: str | None = None,
) -> HeadsPage:
    if author is not None:
        return HeadsPage(heads=(HeadInfo.of(author, state.head(author)),) if state.held(author) else ())
    if digest is not None and after is None and heads_digest(state) == digest:
        return HeadsPage(heads=(), same=True)
    authors = [a for a in state.authors() if after is None or a > after]
    page = authors[: min(limit, MAX_HEADS_PAGE)]
    return HeadsPage(heads=tuple(HeadInfo.of(a, state.head(a)) for a in page), more=len(authors) > len(page))


@dataclass(frozen=True, slots=True)
class Want:
    """A range to pull from a peer."""

    author: str
    """Whose log."""
    from_seq: int
    """First seq wanted."""
    until: int
    """Last seq wanted (the peer's head, or ``from_seq`` for one fork proof)."""


def plan_pulls(state: LedgerState, remote: Sequence[HeadInfo], policy: ReplicationPolicy | None = None) -> list[Want]:
    """What to pull from a peer that announced ``remote``.

    - The peer is ahead: pull from our prefix's end (the first pulled entry
      exposes a fork if its prev does not match our head).
    - The peer's head is inside our prefix but hashes differently: pull that
      one entry: with ours it proves a fork.
    - The peer holds proof of a conflict we do not know: pull that seq.

    With a ``policy``, each range is cut to what its caps leave room for
    (``core.ledger_caps``), before anything is asked for, let alone verified.
    """
    budget = policy.budget(state) if policy is not None else None
    wants: list[Want] = []
    for info in remote:
        want = _want(state, info)
        if want is not None and budget is not None:
            until = budget.until(want.author, want.from_seq, want.until)
            want = Want(want.author, want.from_seq, until) if until >= want.from_seq else None
        if want is not None:
            wants.append(want)
    return wants


def _want(state: LedgerState, info: HeadInfo) -> Want | None:
    local = state.head(info.author) if state.held(info.author) else Head(0, bytes(32))
    if info.conflict is not None and local.conflict is None:
        return Want(info.author, info.conflict, info.conflict)
    if local.conflict is not None:
        return None  # past a conflict nothing more counts
    if info.seq > local.seq:
        return Want(info.author, local.seq + 1, info.seq)
    if info.seq > 0:
        ours = state.at(info.author, info.seq)
        if ours and ours[0].hash.hex() != info.hash:
            return Want(info.author, info.seq, info.seq)
    return None


# -- pages of entries ----------------------------------------------------------------


def entry_seq(blob: bytes) -> int:
    """The seq an encoded entry claims (unverified; 0 if it is too short to say)."""
    return struct.unpack_from(">Q", blob, 1)[0] if len(blob) >= 9 else 0


def encode_page(entries: list[bytes]) -> bytes:
    """Entries as one compressed page: zlib(len | entry | len | entry …)."""
    return zlib.compress(b"".join(_LEN.pack(len(e)) + e for e in entries), 1)


def decode_page(payload: bytes, max_entries: int = MAX_RANGE_ENTRIES) -> list[bytes]:
    """The entries of a page; PeerFault if it is malformed or too big."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, MAX_PAGE_BYTES + 1)
    except zlib.error as exc:
        raise PeerFault(f"ledger page does not decompress: {exc}") from None
    if len(data) > MAX_PAGE_BYTES or inflater.unconsumed_tail:
        raise PeerFault(f"ledger page inflates past {MAX_PAGE_BYTES} bytes")
    if not inflater.eof:
        raise PeerFault("ledger page is truncated")
    entries: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _LEN.size:
            raise PeerFault("ledger page ends inside a length")
        (length,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        if length > MAX_ENTRY_BYTES or offset + length > len(data):
            raise PeerFault("ledger page holds an oversized or cut-off entry")
        entries.append(data[offset : offset + length])
        offset += length
        if len(entries) > max_entries:
            raise PeerFault(f"ledger page holds more than {max_entries} entries")
    return entries
