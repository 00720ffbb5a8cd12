"""How much of the mesh's ledger a peer keeps: caps, and whose entries are kept first.

A peer replicates others' logs to weigh contributions (docs/ledger.md). Anyone
can mint two identities and sign a log of valid entries, one serving the
other, at thousands of entries a second; a peer that kept every log would let
one throwaway identity fill its memory and disk (issue 16 item 8). So a peer
ranks every author by its *standing*, the ties it has to us:

- ``OWN``: our log. Never capped, never dropped.
- ``SERVED_US``: its log names us as consumer: it did work for us, and those
  entries are what we consumed. Capped per author, never dropped.
- ``DEALT``: our log names it as consumer: we served it.
- ``VOUCHED``: it dealt with one of the above, or shares a consumer with
  one: one of its entries is counter-signed by a peer we dealt with, or such
  a peer's log served it or one of its consumers. Each of these costs a real
  request through a peer we dealt with, and that peer's counter-signature or
  log entry, not just a fresh key.
- ``UNKNOWN``: none of these: a tight cap per author and for all together.

Within a rank, more distinct peers vouching for it come first; the peer id
breaks ties, so every replica with the same state ranks the same way.

Caps are checked before anything is verified: ``plan_pulls`` asks only for
what fits (and a small probe of an author it knows nothing of), and a page
that brings more is cut before its signatures are checked (``Budget``).
When the total is over its cap, the authors with the least standing are
dropped whole (``shed``), never ``OWN`` or ``SERVED_US``.
Room for a pull is what the caps leave once every author ranked below it is
dropped, and what ranks an author comes from peers ranked above it, so a
pull never evicts the author it was made for and nothing is pulled to be
dropped again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from .ledger import Entry, LedgerState

PROBE_SEQS = 16
"""Entries asked of an author with no standing when the caps leave it no room (see ``Budget.until``)."""


class Rank(IntEnum):
    """The closest tie an author has to us (the module's docstring lists them)."""

    UNKNOWN = 0
    VOUCHED = 1
    DEALT = 2
    SERVED_US = 3
    OWN = 4


@dataclass(frozen=True, slots=True)
class ReplicationCaps:
    """How many entries of others a peer holds.

    An entry held costs about 2.7 KiB of memory (bytes, parsed receipt, indexes:
    200,000 entries took 546 MiB) and 0.7 KiB on disk. The defaults bound
    others' entries at ~270 MiB and a throwaway identity's at ~2.7 MiB, all
    unknown authors together at ~27 MiB, while a mesh of a few hundred
    providers with thousands of receipts each still replicates in full.
    """

    max_entries: int = 100_000
    """Others' entries held in all (fork proofs included; our own log does not count)."""
    max_seq: int = 25_000
    """Highest seq kept of an author with standing (an author's log is kept from its start)."""
    max_unknown_entries: int = 10_000
    """Entries of all authors with no standing together."""
    max_unknown_seq: int = 1_000
    """Highest seq kept of an author with no standing."""

    def seq_cap(self, rank: Rank) -> int:
        return self.max_unknown_seq if rank is Rank.UNKNOWN else self.max_seq


@dataclass(frozen=True, slots=True, order=True)
class Standing:
    """An author's place in the order of who is kept (greater is kept first)."""

    rank: Rank
    """The closest tie it has to us."""
    vouchers: int
    """Distinct peers we dealt with that dealt with it."""
    author: str
    """Breaks ties the same way on every replica."""


@dataclass
class ReplicationPolicy:
    """The caps of the peer ``me``; ``caps=None`` keeps everything (tools that read a whole file)."""

    me: str
    """Our peer id."""
    caps: ReplicationCaps | None = field(default_factory=ReplicationCaps)
    """What to hold at most."""
    _cache: tuple[int, int, int, int, _Order] | None = field(default=None, repr=False)
    """(id of the state, its ties_version, ties_lost, ties_position, the order made for them)."""

    def _trusted(self, state: LedgerState) -> set[str]:
        return {self.me, *state.providers_of(self.me), *state.consumers_of(self.me)}

    def standing(self, state: LedgerState, author: str, trusted: set[str] | None = None) -> Standing:
        """The standing of ``author``, whether or not we hold any of its entries."""
        trusted = self._trusted(state) if trusted is None else trusted
        consumers, providers = state.consumers_of(author), state.providers_of(author)
        vouchers = {p for p in consumers if p in trusted} | {p for p in providers if p in trusted}
        for consumer in consumers:  # a peer of ours served one of its consumers too
            vouchers.update(p for p in state.providers_of(consumer) if p in trusted and p != author)
        return self._rank(author, consumers, providers, vouchers)

    def _rank(
        self, author: str, consumers: Mapping[str, int], providers: Mapping[str, int], vouchers: set[str]
    ) -> Standing:
        if author == self.me:
            return Standing(Rank.OWN, 0, author)
        if self.me in consumers:
            rank = Rank.SERVED_US
        elif self.me in providers:
            rank = Rank.DEALT
        elif vouchers:
            rank = Rank.VOUCHED
        else:
            rank = Rank.UNKNOWN
        return Standing(rank, len(vouchers), author)

    def standings(self, state: LedgerState) -> dict[str, Standing]:
        """Every held author's standing, as ``standing`` gives it."""
        return self._order(state).standings

    def _order(self, state: LedgerState) -> _Order:
        """The standings and the order of who is kept, kept up to date as who dealt with whom changes.

        Most entries a peer takes add to a pair it knows: nothing to do. A new pair re-ranks only the
        authors it touches (``_Order.retie``); a pair gone, or one of ours, ranks every author afresh.
        A replica plans a pull for every head announced, and in a large mesh new pairs come every
        second, so a rank and a sort of every author each time was most of what replication cost
        (sweden-10k's replicas, once past the unknown cap).
        """
        cached = self._cache
        if cached is not None and cached[0] == id(state):
            _, version, lost, position, order = cached
            if version == state.ties_version:
                return order
            ties = state.ties_since(position) if lost == state.ties_lost else None
            if ties is not None and order.retie(self, state, ties):
                self._cache = (id(state), state.ties_version, lost, state.ties_position, order)
                return order
        order = _Order(self._trusted(state), self._standings(state))
        self._cache = (id(state), state.ties_version, state.ties_lost, state.ties_position, order)
        return order

    def _standings(self, state: LedgerState) -> dict[str, Standing]:
        """Walked from the few peers we dealt with rather than from every author:
        the work is their consumers' providers, not every log's consumers'."""
        vouchers: dict[str, set[str]] = {}
        for t in self._trusted(state):
            for provider in state.providers_of(t):  # it served t: one of its entries is t's counter-signature
                vouchers.setdefault(provider, set()).add(t)
            for consumer in state.consumers_of(t):  # t served it, or one of its consumers
                vouchers.setdefault(consumer, set()).add(t)
                for provider in state.providers_of(consumer):
                    if provider != t:
                        vouchers.setdefault(provider, set()).add(t)
        return {
            a: self._rank(a, state.consumers_of(a), state.providers_of(a), vouchers.get(a, set()))
            for a in state.authors()
        }

    def budget(self, state: LedgerState) -> Budget:
        return Budget(self, state)

    def admit(self, state: LedgerState, entries: Iterable[Entry]) -> tuple[list[Entry], int]:
        """Of entries offered (not yet verified), those new to ``state`` that fit; and how many did not fit."""
        budget = self.budget(state)
        wanted: list[Entry] = []
        over = 0
        for entry in entries:
            if any(e.hash == entry.hash for e in state.at(entry.author, entry.seq)):
                continue
            if budget.admits(entry.author, entry.seq, entry.receipt.consumer):
                wanted.append(entry)
            else:
                over += 1
        return wanted, over

    def shed(self, state: LedgerState) -> list[tuple[str, int]]:
        """Drop what is over the caps from ``state``; (author, seq above which it was dropped) for the store."""
        if self.caps is None:
            return []
        caps = self.caps
        # Every author's entries but ours, and their highest seq, without a scan of the authors.
        if len(state) - state.held(self.me) <= min(caps.max_entries, caps.max_unknown_entries) and state.top_seq_max(
            excluding=self.me
        ) <= min(caps.max_seq, caps.max_unknown_seq):
            return []  # within every cap whatever anyone's standing
        out: list[tuple[str, int]] = []
        if state.top_seq_max(excluding=self.me) > min(caps.max_seq, caps.max_unknown_seq):
            for author, s in self.standings(state).items():
                cap = caps.seq_cap(s.rank)
                if s.rank is not Rank.OWN and state.remove(author, cap):
                    out.append((author, cap))  # caps lowered since the entries were kept
        order = self._order(state)  # again: trimmed receipts may have named peers we rank by
        total = len(state) - state.held(self.me)
        unknown = order.unknown_held(state, total)
        for s in order.order:  # least standing first, so the unknown authors go first
            if s.rank >= Rank.SERVED_US:
                break
            if total <= caps.max_entries and unknown <= caps.max_unknown_entries:
                break
            held = state.held(s.author)
            state.remove(s.author)
            out.append((s.author, 0))
            total -= held
            if s.rank is Rank.UNKNOWN:
                unknown -= held
        return out


class Budget:
    """What a state may still take, author by author, while one batch is planned or admitted.

    Room for an author with standing S is what its seq cap allows, within the
    total less everything held by authors ranked above S (those below would be
    dropped to make room), and for an unknown author within the unknown total.
    While no cap can bind whatever the standing (small logs, a small state),
    no standing is computed at all: the common case costs a comparison.
    """

    def __init__(self, policy: ReplicationPolicy, state: LedgerState) -> None:
        self.policy = policy
        self.state = state
        self._others = len(state) - state.held(policy.me)
        self._taken = 0
        self._taken_unknown = 0
        self._sums: _Sums | None = None
        self._unknown: int | None = None

    def until(self, author: str, from_seq: int, until: int) -> int:
        """The last seq of ``from_seq..until`` to ask for (below ``from_seq``: none); what fits is taken.

        An author we hold nothing of ranks by what others' logs say of it; its
        own entries may be what vouches for it. So when an unknown author gets
        no room, a few of its entries are still asked for (a probe): ``admits``
        keeps those counter-signed by a peer we dealt with, and drops the rest
        unverified.
        """
        room = self._take(author, from_seq, until)
        if not room and not self.state.held(author) and self._standing(author).rank is Rank.UNKNOWN:
            return min(until, from_seq - 1 + PROBE_SEQS)
        return from_seq - 1 + room

    def admits(self, author: str, seq: int, consumer: str | None = None) -> bool:
        """Whether the entry at (author, seq) naming ``consumer`` fits; if so it is taken.

        An entry counter-signed by a peer we dealt with vouches for its author
        (the counter-signature is verified before the entry is kept).
        """
        return self._take(author, seq, seq, consumer) == 1

    def _take(self, author: str, from_seq: int, until: int, consumer: str | None = None) -> int:
        caps = self.policy.caps
        wanted = until - from_seq + 1
        if wanted <= 0:
            return 0
        if caps is None or author == self.policy.me:
            return wanted
        if until <= min(caps.max_seq, caps.max_unknown_seq) and self._others + self._taken + wanted <= min(
            caps.max_entries, caps.max_unknown_entries
        ):
            self._taken += wanted  # no cap can bind: no need to know who it is
            self._taken_unknown += wanted  # (as if unknown: an over-count only makes later room smaller)
            return wanted
        s = self._standing(author)
        if s.rank is Rank.UNKNOWN and consumer is not None and consumer in self._order().trusted:
            s = Standing(Rank.VOUCHED, 1, author)
        room = min(until, caps.seq_cap(s.rank)) - from_seq + 1
        if s.rank is Rank.UNKNOWN and room > 0:
            if self._unknown is None:
                self._unknown = self._order().unknown_held(self.state, self._others)
            room = min(room, caps.max_unknown_entries - self._unknown - self._taken_unknown)
        # What is kept anyway is at most all that is held: only near the total cap is it summed.
        if s.rank < Rank.SERVED_US and room > 0 and self._others + self._taken + room > caps.max_entries:
            sums = self._sum()
            kept_anyway = sums.total - sums.below[bisect.bisect_left(self._order().order, s)]
            room = min(room, caps.max_entries - kept_anyway - self._taken)
        room = max(0, room)
        self._taken += room
        if s.rank is Rank.UNKNOWN:
            self._taken_unknown += room
        return room

    def _standing(self, author: str) -> Standing:
        order = self._order()
        s = order.standings.get(author)
        return s if s is not None else self.policy.standing(self.state, author, order.trusted)

    def _order(self) -> _Order:
        return self.policy._order(self.state)

    def _sum(self) -> _Sums:
        if self._sums is None:
            self._sums = self._order().sums(self.state)
        return self._sums


class _Order:
    """Every held author in the order of who is kept (least first), for one set of who dealt with whom."""

    def __init__(self, trusted: set[str], standings: dict[str, Standing]) -> None:
        self.trusted = trusted
        """Us and the peers we dealt with."""
        self.standings = standings
        """Every held author's standing."""
        self.order = sorted((s for s in standings.values() if s.rank is not Rank.OWN), key=_key)
        """The standings but ours, least standing first."""
        self.known = {s.author for s in self.order if s.rank is not Rank.UNKNOWN}
        """The authors with some standing: in a large mesh a few among thousands."""

    def retie(self, policy: ReplicationPolicy, state: LedgerState, ties: list[tuple[str, str]]) -> bool:
        """Rank again the authors that new pairs (author, consumer) touch; False if one is ours (who we
        trust changes: everything is ranked afresh).

        An author's standing reads its consumers, its providers and its consumers' providers
        (``standing``). A new pair (a, c) adds c to a's consumers and a to c's providers, so it can
        change a's standing, and, if a is trusted, c's and that of every other provider of c.
        """
        touched: set[str] = set()
        for author, consumer in ties:
            if policy.me in (author, consumer):
                return False
            touched.add(author)
            if author in self.trusted:
                touched.add(consumer)
                touched.update(state.providers_of(consumer))
        for author in touched:
            if not state.held(author):
                continue  # a consumer with no log of its own: not ranked
            new = policy.standing(state, author, self.trusted)
            old = self.standings.get(author)
            if new == old:
                continue
            self.standings[author] = new
            if old is not None and old.rank is not Rank.OWN:
                del self.order[bisect.bisect_left(self.order, _key(old), key=_key)]
            if new.rank is not Rank.OWN:
                bisect.insort(self.order, new, key=_key)
                if new.rank is Rank.UNKNOWN:
                    self.known.discard(author)
                else:
                    self.known.add(author)
        return True

    def unknown_held(self, state: LedgerState, others: int) -> int:
        """Entries of the authors with no standing, from ``others`` (every entry but ours): summed over
        the few authors with standing rather than the many without (a replica asks before each pull)."""
        held = state.held
        return others - sum(held(a) for a in self.known)

    def sums(self, state: LedgerState) -> _Sums:
        """What the authors in this order hold now, summed as ``Budget`` needs it."""
        held = state.held
        below = [0]
        droppable = total = 0
        for s in self.order:
            n = held(s.author)
            total += n
            if s.rank < Rank.SERVED_US:
                droppable += n
            below.append(droppable)
        return _Sums(below=below, total=total)


def _key(s: Standing) -> tuple[Rank, int, str]:
    """``Standing``'s own order, without a generated ``__lt__`` call per comparison."""
    return (s.rank, s.vouchers, s.author)


@dataclass(frozen=True, slots=True)
class _Sums:
    """Entries held, summed over an ``_Order`` at one moment."""

    below: list[int]
    """Entries of droppable authors ranked below the i-th (and below all, at the end)."""
    total: int
    """Entries of every author but us."""
