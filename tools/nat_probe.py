"""Prototype: relay v2 + DCUtR hole punching through real NAT with py-libp2p 0.8.1.

Runs inside the namespaces of ``tools.natlab`` (one process per
machine) with the project venv's python::

    ip netns exec gpnat-r1 .venv/bin/python -m tools.nat_probe relay --ip 198.51.100.10
    ip netns exec gpnat-b  .venv/bin/python -m tools.nat_probe peer --ip 192.168.11.2 --relay R1ADDR
    ip netns exec gpnat-a  .venv/bin/python -m tools.nat_probe peer --ip 192.168.10.2 --relay R1ADDR --target B_ID

Each prints JSON lines on stdout: ``{"event": "ready", ...}`` once serving, and
the dialling peer one ``{"event": "result", ...}``: reservation time, relayed
dial + echo, time to a direct (hole-punched) connection, an echo over it after
the relayed connection is closed, what identify told us about our public
address. ``run_probe(lab, ...)`` (root namespace) starts all three in a lab
and returns the merged result; ``python -m tools.nat_probe lab
--nat cone`` does that end to end.

``open_nat_host`` is the assembly to fold into ``garage_p2p.mesh.host``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn
from libp2p.connection_types import ConnectionType
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from garage_p2p.mesh.nat import DCUTR_DIAL_TIMEOUT, PublicPredialDCUtR
from garage_p2p.mesh.patches import apply_library_patches
from tools.testkit import REPO

log = logging.getLogger("nat_probe")

ECHO = "/garage/natprobe/echo/1.0.0"
LISTEN_PORT = 4001

# Relay limits: generous for a probe; size them for production.
RELAY_LIMITS = RelayLimits(
    duration=3600,  # max seconds per relayed connection (0 = unlimited)
    data=64 * 1024 * 1024,  # max bytes per relayed connection, both directions
    max_circuit_conns=16,
    max_reservations=64,
)


def key_pair_from_seed(seed: str) -> KeyPair:
    """A stable Ed25519 identity from any string (the probe's peer ids are reproducible)."""
    private = Ed25519PrivateKey.from_bytes(hashlib.sha256(seed.encode()).digest())
    return KeyPair(private, private.get_public_key())


@dataclass
class NatHost:
    """A running host with relay v2 and DCUtR."""

    host: object
    relay_protocol: CircuitV2Protocol
    transport: CircuitV2Transport | None
    """Peers only: dials /p2p-circuit addresses and makes reservations."""
    dcutr: DCUtRProtocol | None
    reservations: dict[str, float] = field(default_factory=dict)
    """Relay peer id → seconds the reservation took (connect + RESERVE)."""
    relay_addrs: list[str] = field(default_factory=list)
    """Our /p2p-circuit addresses (one per reserved relay): what to advertise."""


@asynccontextmanager
async def open_nat_host(
    identity_seed: str,
    listen_ip: str,
    listen_port: int,
    relays: Sequence[str] = (),
    *,
    is_relay: bool,
    skip_private_predial: bool = False,
) -> AsyncIterator[NatHost]:
    """Run a host that is a relay (HOP) or a NATed peer (STOP + client + DCUtR).

    A peer connects to each relay in ``relays`` (full multiaddrs with /p2p/)
    and makes an explicit reservation before this yields.
    """
    apply_library_patches()  # 250 ms happy-eyeballs wait per dial, yamux fixes
    listen = [multiaddr.Multiaddr(f"/ip4/{listen_ip}/tcp/{listen_port}")]
    host = new_host(
        key_pair=key_pair_from_seed(identity_seed),
        muxer_preference="YAMUX",
        # A FIXED port on the stock TCP listener: it sets SO_REUSEPORT, and
        # DCUtR binds its punching dials to our listen (ip, port) so the SYN
        # leaves from the port it predicts for us (WAN_IP:listen_port) — a
        # port-preserving (cone) NAT then maps it to exactly that.
        # Listen on the concrete address, not 0.0.0.0: the relay puts its
        # listen addresses into reservations and skips wildcards.
        listen_addrs=listen,
        # Identify stays on (the default): the relay reports the address it
        # sees us at, which is how a NATed peer learns its public IP. Keep
        # address discovery enabled (disable_identify_address_discovery=False).
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run(listen))
        # Circuit relay v2. run() registers the STOP handler always, and the
        # HOP handler with allow_hop=True. The STOP handler upgrades an
        # inbound circuit itself and tags the connection RELAYED with a
        # /p2p-circuit transport address (DCUtR's auto-drive looks for that).
        relay_protocol = CircuitV2Protocol(host, limits=RELAY_LIMITS, allow_hop=is_relay)
        await stack.enter_async_context(background_trio_service(relay_protocol))
        await relay_protocol.event_started.wait()
        if is_relay:
            # A relay needs nothing else (no transport, no DCUtR).
            yield NatHost(host, relay_protocol, None, None)
            return

        # The client side: new_host does not register a circuit transport,
        # and Swarm.dial_peer DROPS /p2p-circuit addresses ("no relay
        # transport"), so host.connect() never uses a relay. Relayed dials
        # go through CircuitV2Transport.dial(circuit_addr) explicitly; it
        # upgrades (Noise + yamux) and adds the connection to the swarm.
        # Its built-in RelayDiscovery is not started: we reserve explicitly.
        transport = CircuitV2Transport(
            host, relay_protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=RELAY_LIMITS)
        )
        # DCUtR on both peers: it serves /libp2p/dcutr and every 2 s scans
        # for relayed connections and initiates a punch (3 attempts per peer).
        # dial_timeout bounds each punch dial too: keep it above 1 s, the first
        # SYN retransmission, which often is the one that gets through.
        dcutr_class = PublicPredialDCUtR if skip_private_predial else DCUtRProtocol
        dcutr = dcutr_class(host, dial_timeout=DCUTR_DIAL_TIMEOUT)
        await stack.enter_async_context(background_trio_service(dcutr))
        await dcutr.event_started.wait()
        node = NatHost(host, relay_protocol, transport, dcutr)
        nursery = await stack.enter_async_context(trio.open_nursery())
        for addr in relays:
            relay_ma = multiaddr.Multiaddr(addr)
            info = info_from_p2p_addr(relay_ma)
            started = time.monotonic()
            with trio.fail_after(10):
                await host.connect(info)
                stream = await host.new_stream(info.peer_id, [HOP_PROTOCOL_ID])
                # reserve() sends RESERVE and starts (in our nursery) the
                # worker that refreshes the reservation before it expires.
                ok = await transport.reserve(stream, info.peer_id, nursery)
                await stream.close()
            if ok:
                node.reservations[str(info.peer_id)] = time.monotonic() - started
                node.relay_addrs.append(f"{addr}/p2p-circuit/p2p/{host.get_id()}")
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


async def dial_via_relay(node: NatHost, relay_addr: str, target: str) -> INetConn:
    """A relayed connection to ``target`` through the relay at ``relay_addr``."""
    assert node.transport is not None
    return await node.transport.dial(multiaddr.Multiaddr(f"{relay_addr}/p2p-circuit/p2p/{target}"))


def is_relayed(conn: INetConn) -> bool:
    """Relayed connections carry a /p2p-circuit transport address (and type RELAYED)."""
    if conn.get_connection_type() == ConnectionType.RELAYED:
        return True
    return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())


def connections_to(node: NatHost, peer: ID) -> list[INetConn]:
    conns = node.host.get_network().connections.get(peer) or []
    return [c for c in (conns if isinstance(conns, list) else [conns]) if not c.is_closed]


def describe_conn(conn: INetConn) -> dict:
    remote = None
    get_remote = getattr(conn.muxed_conn, "get_remote_address", None)
    if callable(get_remote):
        remote = get_remote()
    return {
        "type": conn.get_connection_type().value,
        "transport_addrs": [str(a) for a in conn.get_transport_addresses()],
        # The socket's peer: for a direct connection through NAT, the other
        # side's public (NAT WAN) address; for a relayed one, the relay's.
        "socket_peer": f"{remote[0]}:{remote[1]}" if remote else None,
    }


def observed_addrs(node: NatHost) -> list[str]:
    """What identify told us about our address: observations from >= 1 peer.

    host.get_addrs() only adds an observed address once 4 distinct peers
    (ACTIVATION_THRESHOLD) reported it, so with one relay it never does; the
    host's ObservedAddrManager has it at min_observers=1 (DCUtR reads it the
    same way). The port is the NAT mapping of *that* connection (an
    ephemeral one), not our listen port.
    """
    manager = getattr(node.host, "_observed_addr_manager", None)
    return [str(a) for a in manager.addrs(min_observers=1)] if manager else []


async def echo_handler(stream) -> None:
    """Reply with what we received plus how the connection looks from here."""
    try:
        with trio.fail_after(10):
            data = await stream.read(4096)
            swarm_conn = _swarm_conn_of(stream)
            reply = {"echo": data.decode(errors="replace"), "conn": describe_conn(swarm_conn) if swarm_conn else None}
            await stream.write(json.dumps(reply).encode())
            await stream.close()
    except Exception as exc:  # a probe: report, never crash the host
        log.warning("echo failed: %s", exc)
        with trio.move_on_after(1):
            await stream.reset()


def _swarm_conn_of(stream) -> INetConn | None:
    """The SwarmConn a stream runs on (NetStream only knows its muxed connection)."""
    muxed = stream.muxed_conn
    for conns in muxed.swarm.connections.values():
        for conn in conns if isinstance(conns, list) else [conns]:
            if conn.muxed_conn is muxed:
                return conn
    return None


async def echo(node: NatHost, peer: ID, text: str) -> dict:
    with trio.fail_after(10):
        stream = await node.host.new_stream(peer, [ECHO])
        used = _swarm_conn_of(stream)
        await stream.write(text.encode())
        data = b""
        while len(data) < 65536:
            try:
                chunk = await stream.read(4096)
            except StreamEOF:  # NetStream raises at EOF instead of returning b""
                break
            if not chunk:
                break
            data += chunk
        await stream.close()
    answer = json.loads(data)
    return {"ok": answer["echo"] == text, "via": describe_conn(used) if used else None, "peer_saw": answer["conn"]}


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


async def wait_observed(node: NatHost, timeout: float) -> list[str]:
    with trio.move_on_after(timeout):
        while not observed_addrs(node):
            await trio.sleep(0.05)
    return observed_addrs(node)


async def run_relay(args) -> None:
    async with open_nat_host(args.seed, args.ip, args.port, is_relay=True) as node:
        emit(
            event="ready", role="relay", peer_id=str(node.host.get_id()), addrs=[str(a) for a in node.host.get_addrs()]
        )
        await trio.sleep(args.lifetime)


async def run_peer(args) -> None:
    async with open_nat_host(
        args.seed, args.ip, args.port, args.relay, is_relay=False, skip_private_predial=args.skip_private_predial
    ) as node:
        node.host.set_stream_handler(ECHO, echo_handler)
        me = str(node.host.get_id())
        base = {
            "peer_id": me,
            "reservation_ms": {k: round(v * 1000, 1) for k, v in node.reservations.items()},
            "circuit_addrs": node.relay_addrs,
            "observed_addrs": await wait_observed(node, 3),
            "get_addrs": [str(a) for a in node.host.get_addrs()],
            # NAT classification from the observed-address spread (needs
            # several observers: with one relay it stays "unknown").
            "nat_type": [t.value for t in node.host.get_nat_type()],
        }
        if not args.target:
            emit(event="ready", role="peer", **base)
            await trio.sleep(args.lifetime)
            return
        result = {"event": "result", "role": "dialer", **base}
        try:
            await probe_target(node, args, result)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        emit(**result)


async def probe_target(node: NatHost, args, result: dict) -> None:
    target = ID.from_base58(args.target)
    # a) relayed connection + echo
    started = time.monotonic()
    with trio.fail_after(15):
        conn = await dial_via_relay(node, args.relay[0], args.target)
    relayed_at = time.monotonic()
    result["relayed"] = {
        "dial_ms": round((relayed_at - started) * 1000, 1),
        "conn": describe_conn(conn),
        "is_relayed": is_relayed(conn),
    }
    result["relayed"]["echo"] = await echo(node, target, "over the relay")
    # b) DCUtR: ask for the punch now rather than waiting for the 2 s
    # auto-drive loop (which also runs, on both sides).
    direct = None
    deadline = relayed_at + args.punch_wait
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.dcutr.initiate_hole_punch, target)
        while time.monotonic() < deadline:
            direct = next((c for c in connections_to(node, target) if not is_relayed(c)), None)
            if direct is not None:
                break
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    result["direct"] = {"ok": direct is not None, "waited_ms": round((time.monotonic() - relayed_at) * 1000, 1)}
    if direct is None:
        # c) no punch: the relayed connection still carries new streams.
        result["relayed_after_failed_punch"] = await echo(node, target, "still over the relay")
        return
    result["direct"]["time_to_direct_ms"] = result["direct"].pop("waited_ms")
    result["direct"]["conn"] = describe_conn(direct)
    # Both connections are open now: which one does a new stream take?
    result["direct"]["echo_with_both_open"] = await echo(node, target, "both open")
    # Close every relayed connection to the target, then a new stream must
    # run on the direct one (DCUtR itself would close it after 60 s).
    for c in connections_to(node, target):
        if is_relayed(c):
            await c.close()
    await trio.sleep(0.2)
    result["direct"]["relayed_left"] = sum(is_relayed(c) for c in connections_to(node, target))
    result["direct"]["echo_after_relay_closed"] = await echo(node, target, "direct, relay closed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.nat_probe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("relay", "peer"):
        p = sub.add_parser(name)
        p.add_argument("--ip", required=True, help="address to listen on (this namespace's)")
        p.add_argument("--port", type=int, default=LISTEN_PORT)
        p.add_argument("--seed", default=name, help="identity seed (any string)")
        p.add_argument("--lifetime", type=float, default=120, help="serve this long, then exit")
        p.add_argument("--debug", action="store_true")
        if name == "peer":
            p.add_argument("--relay", action="append", required=True, help="relay multiaddr with /p2p/ (repeatable)")
            p.add_argument("--target", help="peer id to reach through the first relay (then punch)")
            p.add_argument("--punch-wait", type=float, default=15, help="seconds to wait for a direct connection")
            p.add_argument(
                "--skip-private-predial",
                action="store_true",
                help="DCUtR without the pre-dial to the peer's LAN addresses",
            )
    lab = sub.add_parser("lab", help="build a NAT lab and run relay + two peers in it (root)")
    lab.add_argument("--nat", choices=("cone", "symmetric"), default="cone")
    lab.add_argument("--prefix", default="gpprobe")
    lab.add_argument("--punch-wait", type=float, default=15)
    lab.add_argument("--skip-private-predial", action="store_true")
    lab.add_argument("--runs", type=int, default=1, help="repeat in the same lab (fresh processes each time)")
    args = parser.parse_args(argv)
    if args.cmd == "lab":
        from tools.natlab import nat_lab, netns_nat_available

        reason = netns_nat_available()
        if reason:
            print(reason, file=sys.stderr)
            return 2
        with nat_lab(args.prefix, {"a": args.nat, "b": args.nat}, ["r1"]) as built:
            for _ in range(max(1, min(args.runs, 50))):
                print(
                    json.dumps(
                        run_probe(
                            built,
                            Path(f"/tmp/{args.prefix}-logs"),
                            punch_wait=args.punch_wait,
                            skip_private_predial=args.skip_private_predial,
                        )
                    ),
                    flush=True,
                )
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    trio.run(run_relay if args.cmd == "relay" else run_peer, args)
    return 0


# --- orchestration from the root namespace (tests, `lab` command) ------------------------------


def _read_event(path: Path, event: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if data.get("event") == event:
                    return data
        if proc.poll() is not None:
            raise RuntimeError(
                f"{path.name}: exited {proc.returncode} before {event!r}: {_tail(path.with_suffix('.err'))}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"{path.name}: no {event!r} within {timeout:.0f} s: {_tail(path.with_suffix('.err'))}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_probe(
    lab,
    logs: Path,
    *,
    relay: str = "r1",
    listener: str = "b",
    dialer: str = "a",
    punch_wait: float = 15,
    skip_private_predial: bool = False,
    debug: bool = False,
) -> dict:
    """Start relay, listener and dialer in ``lab``'s namespaces; the dialer's result, merged.

    Every process started here is stopped (SIGKILL by pid) before returning.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    extra = ["--debug"] if debug else []
    peer_extra = ["--skip-private-predial"] if skip_private_predial else []

    def start(host: str, *args: str) -> tuple[subprocess.Popen, Path]:
        out = logs / f"{host}.out"
        with open(out, "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
            proc = subprocess.Popen(
                [*lab.hosts[host].exec_prefix(), sys.executable, "-m", "tools.nat_probe", *args, *extra],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        procs.append(proc)
        return proc, out

    try:
        began = time.monotonic()
        r = lab.hosts[relay]
        proc, out = start(relay, "relay", "--ip", r.ip, "--seed", relay)
        relay_ready = _read_event(out, "ready", proc, 30)
        relay_addr = f"/ip4/{r.ip}/tcp/{LISTEN_PORT}/p2p/{relay_ready['peer_id']}"
        b = lab.hosts[listener]
        proc, out = start(listener, "peer", "--ip", b.ip, "--seed", listener, "--relay", relay_addr, *peer_extra)
        b_ready = _read_event(out, "ready", proc, 30)
        a = lab.hosts[dialer]
        proc, out = start(
            dialer,
            "peer",
            "--ip",
            a.ip,
            "--seed",
            dialer,
            "--relay",
            relay_addr,
            "--target",
            b_ready["peer_id"],
            "--punch-wait",
            str(punch_wait),
            *peer_extra,
        )
        result = _read_event(out, "result", proc, punch_wait + 60)
        result["listener"] = b_ready
        result["nat"] = {dialer: a.nat, listener: b.nat}
        result["public_ip"] = {dialer: a.public_ip, listener: b.public_ip}
        result["skip_private_predial"] = skip_private_predial
        result["wall_s"] = round(time.monotonic() - began, 1)
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
