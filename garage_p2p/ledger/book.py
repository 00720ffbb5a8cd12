"""The peer's ledger: the CRDT state, its SQLite store, and our own log.

- ``append_own``: a counter-signed receipt of ours becomes the next entry of
  our log. Concurrent appends are grouped: the first caller writes everyone
  queued so far in one transaction (group commit), and an entry is visible to
  other peers only after it is on disk, so a crash can never make us sign two
  entries with one seq.
- ``add_remote``: entries from another peer are parsed, cut to what the
  replication caps admit (``core.ledger_caps``), then verified in worker
  threads (ed25519 verification releases the GIL, so two cores verify twice
  as fast), added to the state and stored; authors pushed over the caps are
  dropped from both. Loading applies the caps again (they may have changed).
- Receipts we counter-signed as a consumer stay *pending* until the
  provider's log shows them; ``pending`` feeds the push-again loop.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..core.errors import PeerFault
from ..core.identity import Identity
from ..core.ledger import Entry, KeyCache, LedgerState, decode_entry, make_entry, verify_entry
from ..core.ledger_caps import ReplicationCaps, ReplicationPolicy
from ..core.ledger_restore import OwnLogRestore
from ..core.ledger_sync import HeadInfo, Want, plan_pulls
from ..core.receipts import Receipt, ReceiptInvalid, check_cosignature, check_provider_signature, parse_receipt
from ..store.ledger_store import LedgerStore, Pending

log = logging.getLogger(__name__)

VERIFY_THREADS = 2


@dataclass
class _Queued:
    raw: bytes
    cosig: bytes
    entry: Entry | None = None
    done: bool = False


@dataclass
class RemoteResult:
    """What came of a batch of entries from a peer."""

    added: list[Entry] = field(default_factory=list)
    """Entries that were new to us."""
    rejected: list[str] = field(default_factory=list)
    """Why each refused entry was refused."""
    over_caps: int = 0
    """Entries not taken (nor verified) because the replication caps have no room for them."""
    dropped: list[tuple[str, int]] = field(default_factory=list)
    """(author, seq above which its entries were dropped) to keep within the caps."""


def pack_pending(signature: bytes, raw: bytes, cosig: bytes) -> str:
    """A counter-signed receipt as a consumer keeps and pushes it."""
    return base64.b64encode(signature + cosig + raw).decode()


def unpack_pending(blob: str) -> tuple[bytes, bytes, bytes]:
    """(provider signature, counter-signature, receipt bytes); ReceiptInvalid if malformed."""
    try:
        data = base64.b64decode(blob, validate=True)
    except ValueError:
        raise ReceiptInvalid("pushed receipt is not base64") from None
    if len(data) < 128 + 2:
        raise ReceiptInvalid("pushed receipt too short")
    return data[:64], data[64:128], data[128:]


class Ledger:
    def __init__(
        self,
        identity: Identity,
        store: LedgerStore,
        state: LedgerState,
        caps: ReplicationCaps | None = ReplicationCaps(),
        restore: OwnLogRestore | None = None,
    ) -> None:
        self.identity = identity
        self.store = store
        self.state = state
        self.policy = ReplicationPolicy(identity.peer_id, caps)
        """Which others' entries we hold (``plan_pulls`` and ``add_remote`` follow it)."""
        self.keys = KeyCache()
        self.refusals: dict[str, int] = {}
        """Receipts each consumer did not counter-sign (remembered, and stored)."""
        self.on_change: list[Callable[[bool], None]] = []
        """Called after entries were added, with True when our own log grew (the sync service announces it)."""
        self.restore = restore
        """Until it opens, our log numbers nothing: its head may be older than the mesh's copy
        (``core.ledger_restore``; ``ledger.restore`` drives it). None: open from the start."""
        self.own_open = trio.Event()
        """Set once our own log may grow (``append_own`` waits for it)."""
        if restore is None or restore.open:
            self.own_open.set()
        self._queue: list[_Queued] = []
        self._cosigned: list[Pending] = []
        self._own_lock = trio.Lock()
        self._db_lock = trio.Lock()

    @classmethod
    async def open(
        cls,
        identity: Identity,
        path: Path,
        caps: ReplicationCaps | None = ReplicationCaps(),
        *,
        restore_timeout: float | None = None,
    ) -> Ledger:
        """Load the ledger under ``path`` (created if missing), within ``caps``.

        With ``restore_timeout``, our own log stays closed until ``ledger.restore`` pulled its head back from
        the peers (or that many seconds passed with none holding a newer one).
        """
        policy = ReplicationPolicy(identity.peer_id, caps)

        def load() -> tuple[LedgerStore, LedgerState, dict[str, int]]:
            store = LedgerStore(path)
            state = LedgerState()
            for data in store.entries():
                state.add(decode_entry(data, check_signatures=False))
            dropped = policy.shed(state)
            if dropped:
                store.add_entries([], drop=dropped)
                store.vacuum()  # rare (caps lowered, or a file from before the caps): give the space back
                log.info("ledger: dropped %d authors' entries over the replication caps", len(dropped))
            return store, state, store.refusals()

        store, state, refusals = await trio.to_thread.run_sync(load)
        restore = None if restore_timeout is None else OwnLogRestore(trio.current_time(), restore_timeout)
        ledger = cls(identity, store, state, caps, restore)
        ledger.refusals = refusals
        log.info("ledger: %d entries from %d authors", len(state), len(state.authors()))
        return ledger

    def plan(self, remote: Sequence[HeadInfo]) -> list[Want]:
        """What to pull from a peer that announced ``remote`` heads, within our caps."""
        return plan_pulls(self.state, remote, self.policy)

    async def aclose(self) -> None:
        async with self._db_lock:
            self.store.close()

    async def _db(self, fn, *args):
        async with self._db_lock:
            return await trio.to_thread.run_sync(fn, *args)

    def _changed(self, own: bool) -> None:
        for callback in self.on_change:
            callback(own)

    # -- our own log -------------------------------------------------------------

    async def append_own(self, raw: bytes, cosig: bytes) -> Entry | None:
        """Append a receipt we served, counter-signed; None if it is in our log already.

        Raises ReceiptInvalid if the counter-signature does not verify. Waits while our log is being
        restored: numbering an entry before our head is back would fork our own log.
        """
        receipt = parse_receipt(raw)
        check_cosignature(receipt, raw, cosig, self.keys)
        if receipt.provider != self.identity.peer_id:
            raise ReceiptInvalid("receipt of another provider")
        await self.own_open.wait()
        item = _Queued(raw, cosig)
        self._queue.append(item)
        async with self._own_lock:
            if not item.done:
                await self._write_queue()
        return item.entry

    async def _write_queue(self) -> None:
        batch, self._queue = self._queue, []
        me = self.identity.peer_id
        head = self.state.head(me)
        seq, prev = head.seq, head.hash
        seen: set[tuple[str, str]] = set()
        entries: list[tuple[_Queued, Entry]] = []
        for item in batch:
            receipt = Receipt.model_validate_json(item.raw)
            key = (receipt.consumer, receipt.request_id)
            if key in seen or self.state.has_receipt(me, *key):
                item.done = True
                continue
            seen.add(key)
            seq += 1
            entry = make_entry(self.identity, seq, prev, item.raw, item.cosig)
            prev = entry.hash
            entries.append((item, entry))
        try:
            if entries:
                await self._db(self.store.add_entries, [(me, e.seq, e.hash, e.encoded) for _, e in entries])
        finally:
            for item in batch:
                item.done = True
        for item, entry in entries:
            self.state.add(entry)
            item.entry = entry
        if entries:
            self._changed(True)

    def open_own(self) -> None:
        """Our own log may grow from now on (its head is restored, or no peer held a newer one)."""
        self.own_open.set()

    def has_own_receipt(self, consumer: str, request_id: str) -> bool:
        return self.state.has_receipt(self.identity.peer_id, consumer, request_id)

    async def note_refusal(self, consumer: str) -> None:
        """A consumer did not counter-sign a receipt of ours."""
        self.refusals[consumer] = self.refusals.get(consumer, 0) + 1
        log.warning("consumer %s did not counter-sign (%d so far)", consumer, self.refusals[consumer])
        await self._db(self.store.add_refusals, {consumer: 1})

    # -- others' logs --------------------------------------------------------------

    async def add_remote(self, blobs: list[bytes]) -> RemoteResult:
        """Take the entries from a peer that fit our caps: verify them, then add and store the new ones."""
        result = RemoteResult()

        def parse() -> list[Entry]:
            out = []
            for blob in blobs:
                try:
                    out.append(decode_entry(blob, check_signatures=False))
                except PeerFault as exc:
                    result.rejected.append(str(exc))
            return out

        # Caps first: what we would not keep costs no signature check.
        wanted, result.over_caps = self.policy.admit(self.state, await trio.to_thread.run_sync(parse))
        verified: list[list[Entry]] = [[] for _ in range(VERIFY_THREADS)]
        step = max(1, -(-len(wanted) // VERIFY_THREADS))

        def verify(part: list[Entry], out: list[Entry]) -> None:
            for entry in part:
                try:
                    verify_entry(entry, self.keys)
                    out.append(entry)
                except PeerFault as exc:
                    result.rejected.append(str(exc))

        async with trio.open_nursery() as nursery:
            for i in range(VERIFY_THREADS):
                part = wanted[i * step : (i + 1) * step]
                if part:
                    nursery.start_soon(trio.to_thread.run_sync, verify, part, verified[i])
        for part in verified:
            for entry in part:
                if self.state.add(entry):
                    result.added.append(entry)
        if result.added:
            result.dropped = self.policy.shed(self.state)
            added = [(e.author, e.seq, e.hash, e.encoded) for e in result.added]
            await self._db(self.store.add_entries, added, result.dropped)
            if result.dropped:
                log.info("ledger: over the replication caps, dropped %s", result.dropped[:10])
            self._changed(False)
        return result

    # -- receipts we counter-signed ------------------------------------------------

    def note_cosigned(self, provider: str, request_id: str, blob: str) -> None:
        """Keep a receipt we counter-signed (written at the next flush, within a second)."""
        self._cosigned.append(Pending(provider, request_id, blob, time.time()))

    async def flush(self) -> None:
        if self._cosigned:
            batch, self._cosigned = self._cosigned, []
            await self._db(self.store.add_pending, batch)

    async def serve(self, interval: float = 1.0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write counter-signed receipts in batches: one fsync a second, not one per request."""
        task_status.started()
        try:
            while True:
                await trio.sleep(interval)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()

    async def pending(self) -> list[Pending]:
        """Counter-signed receipts not yet in their provider's log (settled ones are dropped)."""
        await self.flush()
        items = await self._db(self.store.pending)
        settled = [
            (p.provider, p.request_id)
            for p in items
            if self.state.has_receipt(p.provider, self.identity.peer_id, p.request_id)
        ]
        if settled:
            await self._db(self.store.drop_pending, settled)
            settled_set = set(settled)
            items = [p for p in items if (p.provider, p.request_id) not in settled_set]
        return items

    async def accept_pushed(self, blob: str) -> bool:
        """A consumer pushes a counter-signed receipt of ours we may have lost (a crash).

        True if it was appended, False if our log has it already; ReceiptInvalid
        if it is not a receipt we signed or its counter-signature is wrong.
        """
        signature, cosig, raw = unpack_pending(blob)
        receipt = parse_receipt(raw)
        if receipt.provider != self.identity.peer_id:
            raise ReceiptInvalid("pushed receipt names another provider")
        check_provider_signature(receipt, raw, signature, self.keys)
        if self.has_own_receipt(receipt.consumer, receipt.request_id):
            return False
        return await self.append_own(raw, cosig) is not None
