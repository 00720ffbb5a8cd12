"""Ledger speed: receipts verified per second against raw ed25519, and syncing 100,000 receipts.

1. Verification. The same run measures the raw ed25519 verify rate of this
   machine (``cryptography``, one thread: the physical limit) and how fast
   ledger entries are verified: parsed, both signatures (the author's and the
   consumer's) checked. An entry needs two verifies, so one thread can at best
   verify raw/2 entries a second. ``Ledger.add_remote`` verifies in worker
   threads (the library releases the GIL), so it can pass that figure.
2. Sync. Peer A holds N receipts (10 authors, 50 consumers) in its ledger
   file; a new peer B (real daemons in this process, libp2p on 127.0.0.1)
   connects and pulls them all. Reports the time until B holds every entry,
   the bytes B received on ``/garage/ledger/1.0.0``, and the raw size of the
   receipts (the JSON the providers signed) for comparison.

    .venv/bin/python benchmarks/ledger.py [--receipts 100000] [--verify 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.core.identity import Identity  # noqa: E402
from garage_p2p.core.ledger import ZERO_HASH, Entry, KeyCache, decode_entry, make_entry  # noqa: E402
from garage_p2p.core.receipts import Receipt, cosign_receipt, encode_receipt  # noqa: E402
from garage_p2p.daemon import open_peer  # noqa: E402
from garage_p2p.ledger.book import Ledger  # noqa: E402
from garage_p2p.settings import Settings  # noqa: E402
from garage_p2p.store.ledger_store import LedgerStore  # noqa: E402
from tools.testkit import loopback_settings  # noqa: E402

AUTHORS = 10
CONSUMERS = 50


def ident(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


def make_entries(n: int) -> list[Entry]:
    authors = [ident(f"author-{i}") for i in range(AUTHORS)]
    consumers = [ident(f"consumer-{i}") for i in range(CONSUMERS)]
    prev = {a.peer_id: ZERO_HASH for a in authors}
    entries = []
    base = 1_800_000_000_000
    rng = random.Random(7)  # request ids as random as the gateway's (uuid4 hex), so compression is not flattered
    for i in range(n):
        author = authors[i % AUTHORS]
        consumer = consumers[i % CONSUMERS]
        seq = i // AUTHORS + 1
        receipt = Receipt(
            request_id=f"req-{rng.getrandbits(96):024x}",
            consumer=consumer.peer_id,
            provider=author.peer_id,
            model="llama-3.1-8b-instruct",
            prompt_tokens=rng.randrange(10, 4000),
            completion_tokens=rng.randrange(1, 2000),
            gpus=1,
            gpu_us=rng.randrange(100_000, 800_000),
            start_ms=base + seq * 1000 + rng.randrange(100),
            end_ms=base + seq * 1000 + 900 + rng.randrange(100),
        )
        raw = encode_receipt(receipt)
        entry = make_entry(author, seq, prev[author.peer_id], raw, cosign_receipt(consumer, raw))
        prev[author.peer_id] = entry.hash
        entries.append(entry)
    return entries


def raw_verify_rate(n: int) -> float:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    messages = [os.urandom(300) for _ in range(256)]
    signatures = [key.sign(m) for m in messages]
    start = time.perf_counter()
    for i in range(n):
        public.verify(signatures[i % 256], messages[i % 256])
    return n / (time.perf_counter() - start)


def entry_verify_rate(blobs: list[bytes]) -> float:
    keys = KeyCache()
    start = time.perf_counter()
    for blob in blobs:
        decode_entry(blob, key=keys)
    return len(blobs) / (time.perf_counter() - start)


async def add_remote_rate(blobs: list[bytes], home: Path) -> float:
    # No caps: this measures verification, not what a peer with no tie to the author would keep.
    ledger = await Ledger.open(ident("bench-verifier"), home / "ledger.sqlite", caps=None)
    start = time.perf_counter()
    for i in range(0, len(blobs), 2048):  # pages, as sync delivers them
        result = await ledger.add_remote(blobs[i : i + 2048])
        assert not result.rejected, result.rejected[:1]
    rate = len(blobs) / (time.perf_counter() - start)
    await ledger.aclose()
    return rate


UNCAPPED = {f"ledger_max_{k}": 10**9 for k in ("entries", "seq", "unknown_entries", "unknown_seq")}
"""The synthetic authors have no tie to the measuring peers: lift the replication caps to measure sync itself."""


def settings(home: Path, **extra) -> Settings:
    return loopback_settings(home, log_level="ERROR", **{**UNCAPPED, **extra})


async def sync_run(entries: list[Entry], root: Path) -> dict:
    store = LedgerStore(root / "a" / "ledger.sqlite")
    store.add_entries([(e.author, e.seq, e.hash, e.encoded) for e in entries])
    store.close()
    async with open_peer(settings(root / "a")) as a:
        addr = [x for x in a.mesh.addrs() if "/127.0.0.1/" in x][:1]
        start = time.perf_counter()
        async with open_peer(settings(root / "b", bootstrap=addr)) as b:
            with trio.fail_after(600):
                while len(b.ledger.state) < len(entries):
                    await trio.sleep(0.05)
            elapsed = time.perf_counter() - start
            assert b.ledger.state.fingerprint() == a.ledger.state.fingerprint()
            return {"seconds": elapsed, "bytes": b.ledger_sync.bytes_pulled}


async def main_async(args) -> None:
    print(f"making {max(args.receipts, args.verify):,} signed entries …", flush=True)
    t = time.perf_counter()
    entries = make_entries(max(args.receipts, args.verify))
    print(f"  made in {time.perf_counter() - t:.1f} s")
    blobs = [e.encoded for e in entries[: args.verify]]

    raw = raw_verify_rate(args.verify * 2)
    one = entry_verify_rate(blobs)
    with tempfile.TemporaryDirectory() as tmp:
        threaded = await add_remote_rate(blobs, Path(tmp))
    print("\n1. verification (same run)")
    print(f"  raw ed25519 verify, 1 thread:              {raw:10,.0f} /s")
    print(f"  physical limit, entries (2 verifies each):  {raw / 2:10,.0f} /s per thread")
    print(f"  ledger entries verified, 1 thread:          {one:10,.0f} /s  ({one / (raw / 2):.0%} of the limit)")
    print(
        f"  Ledger.add_remote (2 threads, stored):      {threaded:10,.0f} /s  ({threaded / (raw / 2):.0%} "
        "of one thread's limit)"
    )

    sync_entries = entries[: args.receipts]
    raw_bytes = sum(len(e.raw) for e in sync_entries)
    entry_bytes = sum(len(e.encoded) for e in sync_entries)
    with tempfile.TemporaryDirectory() as tmp:
        result = await sync_run(sync_entries, Path(tmp))
    n = len(sync_entries)
    print(f"\n2. sync of {n:,} receipts from peer A to a new peer B")
    print(f"  time until B holds all:        {result['seconds']:8.1f} s  ({n / result['seconds']:,.0f} receipts/s)")
    print(
        f"  bytes B received:              {result['bytes'] / 1e6:8.1f} MB  ({result['bytes'] / n:.0f} B per receipt)"
    )
    print(f"  raw receipts (signed JSON):    {raw_bytes / 1e6:8.1f} MB  ({raw_bytes / n:.0f} B per receipt)")
    print(f"  entries as stored:             {entry_bytes / 1e6:8.1f} MB  ({entry_bytes / n:.0f} B per receipt)")
    print(f"  wire / raw:                    {result['bytes'] / raw_bytes:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=100_000, help="receipts to sync (1..1,000,000)")
    parser.add_argument("--verify", type=int, default=20_000, help="entries in the verification run")
    args = parser.parse_args()
    if not (0 < args.receipts <= 1_000_000 and 0 < args.verify <= 1_000_000):
        parser.error("--receipts and --verify must be 1..1,000,000")
    setup_logging("ERROR")
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
