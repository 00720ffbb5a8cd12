"""Pulling our own log's head back from the mesh before we sign anything (``core.ledger_restore`` decides).

``restore_own_log`` asks every connected peer for the head of our log
(``LedgerSync.own_head``: one small ``heads`` request, then the missing range
pulled on the same stream) until the decision opens our log; then
``Ledger.append_own`` numbers entries again. Until then
``refuse_while_restoring`` turns other peers' requests away with a retryable
503 (their consumers fail over): a request served now would make a receipt
we cannot log yet. Our own requests to our own backend are served as always:
they make no receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..core.exchange import error_frame
from ..core.messages import error_info
from ..mesh.streams import PeerStream, StreamBroken, close_quietly, write_all
from .book import Ledger
from .sync import LedgerSync

log = logging.getLogger(__name__)

TICK = 0.25
"""Seconds between decisions while restoring (new connections, the timeout)."""
RETRY = 2.0
"""Seconds before a peer we could not ask is asked again."""
REFUSE_TIMEOUT = 2.0


async def restore_own_log(
    ledger: Ledger, sync: LedgerSync, connected: Callable[[], Sequence[str]], *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Ask connected peers for our log's head until ``ledger.restore`` opens it; then open the log."""
    restore = ledger.restore
    task_status.started()
    if restore is None or ledger.own_open.is_set():
        return
    me = ledger.identity.peer_id
    asking: set[str] = set()

    async def ask(peer: str) -> None:
        try:
            answer = await sync.own_head(peer)
            if answer is None:
                restore.could_not_ask(peer)
                await trio.sleep(RETRY)  # paces the retries of a peer that does not answer
            else:
                seq, pulled = answer
                restore.pulled += pulled
                restore.answered(peer, seq)
        finally:
            asking.discard(peer)

    async with trio.open_nursery() as nursery:
        # Bounded: the decision opens at the latest when its timeout passes (a peer's claim above our head
        # is recorded only once its entries are ours).
        while not restore.step(trio.current_time(), ledger.state.head(me).seq, connected()):
            for peer in restore.to_ask(connected()):
                if peer not in asking:
                    asking.add(peer)
                    nursery.start_soon(ask, peer)
            await trio.sleep(TICK)
        nursery.cancel_scope.cancel()
    log.info("ledger: our own log is open at seq %d: %s", ledger.state.head(me).seq, restore.reason)
    ledger.open_own()


def refuse_while_restoring(
    ledger: Ledger, handler: Callable[[PeerStream], Awaitable[None]]
) -> Callable[[PeerStream], Awaitable[None]]:
    """``handler`` for other peers' requests, which turns them away while our log is being restored."""

    async def guarded(stream: PeerStream) -> None:
        if ledger.own_open.is_set():
            await handler(stream)
            return
        reason = ledger.restore.reason if ledger.restore else "restoring"
        refusal = error_info(
            503, f"provider is restoring its ledger: {reason}", code="provider_restoring", retryable=True
        )
        with trio.move_on_after(REFUSE_TIMEOUT):
            try:
                await write_all(stream, error_frame(refusal))
            except StreamBroken:
                pass
        await close_quietly(stream)

    return guarded
