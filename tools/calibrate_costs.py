"""Measure what each kind of message costs a real peer, for the simulator's cost model.

Two processes on 127.0.0.1, each a real py-libp2p host with gossipsub (``mesh.host.open_mesh``,
the daemon's own set-up): this one sends, a child (``--serve``) receives. Each phase sends many
messages of one kind and reads both processes' CPU time (``time.process_time``) before and after,
so a figure is a real sender's or receiver's CPU per message, framing, Noise and yamux included:

- ads: signed provider ads on ``garage/caps/1``, received through the daemon's checks
  (pubsub signature, ``open_ad``, ``PeerTable.apply``);
- heads: ledger heads announcements (64 heads) on ``garage/ledger/1``, parsed;
- streams: one small request and answer per new stream (a table request, a ledger pull, a request HEAD);
- frames: small writes on one stream (a streamed token chunk);
- bulk: 64 KiB writes (a table page, a ledger page), per KiB;
- pings: liveness pings, a yamux PING and its answer (mesh/liveness.py).

Pure CPU work is timed in this process: signing an ad, checking one (``open_ad`` and
``PeerTable.apply``), the table's answer per ad, a receipt signed, counter-signed and checked.

Upkeep, what a daemon pays with nothing to do (timers, keepalives, gossipsub's heartbeat), is
read from real ``garage-peer`` processes: one alone (per second), then a settled mesh of
UPKEEP_PEERS (per connection per second, CPU and bytes on their sockets, less what the simulator
prices per message).

    .venv/bin/python -m tools.calibrate_costs            # writes garage_p2p/sim/costs.json (~5 min)
    .venv/bin/python -m tools.calibrate_costs --dry-run  # prints the figures only

The machine's load counts: run it on an otherwise quiet machine, twice, and keep the lower run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from libp2p.peer.id import ID

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.core.capabilities import (
    TOPIC_CAPS,
    Benchmark,
    GpuSpec,
    Hardware,
    Load,
    ModelOffer,
    PeerTable,
    TableRequest,
    make_ad,
    open_ad,
    sign_ad,
)
from garage_p2p.core.identity import Identity
from garage_p2p.core.ledger import Head
from garage_p2p.core.ledger_sync import MAX_ANNOUNCED_HEADS, TOPIC_LEDGER, HeadInfo, HeadsAnnouncement
from garage_p2p.core.liveness import QUIET
from garage_p2p.core.messages import decode_json, encode_json
from garage_p2p.core.receipts import (
    Receipt,
    check_cosignature,
    cosign_receipt,
    encode_receipt,
    pack_signed,
    sign_receipt,
    unpack_signed,
)
from garage_p2p.mesh.host import open_mesh
from garage_p2p.mesh.patches import send_yamux_ping, watch_frames, yamux_pong
from garage_p2p.mesh.streams import PeerStream, read_some, write_all
from garage_p2p.sim import calibration as cal
from tools.testkit import daemon_sockets, proc_cpu_s

COSTS = Path(__file__).resolve().parents[1] / "garage_p2p" / "sim" / "costs.json"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PROTOCOL = "/garage-calibrate/rpc/1"
BURST = 20
"""Gossip messages published before waiting for the receiver (py-libp2p's per-peer queue holds 32)."""
YAMUX_HEADER = 12
NOISE_OVERHEAD = 18
"""A Noise transport message: 2 bytes of length and a 16-byte tag."""
RPC_WRAPPER = 5
"""Pubsub's RPC message around one Message, and its varint length prefix."""
ME = Identity.from_seed(bytes(range(32))).peer_id
"""A peer id, for sizes."""
STREAM_OPEN_BYTES = 2 * (YAMUX_HEADER + NOISE_OVERHEAD) + 2 * (len("/multistream/1.0.0\n") + 1) + 40
"""A new stream on an open connection: yamux SYN and ACK, multistream-select both ways, a protocol name."""


def cpu() -> float:
    return time.process_time()


def sample_ad(identity: Identity, seq: int) -> bytes:
    """A provider's ad as the simulator makes them: one model, one GPU, two relayed addresses."""
    relay = Identity.from_seed(bytes(32)).peer_id
    offer = ModelOffer(
        name="llama-3.1-8b",
        max_concurrency=16,
        benchmark=Benchmark(
            single_stream_tps=120.0, aggregate_tps=900.0, concurrency=16, ttft_p50_ms=80.0, measured_at=time.time()
        ),
        load=Load(running=2, waiting=0, in_flight=2),
    )
    ad = make_ad(
        identity,
        seq=seq,
        now=time.time(),
        ttl=900.0,
        addrs=tuple(f"/ip4/10.0.0.{i}/tcp/4001/p2p/{relay}/p2p-circuit" for i in (1, 2)),
        models=(offer,),
        version="0.1.0",
        hardware=Hardware(gpus=(GpuSpec(name="RTX 4070", vram_mib=12288),)),
        region="se-sto",
    )
    return sign_ad(identity, ad)


def sample_heads(peer_id: str, count: int = MAX_ANNOUNCED_HEADS) -> bytes:
    """A heads announcement with ``count`` heads (at most MAX_ANNOUNCED_HEADS)."""
    heads = tuple(
        HeadInfo.of(Identity.from_seed(i.to_bytes(32, "big")).peer_id, Head(1000 + i, os.urandom(32)))
        for i in range(count)
    )
    return encode_json(HeadsAnnouncement(peer=peer_id, heads=heads, authors=1000))


def per_call_ms(fn, seconds: float = 1.5) -> float:
    """CPU milliseconds per call of ``fn``, over about ``seconds``."""
    start, calls = cpu(), 0
    while cpu() - start < seconds:
        fn()
        calls += 1
    return (cpu() - start) * 1000 / calls


def pure_cpu() -> dict[str, float]:
    """What needs no network: signing and checking ads, table answers, receipts."""
    me = Identity.from_seed(os.urandom(32))
    seq = iter(range(1, 10**9))
    wires = [sample_ad(Identity.from_seed(os.urandom(32)), 1) for _ in range(1000)]
    table = PeerTable(me.peer_id)
    now = time.time()
    for w in wires:
        table.apply(open_ad(w, now), now)

    def check() -> None:
        fresh = PeerTable(me.peer_id)
        fresh.apply(open_ad(wires[0], now), now)

    answer_ms = per_call_ms(lambda: table.answer(wires[0], time.time(), TableRequest()))
    answer_ads = len(table.answer(wires[0], time.time(), TableRequest()).ads)
    consumer, provider = Identity.from_seed(os.urandom(32)), Identity.from_seed(os.urandom(32))

    def receipt() -> None:
        raw = encode_receipt(
            Receipt(
                request_id="r1",
                consumer=consumer.peer_id,
                provider=provider.peer_id,
                model="llama-3.1-8b",
                prompt_tokens=300,
                completion_tokens=200,
                gpus=1,
                gpu_us=1_500_000,
                start_ms=1,
                end_ms=2000,
            )
        )
        checked, raw2, _ = unpack_signed(pack_signed(raw, sign_receipt(provider, raw)))
        check_cosignature(checked, raw2, cosign_receipt(consumer, raw2))

    heads = sample_heads(me.peer_id)
    return {
        "heads_parse_ms": per_call_ms(lambda: decode_json(HeadsAnnouncement, heads)),
        "ad_sign_ms": per_call_ms(lambda: sample_ad(me, next(seq))),
        "ad_check_ms": per_call_ms(check),
        "table_answer_ad_ms": answer_ms / answer_ads,
        "receipt_ms": per_call_ms(receipt),
    }


# -- the receiving process -----------------------------------------------------------------------


async def serve() -> None:
    """The child: a host that takes ads and heads like a daemon, answers streams, and reports its CPU."""
    me = Identity.from_seed(os.urandom(32))
    counts = {"ads": 0, "heads": 0, "streams": 0, "bytes": 0}
    sizes: dict[str, int] = {}
    table = PeerTable(me.peer_id)
    # No liveness pings of their own: the pings phase sends them, counted.
    async with open_mesh(me, LOOPBACK, liveness=False) as mesh:
        sig_ms: list[float] = []

        def take_ad(_peer, msg) -> bool:
            now = time.time()
            table.apply(open_ad(msg.data, now), now)
            counts["ads"] += 1
            sizes["ad_envelope"] = msg.ByteSize() - len(msg.data)
            if not sig_ms:
                from libp2p.pubsub.validators import signature_validator

                sig_ms.append(per_call_ms(lambda: signature_validator(msg), 0.3))
            return True

        def take_heads(_peer, msg) -> bool:
            decode_json(HeadsAnnouncement, msg.data)
            counts["heads"] += 1
            return True

        async def answer(stream: PeerStream) -> None:
            size = 0
            while True:
                data = await read_some(stream)
                if not data:
                    break
                size += len(data)
                counts["bytes"] += len(data)
            if size < 4096:  # a request: answer it (bulk and frame phases only send)
                await write_all(stream, b"a" * 300)
            counts["streams"] += 1
            await stream.close()

        await mesh.pubsub.subscribe(TOPIC_CAPS)
        await mesh.pubsub.subscribe(TOPIC_LEDGER)
        mesh.pubsub.set_topic_validator(TOPIC_CAPS, take_ad, False)
        mesh.pubsub.set_topic_validator(TOPIC_LEDGER, take_heads, False)
        mesh.set_handler(PROTOCOL, answer)
        print(json.dumps({"peer_id": mesh.peer_id, "addrs": mesh.addrs()}), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            chunk = await stdin.receive_some(1024)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                _, buffer = buffer.split(b"\n", 1)
                report = {"cpu": cpu(), **counts, **sizes, "pubsub_signature_ms": sig_ms[0] if sig_ms else None}
                print(json.dumps(report), flush=True)


# -- the sending process --------------------------------------------------------------------------


class Child:
    """The receiving process, asked for its CPU and counters over its stdin."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.calibrate_costs", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.hello = json.loads(self.proc.stdout.readline())

    def ask(self) -> dict:
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def phase(child: Child, name: str, count: int, work, done) -> tuple[float, float]:
    """Run ``work``; wait until ``done(report)``; (sender ms, receiver ms) per one of ``count``."""
    before = await trio.to_thread.run_sync(child.ask)
    mine = cpu()
    await work()
    sent = cpu() - mine
    with trio.fail_after(60):
        while True:
            report = await trio.to_thread.run_sync(child.ask)
            if done(report):
                break
            await trio.sleep(0.05)
    print(f"  {name}: {count} done", file=sys.stderr)
    return sent * 1000 / count, (report["cpu"] - before["cpu"]) * 1000 / count


async def measure(child: Child, messages: int) -> dict[str, float]:
    me = Identity.from_seed(os.urandom(32))
    peer_id, addrs = child.hello["peer_id"], child.hello["addrs"]
    figures: dict[str, float] = {}
    # No liveness pings of their own: the pings phase sends them, counted.
    async with open_mesh(me, LOOPBACK, liveness=False) as mesh:
        await mesh.connect(peer_id, addrs[:1])
        await mesh.pubsub.subscribe(TOPIC_CAPS)
        await mesh.pubsub.subscribe(TOPIC_LEDGER)
        with trio.fail_after(20):
            while not all(
                ID.from_base58(peer_id) in mesh.pubsub.peer_topics.get(t, set()) for t in (TOPIC_CAPS, TOPIC_LEDGER)
            ):
                await trio.sleep(0.05)
        await trio.sleep(1.5)  # a gossipsub heartbeat: the two are in each other's mesh
        ads = [sample_ad(me, seq) for seq in range(1, messages + 1)]
        heads = sample_heads(me.peer_id)
        start = (await trio.to_thread.run_sync(child.ask))["ads"]

        async def gossip(topic: str, payloads: list[bytes], key: str) -> None:
            base = (await trio.to_thread.run_sync(child.ask))[key]
            for n, data in enumerate(payloads):
                await mesh.pubsub.publish(topic, data)
                if n % BURST == BURST - 1:
                    with trio.fail_after(30):
                        while (await trio.to_thread.run_sync(child.ask))[key] < base + n + 1:
                            await trio.sleep(0.01)

        figures["ad_send_ms"], figures["ad_receive_ms"] = await phase(
            child,
            "ads",
            messages,
            lambda: gossip(TOPIC_CAPS, ads, "ads"),
            lambda r: r["ads"] >= start + messages,
        )
        start = (await trio.to_thread.run_sync(child.ask))["heads"]
        figures["heads_send_ms"], figures["heads_receive_ms"] = await phase(
            child,
            "heads",
            messages,
            lambda: gossip(TOPIC_LEDGER, [heads] * messages, "heads"),
            lambda r: r["heads"] >= start + messages,
        )

        async def exchange(payload: bytes, writes: int = 1) -> None:
            stream = PeerStream(await mesh.open_stream(peer_id, addrs[:1], PROTOCOL))
            for _ in range(writes):
                await write_all(stream, payload)
            await stream.close()
            while await read_some(stream):
                pass

        async def streams(count: int, payload: bytes, writes: int = 1) -> None:
            for _ in range(count):
                await exchange(payload, writes)

        n_streams = max(50, messages // 2)
        base = (await trio.to_thread.run_sync(child.ask))["streams"]
        figures["stream_client_ms"], figures["stream_server_ms"] = await phase(
            child,
            "streams",
            n_streams,
            lambda: streams(n_streams, b"r" * 200),
            lambda r: r["streams"] >= base + n_streams,
        )
        frames = messages * 5
        base_bytes = (await trio.to_thread.run_sync(child.ask))["bytes"]
        figures["frame_send_ms"], figures["frame_receive_ms"] = await phase(
            child,
            "frames",
            frames,
            lambda: streams(1, b"f" * 150, frames),
            lambda r: r["bytes"] >= base_bytes + 150 * frames,
        )
        kib = 8 * 1024
        base_bytes = (await trio.to_thread.run_sync(child.ask))["bytes"]
        figures["kib_send_ms"], figures["kib_receive_ms"] = await phase(
            child,
            "bulk",
            kib,
            lambda: streams(1, b"b" * 65536, kib // 64),
            lambda r: r["bytes"] >= base_bytes + kib * 1024,
        )
        pings = max(50, messages // 2)
        [conn] = mesh.host.get_network().get_connections(ID.from_base58(peer_id))
        answered = [trio.Event()]

        def on_header(header: bytes) -> None:
            if yamux_pong(header) is not None:
                answered[0].set()

        watch_frames(conn.muxed_conn, on_header)

        async def ping() -> None:
            for nonce in range(1, pings + 1):
                answered[0] = trio.Event()
                await send_yamux_ping(conn.muxed_conn, nonce)
                with trio.fail_after(5):
                    await answered[0].wait()

        figures["ping_client_ms"], figures["ping_server_ms"] = await phase(child, "pings", pings, ping, lambda r: True)
        report = await trio.to_thread.run_sync(child.ask)
        figures["pubsub_signature_ms"] = report["pubsub_signature_ms"]
        figures["ad_envelope_bytes"] = report["ad_envelope"]
        figures["provider_ad_bytes"] = len(ads[0])
    return figures


UPKEEP_PEERS = 10
UPKEEP_SETTLE_S = 100.0
"""Past the joining peers' own DHT refreshes (mesh/discovery.py: at once, then after DHT_REFRESH_SPARSE)."""
UPKEEP_WINDOW_S = 30.0


def daemon_upkeep(stream_ms: float, ping_ms: float) -> dict[str, float]:
    """What a real daemon pays each second with no message priced per message: alone (its timers), and
    per connection in a settled mesh of UPKEEP_PEERS (mean over them).

    The mesh's idle table syncs (one per TABLE_SYNC_S) and ledger digest compares (one per
    ANTI_ENTROPY_S), each a stream exchange of ``stream_ms`` client + server, and each idle connection's
    liveness ping (one per QUIET seconds, each end paying ``ping_ms``, half the exchange) are
    priced per message by the simulator: they are taken out here, so as not to count them twice."""
    rng = random.Random(1)

    def idle(peers: list[PeerProcess], settle: float) -> tuple[float, float, float]:
        """Mean CPU ms/s, bytes/s on mesh sockets and connections of ``peers`` over a window."""
        time.sleep(settle)
        pids = {p.process.pid for p in peers}
        cpu0, sockets0 = {pid: proc_cpu_s(pid) for pid in pids}, daemon_sockets(pids)
        time.sleep(UPKEEP_WINDOW_S)
        cpu1, sockets1 = {pid: proc_cpu_s(pid) for pid in pids}, daemon_sockets(pids)
        moved = sum(s.bytes - (sockets0[k].bytes if k in sockets0 else 0) for k, s in sockets1.items())
        cpu_ms = sum(cpu1[pid] - cpu0[pid] for pid in pids) * 1000 / UPKEEP_WINDOW_S / len(pids)
        return cpu_ms, moved / UPKEEP_WINDOW_S / len(pids), len(sockets1) / len(pids)

    quiet = ["--log-level", "ERROR"]
    with tempfile.TemporaryDirectory(prefix="upkeep") as root:
        peers: list[PeerProcess] = []
        try:
            for i in range(UPKEEP_PEERS):
                boot = [p.addr for p in rng.sample(peers, min(2, len(peers)))]
                peer = PeerProcess(Path(root) / f"p{i}", peer_args(bootstrap=boot, extra=quiet))
                peers.append(peer.start())
                peer.wait_ready()
                if i == 0:
                    alone_ms, _, _ = idle(peers, 10.0)
            mesh_ms, mesh_bytes, connections = idle(peers, UPKEEP_SETTLE_S)
        finally:
            for p in peers:
                p.kill()
    priced_ms = stream_ms * (1 / cal.TABLE_SYNC_S + 1 / cal.ANTI_ENTROPY_S)
    connections = max(connections, 1.0)
    return {
        "upkeep_ms_per_s": alone_ms,
        "connection_ms_per_s": max(0.0, (mesh_ms - alone_ms - priced_ms) / connections - ping_ms / QUIET),
        "connection_bytes_per_s": mesh_bytes / connections,
    }


def costs_from(figures: dict[str, float], pure: dict[str, float], upkeep: dict[str, float]) -> dict:
    """The simulator's per-message costs from the raw figures."""
    ms = {
        # A first copy: framing, pubsub signature, open_ad, PeerTable.apply.
        "ad_receive": figures["ad_receive_ms"],
        # A duplicate copy is dropped by gossipsub's seen cache before any signature check:
        # what receiving a heads message costs, less its signature check and parse.
        "gossip_duplicate": max(
            0.0, figures["heads_receive_ms"] - figures["pubsub_signature_ms"] - pure["heads_parse_ms"]
        ),
        # One copy sent (publishing or forwarding): the publish less the ad's own signing.
        "gossip_send": max(0.0, figures["ad_send_ms"] - pure["ad_sign_ms"]),
        "ad_sign": pure["ad_sign_ms"],
        "heads_receive": figures["heads_receive_ms"],
        "heads_send": figures["heads_send_ms"],
        "stream_client": figures["stream_client_ms"],
        "stream_server": figures["stream_server_ms"],
        "frame_send": figures["frame_send_ms"],
        "frame_receive": figures["frame_receive_ms"],
        "kib_send": figures["kib_send_ms"],
        "kib_receive": figures["kib_receive_ms"],
        "ping_client": figures["ping_client_ms"],
        "ping_server": figures["ping_server_ms"],
        "ad_check": pure["ad_check_ms"],
        "table_answer_ad": pure["table_answer_ad_ms"],
        "receipt": pure["receipt_ms"],
        # Per second: a lone daemon's timers, and each connection's keepalives and gossip heartbeat.
        "upkeep_per_s": upkeep["upkeep_ms_per_s"],
        "connection_per_s": upkeep["connection_ms_per_s"],
    }
    frame = YAMUX_HEADER + NOISE_OVERHEAD
    return {
        "measured_by": "python -m tools.calibrate_costs",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "cpu_ms": {k: round(v, 4) for k, v in sorted(ms.items())},
        "bytes": {
            "gossip_overhead": int(figures["ad_envelope_bytes"]) + RPC_WRAPPER + frame,
            "heads_base": len(sample_heads(ME, 0)),
            "heads_per_head": round((len(sample_heads(ME)) - len(sample_heads(ME, 0))) / MAX_ANNOUNCED_HEADS, 1),
            "frame_overhead": frame,
            "stream_open": STREAM_OPEN_BYTES,
            "ping": frame,  # a yamux PING is a bare header
            "provider_ad": int(figures["provider_ad_bytes"]),
            "connection_per_s": round(upkeep["connection_bytes_per_s"], 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400, help="messages per gossip phase")
    parser.add_argument("--dry-run", action="store_true", help="print, do not write costs.json")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve)
        return
    started = time.monotonic()
    from garage_p2p.cli.common import setup_logging

    setup_logging("ERROR")
    print("pure CPU …", file=sys.stderr)
    pure = pure_cpu()
    child = Child()
    try:
        print("two hosts …", file=sys.stderr)
        figures = trio.run(measure, child, args.messages)
    finally:
        child.stop()
    print("idle daemons …", file=sys.stderr)
    upkeep = daemon_upkeep(
        figures["stream_client_ms"] + figures["stream_server_ms"],
        (figures["ping_client_ms"] + figures["ping_server_ms"]) / 2,
    )
    costs = costs_from(figures, pure, upkeep)
    text = json.dumps(costs, indent=2, sort_keys=True) + "\n"
    print(text, end="")
    print(f"took {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not args.dry_run:
        COSTS.write_text(text)
        print(f"wrote {COSTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
