"""Twenty real peers split in two halves by a firewall, both halves serve, the split heals, all converge.

Two network namespaces joined by a veth pair (``tools.netns.linked_hosts``),
ten ``garage-peer`` processes in each, one of them serving a StandInBackend
(an instrument, not a model) in its half. The partition is iptables DROP
inside one namespace; healing removes it. Needs root, iproute2 and iptables
(CI runs as root; bootstrap/dev-env.sh installs them).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.netns import linked_hosts, sh
from tools.testkit import run_where, standin_command, wait_until

from .helpers import ledger_of

PER_HALF = 10
BACKEND_PORT = 18710


def inside(peer: PeerProcess, *module_args: str, timeout: float = 120) -> dict | list:
    result = run_where(peer, *module_args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def providers_seen(peer: PeerProcess) -> list[str]:
    models = inside(peer, "garage_p2p.cli.garage", "models", "--json", "--api", peer.api_url)
    return next((m["providers"] for m in models if m["model"] == "tiny"), [])


def test_twenty_peers_partition_serve_heal_converge(tmp_path, monkeypatch):
    with linked_hosts("glp", "10.79.0") as (left, right):
        backends, peers = [], {"L": [], "R": []}
        try:
            for host in (left, right):
                backends.append(
                    subprocess.Popen(
                        standin_command(BACKEND_PORT, token_delay=0.005, prefix=host.exec_prefix()),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            hub = None
            for half, host in (("L", left), ("R", right)):
                for i in range(PER_HALF):
                    serving = {"tiny": f"http://127.0.0.1:{BACKEND_PORT}/v1"} if i == 0 else None
                    args = peer_args(listen=f"/ip4/{host.ip}/tcp/0", bootstrap=[hub] if hub else [], backends=serving)
                    peer = PeerProcess(tmp_path / f"{half}{i}", args, prefix=host.exec_prefix()).start()
                    peers[half].append(peer)
                    if hub is None:
                        hub = next(a for a in peer.wait_ready()["addrs"] if host.ip in a)
            everyone = peers["L"] + peers["R"]
            for p in everyone:
                p.wait_ready()
            both = {peers["L"][0].peer_id, peers["R"][0].peer_id}
            for p in (peers["L"][1], peers["R"][1]):
                wait_until(lambda p=p: set(providers_seen(p)) == both, 60, f"{p.home.name} seeing both providers")

            # Split: nothing passes between the halves. REJECT (a TCP reset), not DROP: with
            # DROP, py-libp2p keeps the dead connections open (it has no keepalive) and
            # gossip writes to them stall; that liveness gap is a finding of its own.
            for rule in (["INPUT", "-s", right.ip], ["OUTPUT", "-d", right.ip]):
                sh(
                    *left.exec_prefix(),
                    "iptables",
                    "-w",
                    "-A",
                    rule[0],
                    rule[1],
                    rule[2],
                    "-p",
                    "tcp",
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset",
                )
                sh(*left.exec_prefix(), "iptables", "-w", "-A", rule[0], rule[1], rule[2], "-j", "DROP")
            for half in ("L", "R"):
                # Every consumer asked below must know its own half's provider: one whose
                # connections all crossed the cut finds its half again through discovery. It need
                # not have forgotten the other half's: ads live for minutes, and only a peer that
                # was connected to a provider learns from the connection that it is gone (a
                # neighbour's word is no proof). A request routed there fails to dial and moves on.
                for p in peers[half][1:4]:
                    seen: list[list[str]] = []
                    try:
                        wait_until(
                            lambda p=p, half=half, seen=seen: (
                                seen.append(providers_seen(p)) or peers[half][0].peer_id in seen[-1]
                            ),
                            90,
                            f"{half} knowing its own half's provider",
                        )
                    except AssertionError as exc:
                        names = {q.peer_id: q.home.name for q in everyone}
                        raise AssertionError(
                            f"{exc}: {p.home.name} sees {[names.get(x, x) for x in seen[-1]]}"
                        ) from None

            # Both halves serve requests while split.
            completed: dict[str, list[str]] = {}
            for half in ("L", "R"):
                ids = []
                for consumer in peers[half][1:4]:
                    out = inside(
                        consumer, "tools.chat_burst", "--api", consumer.api_url, "--requests", "4", "--concurrency", "2"
                    )
                    assert not out["failed"], out
                    ids += [(consumer.peer_id, rid) for rid in out["completed"]]
                completed[half] = ids
            provider = {half: peers[half][0].peer_id for half in ("L", "R")}

            def holds(peer: PeerProcess, halves) -> bool:
                state = ledger_of(peer)
                return all(state.has_receipt(provider[h], c, rid) for h in halves for c, rid in completed[h])

            def lagging(group, halves) -> str:
                """Who lacks receipts, with its connections (a peer cut off from its half is a finding)."""
                out = []
                for p in group:
                    if not holds(p, halves):
                        state = inside(p, "garage_p2p.cli.garage", "status", "--json", "--api", p.api_url)
                        out.append(f"{p.home.name}: {state['connections']} connections, {state['known_peers']} known")
                return "; ".join(out)

            # Each half converges on its own receipts, and not on the other's. Anti-entropy
            # (every 7.5-22.5 s with one random neighbour) bounds this; 90 s is several rounds.
            for half in ("L", "R"):
                try:
                    wait_until(
                        lambda half=half: all(holds(p, [half]) for p in peers[half]),
                        90,
                        f"{half} converging while split",
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: {lagging(peers[half], [half])}") from None
            assert not any(holds(p, ["R"]) for p in peers["L"])

            # Heal, and every peer converges on all 24 receipts (and on one state).
            sh(*left.exec_prefix(), "iptables", "-w", "-F")
            healed = time.monotonic()
            try:
                wait_until(
                    lambda: all(holds(p, ["L", "R"]) for p in everyone), 120, "all twenty converging after the heal"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {lagging(everyone, ['L', 'R'])}") from None
            converge = time.monotonic() - healed
            prints = {ledger_of(p).fingerprint() for p in everyone}
            assert len(prints) == 1
            print(
                f"20 peers: {len(completed['L']) + len(completed['R'])} receipts, "
                f"converged {converge:.1f} s after the heal"
            )
            verify = inside(
                peers["R"][5], "garage_p2p.cli.garage", "ledger", "verify", "--json", "--home", str(peers["R"][5].home)
            )
            assert verify["ok"] and verify["entries"] == 24
        finally:
            everyone = peers["L"] + peers["R"]
            for p in everyone:  # signal all first: they drain in parallel
                if p.process is not None and p.process.poll() is None:
                    p.process.send_signal(signal.SIGTERM)
            for p in everyone:
                p.stop(timeout=20)
            for b in backends:
                b.terminate()
                b.wait(10)
