"""The ledger: per-provider hash-chained logs of counter-signed receipts, as a CRDT.

Each provider (the *author*) appends the receipts of the requests it served
to its own log. An entry is

    version u8 | seq u64 | prev 32 | cosig 64 | receipt length u16 | receipt | sig 64

where ``prev`` is the hash of the author's previous entry (zeros for seq 1),
``cosig`` is the consumer's counter-signature of the receipt, and ``sig`` is
the author's signature of everything before it. An entry's hash is the
SHA-256 of its whole encoding.

The state is the set of valid entries, author → seq → entries; merge is set
union, so it is commutative, associative and idempotent and any order,
duplication or grouping of deliveries gives the same state. Two different
entries at the same (author, seq) are a fork: the author signed two histories.
Both are kept as proof (the two with the smallest hashes, so storage stays
bounded and the choice does not depend on arrival order), and the author is
flagged. What counts toward balances is each author's *prefix*: the longest
run of entries from seq 1 with one entry per seq, each linked to the one
before; a fork or a broken link ends it. Views are pure functions of the state.

A peer does not keep every log there is: ``core.ledger_caps`` decides how many
entries of each author it holds and which authors it drops when over its
caps (``LedgerState.remove``), so the union is taken over what each replica's
caps admit.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .errors import PeerFault
from .identity import Identity, verify
from .receipts import (
    CLOCK_SLACK_US,
    MAX_RECEIPT_BYTES,
    Receipt,
    ReceiptInvalid,
    check_cosignature,
    parse_receipt,
    peer_key,
)

ENTRY_DOMAIN = b"garage-ledger-entry/1\n"
ENTRY_VERSION = 1
ZERO_HASH = bytes(32)
_FIXED = struct.Struct(">BQ32s64sH")
MAX_ENTRY_BYTES = _FIXED.size + MAX_RECEIPT_BYTES + 64
KEPT_PER_SEQ = 2


class EntryInvalid(ReceiptInvalid):
    """An entry that must not be stored; the message says why."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One verified entry of an author's log."""

    seq: int
    """Position in the author's log, from 1."""
    prev: bytes
    """Hash of the author's previous entry (zeros for seq 1)."""
    receipt: Receipt
    """The receipt; its provider is the author."""
    raw: bytes
    """The receipt's bytes as signed."""
    cosig: bytes
    """The consumer's counter-signature of ``raw``."""
    encoded: bytes
    """The whole entry as stored and sent."""
    hash: bytes
    """SHA-256 of ``encoded``."""

    @property
    def author(self) -> str:
        return self.receipt.provider


def make_entry(identity: Identity, seq: int, prev: bytes, raw: bytes, cosig: bytes) -> Entry:
    """Our own next entry (the caller checked the receipt and its counter-signature)."""
    receipt = parse_receipt(raw)
    if receipt.provider != identity.peer_id:
        raise ValueError("an entry's receipt must name its author as provider")
    body = _FIXED.pack(ENTRY_VERSION, seq, prev, cosig, len(raw)) + raw
    encoded = body + identity.sign(ENTRY_DOMAIN + body)
    return Entry(seq, prev, receipt, raw, cosig, encoded, hashlib.sha256(encoded).digest())


class KeyCache:
    """Public keys by peer id: decoding base58 once per peer, not once per entry."""

    def __init__(self, limit: int = 100_000) -> None:
        self._keys: dict[str, bytes] = {}
        self._limit = limit

    def __call__(self, peer_id: str) -> bytes:
        key = self._keys.get(peer_id)
        if key is None:
            key = peer_key(peer_id)
            if len(self._keys) >= self._limit:
                self._keys.clear()
            self._keys[peer_id] = key
        return key


def decode_entry(data: bytes, *, check_signatures: bool = True, key: Callable[[str], bytes] = peer_key) -> Entry:
    """Parse an entry; with ``check_signatures`` also verify the author's and consumer's signatures.

    EntryInvalid (a PeerFault) names the first problem. Entries read back from
    our own store skip the signature checks (they were checked on arrival;
    ``garage ledger verify`` checks them again).
    """
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryInvalid(f"entry of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")
    if len(data) < _FIXED.size + 64:
        raise EntryInvalid("entry too short")
    version, seq, prev, cosig, length = _FIXED.unpack_from(data)
    if version != ENTRY_VERSION:
        raise EntryInvalid(f"unknown entry version {version}")
    if seq < 1:
        raise EntryInvalid("seq starts at 1")
    if seq == 1 and prev != ZERO_HASH:
        raise EntryInvalid("the first entry must have a zero previous hash")
    if len(data) != _FIXED.size + length + 64:
        raise EntryInvalid("entry length does not match its receipt length")
    body_end = _FIXED.size + length
    raw = data[_FIXED.size : body_end]
    try:
        receipt = parse_receipt(raw)
    except ReceiptInvalid as exc:
        raise EntryInvalid(f"receipt: {exc}") from None
    entry = Entry(seq, prev, receipt, raw, cosig, bytes(data), hashlib.sha256(data).digest())
    if check_signatures:
        verify_entry(entry, key)
    return entry


def verify_entry(entry: Entry, key: Callable[[str], bytes] = peer_key) -> None:
    """Check the author's and the consumer's signatures of a parsed entry; EntryInvalid if one is wrong.

    Split from parsing so a peer can decide whether it wants an entry (its
    replication caps) before paying for two ed25519 verifications.
    """
    body = entry.encoded[:-64]
    try:
        if not verify(key(entry.author), entry.encoded[-64:], ENTRY_DOMAIN + body):
            raise EntryInvalid("the author's signature does not verify")
        check_cosignature(entry.receipt, entry.raw, entry.cosig, key)
    except EntryInvalid:
        raise
    except PeerFault as exc:  # a provider id with no key in it, a bad counter-signature
        raise EntryInvalid(str(exc)) from None


# -- totals ----------------------------------------------------------------------


@dataclass
class Totals:
    """Sums over counted receipts."""

    requests: int = 0
    """Receipts counted."""
    prompt_tokens: int = 0
    """Prompt tokens in them."""
    completion_tokens: int = 0
    """Generated tokens in them."""
    gpu_us: int = 0
    """GPU time in them, microseconds."""

    def add(self, receipt: Receipt) -> None:
        self.requests += 1
        self.prompt_tokens += receipt.prompt_tokens
        self.completion_tokens += receipt.completion_tokens
        self.gpu_us += receipt.gpu_us

    def merge(self, other: Totals) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.gpu_us += other.gpu_us

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def gpu_hours(self) -> float:
        return self.gpu_us / 3.6e9


@dataclass
class _AuthorTotals:
    served: Totals = field(default_factory=Totals)
    by_model: dict[str, Totals] = field(default_factory=dict)
    by_consumer: dict[str, Totals] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    duplicates: int = 0

    def add(self, receipt: Receipt) -> None:
        key = (receipt.consumer, receipt.request_id)
        if key in self.seen:
            self.duplicates += 1  # a receipt logged twice counts once
            return
        self.seen.add(key)
        self.served.add(receipt)
        self.by_model.setdefault(receipt.model, Totals()).add(receipt)
        self.by_consumer.setdefault(receipt.consumer, Totals()).add(receipt)


@dataclass(frozen=True, slots=True)
class Head:
    """Where an author's counted log ends, as peers compare it."""

    seq: int
    """Length of the author's prefix (0: none yet)."""
    hash: bytes
    """Hash of the prefix's last entry (zeros when seq is 0)."""
    conflict: int | None = None
    """The first seq with proof of a fork or a broken link, if any."""


@dataclass(frozen=True, slots=True)
class PeerBalance:
    """One peer's standing, derived from every author's prefix."""

    peer_id: str
    """The peer."""
    contributed: Totals
    """What it served to others (receipts in its own log)."""
    consumed: Totals
    """What others served to it (receipts naming it as consumer)."""
    flagged: bool
    """It signed two histories (a fork) or a broken chain."""

    @property
    def net_gpu_us(self) -> int:
        return self.contributed.gpu_us - self.consumed.gpu_us


# -- the CRDT ----------------------------------------------------------------------


MAX_NEW_TIES = 4096
"""New pairs a state remembers for the policies that rank its authors; one that fell further behind
ranks every author afresh."""


class LedgerState:
    """Author → seq → entries (at most two per seq, the smallest hashes)."""

    def __init__(self) -> None:
        self._logs: dict[str, dict[int, list[Entry]]] = {}
        self._prefix: dict[str, int] = {}
        self._totals: dict[str, _AuthorTotals] = {}
        self._conflict: dict[str, int] = {}
        self._forks: dict[str, set[int]] = {}
        self._count = 0
        self._held: dict[str, int] = {}
        self._top: dict[str, int] = {}
        """Author → highest seq held (past gaps and forks too)."""
        self._tops: list[tuple[int, str]] = []
        """(-top seq, author) each time an author's top seq changed: a max-heap with stale items
        (``top_seq_max``), so a replication cap's check does not scan every author."""
        self._consumers: dict[str, dict[str, int]] = {}
        """Author → consumer → entries held of the author's naming that consumer."""
        self._providers: dict[str, dict[str, int]] = {}
        """Consumer → author → the same counts, looked up from the consumer's side."""
        self.version = 0
        """Bumped on every change (caches of views derived from the state compare it)."""
        self.ties_version = 0
        """Bumped when a pair (author, consumer) appears or goes: who dealt with whom, which is all an
        author's standing depends on (``core.ledger_caps``), changes far less often than the state."""
        self.ties_lost = 0
        """Bumped when a pair goes (only replication caps drop entries): standings are then made afresh."""
        self._new_ties: list[tuple[str, str]] = []
        """Pairs (author, consumer) that appeared, oldest first, from position ``_new_ties_base`` on: a
        replication policy ranks again only the authors they touch."""
        self._new_ties_base = 0

    def __len__(self) -> int:
        """Entries held (fork proofs included)."""
        return self._count

    # -- adding ---------------------------------------------------------------

    def add(self, entry: Entry) -> bool:
        """Add a verified entry; True if the state changed."""
        author = entry.author
        log = self._logs.setdefault(author, {})
        kept = log.setdefault(entry.seq, [])
        if any(e.hash == entry.hash for e in kept):
            return False
        if len(kept) >= KEPT_PER_SEQ:
            if entry.hash >= kept[-1].hash:
                return False  # a third version: two proofs are enough
            self._unindex(kept.pop())
        kept.append(entry)
        kept.sort(key=lambda e: e.hash)
        self._index(entry)
        if len(kept) > 1:
            self._forks.setdefault(author, set()).add(entry.seq)
        if entry.seq <= self._prefix.get(author, 0):
            self._recount(author)  # a fork inside the prefix cuts it short
        elif author not in self._conflict:
            self._extend(author)
        # (past a conflict nothing counts: conflicts never resolve)
        return True

    def _index(self, entry: Entry) -> None:
        author, consumer = entry.author, entry.receipt.consumer
        self._count += 1
        self.version += 1
        self._held[author] = self._held.get(author, 0) + 1
        if entry.seq > self._top.get(author, 0):
            self._set_top(author, entry.seq)
        by_consumer = self._consumers.setdefault(author, {})
        count = by_consumer.get(consumer, 0)
        by_consumer[consumer] = count + 1
        by_author = self._providers.setdefault(consumer, {})
        by_author[author] = by_author.get(author, 0) + 1
        if not count:
            self.ties_version += 1
            self._new_ties.append((author, consumer))
            if len(self._new_ties) > MAX_NEW_TIES:
                self._new_ties_base += len(self._new_ties)
                self._new_ties.clear()

    def _set_top(self, author: str, seq: int) -> None:
        self._top[author] = seq
        heapq.heappush(self._tops, (-seq, author))
        if len(self._tops) > 2 * len(self._top) + 64:
            self._tops = [(-top, a) for a, top in self._top.items()]
            heapq.heapify(self._tops)

    def _unindex(self, entry: Entry) -> None:
        author, consumer = entry.author, entry.receipt.consumer
        self._count -= 1
        self.version += 1
        self._held[author] -= 1
        for outer, inner in ((self._consumers, (author, consumer)), (self._providers, (consumer, author))):
            counts = outer[inner[0]]
            counts[inner[1]] -= 1
            if not counts[inner[1]]:
                del counts[inner[1]]
                if not counts:
                    del outer[inner[0]]
        if author not in self._consumers or consumer not in self._consumers[author]:
            self.ties_version += 1
            self.ties_lost += 1

    def remove(self, author: str, above_seq: int = 0) -> int:
        """Drop the author's entries past ``above_seq`` (all of them with 0); how many were dropped.

        Only replication caps call this (``core.ledger_caps``): dropping part
        of a log is forgetting, not a change of what the author signed.
        """
        log = self._logs.get(author)
        if log is None:
            return 0
        if self._top.get(author, 0) <= above_seq:
            return 0  # nothing past it: no walk of the log
        dropped = 0
        for seq in [s for s in log if s > above_seq]:
            for entry in log.pop(seq):
                self._unindex(entry)
                dropped += 1
            self._forks.get(author, set()).discard(seq)
        if not log:
            for table in (self._logs, self._held, self._top, self._prefix, self._totals, self._conflict, self._forks):
                table.pop(author, None)
        elif dropped:
            self._set_top(author, max(log))
            if not self._forks.get(author):
                self._forks.pop(author, None)
            self._recount(author)
        return dropped

    def merge(self, other: LedgerState) -> None:
        """Add every entry of ``other``."""
        for entry in other.entries():
            self.add(entry)

    def _extend(self, author: str) -> None:
        log = self._logs[author]
        prefix = self._prefix.get(author, 0)
        totals = self._totals.setdefault(author, _AuthorTotals())
        prev = log[prefix][0].hash if prefix else ZERO_HASH
        while True:
            kept = log.get(prefix + 1)
            if not kept:
                break
            if len(kept) > 1 or kept[0].prev != prev:
                self._conflict[author] = prefix + 1
                break
            prefix += 1
            prev = kept[0].hash
            totals.add(kept[0].receipt)
        self._prefix[author] = prefix

    def _recount(self, author: str) -> None:
        self._prefix[author] = 0
        self._totals[author] = _AuthorTotals()
        self._conflict.pop(author, None)
        self._extend(author)

    # -- reading --------------------------------------------------------------

    def authors(self) -> list[str]:
        return sorted(self._logs)

    def head(self, author: str) -> Head:
        prefix = self._prefix.get(author, 0)
        last = self._logs[author][prefix][0].hash if prefix else ZERO_HASH
        return Head(prefix, last, self._conflict_seq(author))

    def _conflict_seq(self, author: str) -> int | None:
        seqs = set(self._forks.get(author, ()))
        if author in self._conflict:
            seqs.add(self._conflict[author])
        return min(seqs) if seqs else None

    def heads(self) -> dict[str, Head]:
        return {author: self.head(author) for author in sorted(self._logs)}

    def flagged(self, author: str) -> bool:
        """The author signed two histories or a chain that does not link."""
        return self._conflict_seq(author) is not None

    def flagged_authors(self) -> list[str]:
        return [a for a in sorted(self._logs) if self.flagged(a)]

    def at(self, author: str, seq: int) -> list[Entry]:
        """Every kept entry at (author, seq): two of them are a fork's proof."""
        return list(self._logs.get(author, {}).get(seq, ()))

    def entries(self, author: str | None = None) -> Iterator[Entry]:
        """Every entry held, by author then seq."""
        for name in [author] if author is not None else sorted(self._logs):
            log = self._logs.get(name, {})
            for seq in sorted(log):
                yield from log[seq]

    def range(self, author: str, from_seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries of ``author`` from ``from_seq`` on, every version of each seq."""
        log = self._logs.get(author, {})
        out: list[Entry] = []
        seq = from_seq
        top = max(log, default=0)
        while seq <= top and len(out) < limit:
            out.extend(log.get(seq, ()))
            seq += 1
        return out

    def counted(self, author: str) -> Iterator[Entry]:
        """The author's prefix: the entries that count."""
        log = self._logs.get(author, {})
        for seq in range(1, self._prefix.get(author, 0) + 1):
            yield log[seq][0]

    def held(self, author: str) -> int:
        """Entries held of ``author`` (fork proofs and entries past a gap included)."""
        return self._held.get(author, 0)

    def top_seq(self, author: str) -> int:
        """The highest seq held of ``author`` (0: none)."""
        return self._top.get(author, 0)

    def top_seq_max(self, excluding: str = "") -> int:
        """The highest ``top_seq`` of any author but ``excluding`` (0: none); O(log n) amortised."""
        heap, set_aside, best = self._tops, [], 0
        while heap:
            top, author = heap[0]
            if self._top.get(author) != -top:
                heapq.heappop(heap)  # stale: that author's top changed since, or it is gone
            elif author == excluding:
                set_aside.append(heapq.heappop(heap))
            else:
                best = -top
                break
        for item in set_aside:
            heapq.heappush(heap, item)
        return best

    @property
    def ties_position(self) -> int:
        """Where the log of new pairs ends now (for ``ties_since``)."""
        return self._new_ties_base + len(self._new_ties)

    def ties_since(self, position: int) -> list[tuple[str, str]] | None:
        """The pairs (author, consumer) that appeared since ``position`` (a ``ties_position`` read
        earlier), oldest first; None if the log no longer reaches back that far."""
        start = position - self._new_ties_base
        return self._new_ties[start:] if start >= 0 else None

    def consumers_of(self, author: str) -> dict[str, int]:
        """Consumer → entries held of ``author``'s log naming it (do not modify)."""
        return self._consumers.get(author, {})

    def providers_of(self, consumer: str) -> dict[str, int]:
        """Author → entries held of its log naming ``consumer`` (do not modify)."""
        return self._providers.get(consumer, {})

    def gpu_us(self, provider: str, consumer: str) -> int:
        """GPU-µs of ``provider``'s counted receipts (its prefix) naming ``consumer``."""
        totals = self._totals.get(provider)
        part = totals.by_consumer.get(consumer) if totals else None
        return part.gpu_us if part else 0

    def has_receipt(self, author: str, consumer: str, request_id: str) -> bool:
        totals = self._totals.get(author)
        return totals is not None and (consumer, request_id) in totals.seen

    def duplicates(self, author: str) -> int:
        totals = self._totals.get(author)
        return totals.duplicates if totals else 0

    def fingerprint(self) -> tuple[tuple[str, int, tuple[bytes, ...]], ...]:
        """Everything that defines the state, comparable between replicas."""
        return tuple(
            (author, seq, tuple(e.hash for e in kept))
            for author in sorted(self._logs)
            for seq, kept in sorted(self._logs[author].items())
        )

    # -- views -----------------------------------------------------------------

    def balances(self) -> dict[str, PeerBalance]:
        """Per peer: contributed and consumed, from every author's prefix."""
        contributed: dict[str, Totals] = {}
        consumed: dict[str, Totals] = {}
        for author, totals in self._totals.items():
            contributed.setdefault(author, Totals()).merge(totals.served)
            for consumer, part in totals.by_consumer.items():
                consumed.setdefault(consumer, Totals()).merge(part)
        peers = sorted(set(contributed) | set(consumed) | set(self._logs))
        return {
            p: PeerBalance(p, contributed.get(p, Totals()), consumed.get(p, Totals()), self.flagged(p)) for p in peers
        }

    def by_model(self) -> dict[str, Totals]:
        models: dict[str, Totals] = {}
        for totals in self._totals.values():
            for model, part in totals.by_model.items():
                models.setdefault(model, Totals()).merge(part)
        return dict(sorted(models.items()))


def replay(entries: Iterable[Entry]) -> LedgerState:
    """A state holding ``entries``."""
    state = LedgerState()
    for entry in entries:
        state.add(entry)
    return state


@dataclass(frozen=True, slots=True)
class Overclaim:
    """A busy period in which an author's receipts claim more GPU time than its GPUs had."""

    start_ms: int
    """Start of the busy period (receipts overlapping one another)."""
    end_ms: int
    """Its end."""
    claimed_us: int
    """GPU-µs the receipts in it claim."""
    limit_us: int
    """The most its GPUs could give: period × GPUs."""


def overclaims(receipts: Iterable[Receipt]) -> list[Overclaim]:
    """Busy periods of one author whose claimed GPU time exceeds period × GPUs.

    Receipts that overlap in time form a busy period; its capacity is its
    length times the GPUs of the models served in it (the most any receipt of
    each model states). An honest provider's time-weighted meter never
    exceeds it (``core.gpu_meter``).
    """
    out: list[Overclaim] = []
    period: list[Receipt] = []
    end = -1

    def close() -> None:
        if not period:
            return
        start = min(r.start_ms for r in period)
        gpus: dict[str, int] = {}
        for r in period:
            gpus[r.model] = max(gpus.get(r.model, 0), r.gpus)
        claimed = sum(r.gpu_us for r in period)
        limit = (end - start) * 1000 * sum(gpus.values()) + CLOCK_SLACK_US * len(period)
        if claimed > limit:
            out.append(Overclaim(start, end, claimed, limit))

    for r in sorted(receipts, key=lambda r: (r.start_ms, r.end_ms)):
        if period and r.start_ms >= end:
            close()
            period = []
        period.append(r)
        end = max(end, r.end_ms)
    close()
    return out
