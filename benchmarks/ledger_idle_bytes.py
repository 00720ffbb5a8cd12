"""What an idle ledger sends per peer, before and after issue 17 (no network: the core's own messages).

For replicas of N authors (one throwaway entry each) it prints the bytes of one head compare between
two equal replicas, as it was (the whole head list, paged) and as it is (a digest and a ``same``), and
the size of one heads announcement, which every peer used to publish every 30 s (each reaching every
peer) and now publishes only when its own log grows.

    PYTHONPATH=. .venv/bin/python benchmarks/ledger_idle_bytes.py [--authors 200 1000]
"""

from __future__ import annotations

import argparse
import os

from garage_p2p.core.identity import Identity
from garage_p2p.core.ledger import LedgerState
from garage_p2p.core.ledger_sync import LedgerRequest, announcement, heads_digest, heads_page
from garage_p2p.core.messages import encode_json
from tools.attacks.forged_ledger import throwaway_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=int, nargs="+", default=[200, 1000])
    args = parser.parse_args()
    consumer = Identity.from_seed(os.urandom(32))
    for n in args.authors:
        state = LedgerState()
        for _ in range(n):
            for entry in throwaway_log(Identity.from_seed(os.urandom(32)), consumer, 1):
                state.add(entry)
        digest = heads_digest(state)
        before = len(encode_json(LedgerRequest(op="heads"))) + len(encode_json(heads_page(state, None)))
        after = len(encode_json(LedgerRequest(op="heads", digest=digest))) + len(
            encode_json(heads_page(state, None, digest=digest))
        )
        heads, _ = announcement(state, consumer.peer_id, 0)
        print(
            f"{n} authors: compare of equal replicas {before} B before, {after} B now; "
            f"one heads announcement {len(encode_json(heads))} B (was every 30 s from every peer, now none at idle)"
        )


if __name__ == "__main__":
    main()
