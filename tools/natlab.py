"""A NAT test bed in network namespaces: public relays, and peers behind real NAT routers.

Topology (every name below is prefixed, so several labs can coexist)::

    PREFIX-inet   the "internet": bridge br0, gateway 198.51.100.1 (forwarding off:
                  traffic to private addresses is silently dropped, as on the real internet)
      ├─ PREFIX-r1      public host 198.51.100.10   (relays: no NAT)
      ├─ PREFIX-r2      public host 198.51.100.11
      ├─ PREFIX-nat-a   home router: wan 198.51.100.100 ── lan 192.168.10.1/24
      │    └─ PREFIX-a  peer 192.168.10.2, default route via its router
      └─ PREFIX-nat-b   home router: wan 198.51.100.101 ── lan 192.168.11.1/24
           └─ PREFIX-b  peer 192.168.11.2

Home routers NAT by type:

* ``cone``: ``MASQUERADE`` (Linux keeps the source port when it can: a
  port-preserving, endpoint-independent mapping);
* ``symmetric``: ``MASQUERADE --random-fully`` (a new random port per flow);

and both run a home-router firewall: from the WAN only ESTABLISHED,RELATED
passes (FORWARD and INPUT), NEW is *dropped* (never rejected: a NAT that
answers unsolicited SYNs with RST defeats TCP hole punching).

All addresses are TEST-NET-2 (198.51.100.0/24, documentation range) or
private, and live only inside the namespaces made here. Veth pairs are
created directly inside the namespaces (none in the root namespace), so
deleting the namespaces removes everything. Needs root, iproute2 and
iptables (Debian: ``apt-get install iptables``). There is no conntrack tool:
rebuild the lab to switch NAT type.

Use from pytest::

    with nat_lab("gpnat", {"a": "cone", "b": "cone"}) as lab:
        subprocess.run([*lab.hosts["a"].exec_prefix(), sys.executable, "-m", "some.module", lab.hosts["r1"].ip])

or from a shell: ``python -m tools.natlab up --home a=cone --home b=symmetric``
(prints the lab as JSON) and ``python -m tools.natlab down``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from tools.netns import NetnsError, netns_available, sh

NAT_TYPES = ("cone", "symmetric")
PUBLIC_NET = "198.51.100"
"""TEST-NET-2: documentation addresses, used only inside the lab."""
GATEWAY_IP = f"{PUBLIC_NET}.1"
BRIDGE = "br0"
DEFAULT_PREFIX = "gpnat"
MAX_PUBLIC = 80
MAX_HOMES = 100


@dataclass(frozen=True)
class LabHost:
    """A machine in the lab: a namespace with one address."""

    name: str
    netns: str
    ip: str
    """Its own address (private for peers behind a NAT)."""
    public_ip: str
    """The address the internet sees: its NAT's WAN address, or ``ip`` for a public host."""
    nat: str | None = None
    """``cone``/``symmetric`` for a peer behind a home router; None for a public host."""
    port: str = ""
    """Its uplink's interface name in the internet namespace (for cutting it off)."""

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@dataclass(frozen=True)
class HomeRouter:
    """The NAT router in front of one peer."""

    netns: str
    wan_ip: str
    lan_ip: str
    nat: str
    port: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@dataclass
class Lab:
    prefix: str
    internet: str
    """The internet namespace (holds the bridge)."""
    hosts: dict[str, LabHost] = field(default_factory=dict)
    routers: dict[str, HomeRouter] = field(default_factory=dict)
    """Peer name → its home router."""

    def public_ip(self, name: str) -> str:
        """The address the internet sees for ``name`` (its router's WAN address if NATed)."""
        return self.hosts[name].public_ip

    def namespaces(self) -> list[str]:
        return [self.internet, *(r.netns for r in self.routers.values()), *(h.netns for h in self.hosts.values())]

    def cut(self, name: str) -> None:
        """Take ``name`` (a public host, or a peer with its router) off the internet: link down."""
        sh("ip", "-n", self.internet, "link", "set", self._port(name), "down")

    def restore(self, name: str) -> None:
        sh("ip", "-n", self.internet, "link", "set", self._port(name), "up")

    def kill_host(self, name: str) -> list[int]:
        """SIGKILL every process in ``name``'s namespace and cut it off; returns the pids."""
        pids = kill_netns_processes(self.hosts[name].netns)
        self.cut(name)
        return pids

    def describe(self) -> dict:
        return {
            "prefix": self.prefix,
            "internet": self.internet,
            "hosts": {k: asdict(v) for k, v in self.hosts.items()},
            "routers": {k: asdict(v) for k, v in self.routers.items()},
        }

    def _port(self, name: str) -> str:
        if name in self.routers:
            return self.routers[name].port
        return self.hosts[name].port


def netns_nat_available() -> str | None:
    """None when a NAT lab can be built here (root, iproute2, iptables with NAT and conntrack)."""
    reason = netns_available()
    if reason:
        return reason
    if shutil.which("iptables") is None:
        return "iptables is missing (Debian: apt-get install iptables)"
    probe = f"gpnatchk{os.getpid()}"
    try:
        sh("ip", "netns", "add", probe)
        sh(
            "ip",
            "netns",
            "exec",
            probe,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "lo",
            "-j",
            "MASQUERADE",
            "--random-fully",
        )
        sh(
            "ip",
            "netns",
            "exec",
            probe,
            "iptables",
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        )
    except (OSError, NetnsError) as exc:
        return f"iptables NAT/conntrack is not usable in a namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


def _ns(netns: str, *args: str) -> str:
    return sh("ip", "netns", "exec", netns, *args)


def _check_name(name: str) -> None:
    if not name or len(name) > 10 or not name.replace("_", "").isalnum() or name == "inet":
        raise ValueError(f"lab host name {name!r}: use 1-10 letters/digits (not 'inet')")


def _veth_to(lab_internet: str, port: str, netns: str, dev: str) -> None:
    """A veth from the internet bridge (end ``port``) into ``netns`` (end ``dev``)."""
    sh("ip", "-n", lab_internet, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", netns)
    sh("ip", "-n", lab_internet, "link", "set", port, "master", BRIDGE, "up")


def _new_netns(netns: str) -> None:
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")


def _home_router_rules(netns: str, nat: str) -> None:
    ipt = ["ip", "netns", "exec", netns, "iptables", "-w"]
    masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
    if nat == "symmetric":
        masquerade.append("--random-fully")
    est = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]
    for rule in (
        masquerade,
        ["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
        ["-A", "FORWARD", "-i", "wan", "-o", "lan", *est, "-j", "ACCEPT"],
        ["-A", "FORWARD", "-i", "wan", "-j", "DROP"],
        ["-A", "INPUT", "-i", "wan", *est, "-j", "ACCEPT"],
        # Dropping (not rejecting) unsolicited packets to the router itself
        # matters: otherwise its kernel answers a punching SYN with RST.
        ["-A", "INPUT", "-i", "wan", "-j", "DROP"],
    ):
        sh(*ipt, *rule)


def build_lab(prefix: str, homes: Mapping[str, str], public: Sequence[str] = ("r1", "r2")) -> Lab:
    """Make the namespaces (no cleanup on failure: see ``nat_lab`` / ``destroy_lab``)."""
    if not prefix or len(prefix) > 12 or not prefix.replace("-", "").isalnum():
        raise ValueError(f"lab prefix {prefix!r}: 1-12 letters/digits")
    if len(public) > MAX_PUBLIC or len(homes) > MAX_HOMES:
        raise ValueError("too many lab hosts")
    for name in [*public, *homes]:
        _check_name(name)
    if len(set(public) | set(homes)) != len(public) + len(homes):
        raise ValueError("lab host names must be unique")
    for name, nat in homes.items():
        if nat not in NAT_TYPES:
            raise ValueError(f"NAT type for {name!r} must be one of {NAT_TYPES}, not {nat!r}")

    lab = Lab(prefix=prefix, internet=f"{prefix}-inet")
    inet = lab.internet
    _new_netns(inet)
    sh("ip", "-n", inet, "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "-n", inet, "addr", "add", f"{GATEWAY_IP}/24", "dev", BRIDGE)
    sh("ip", "-n", inet, "link", "set", BRIDGE, "up")
    # The bridge lives in our namespace, where no iptables rules exist; still,
    # keep bridged frames out of netfilter (br_netfilter is per namespace).
    for knob in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
        if os.path.exists(f"/proc/sys/net/bridge/{knob}"):
            subprocess.run(
                ["ip", "netns", "exec", inet, "sysctl", "-qw", f"net.bridge.{knob}=0"], capture_output=True, timeout=30
            )
    # The gateway does not forward: a packet to a private address is dropped
    # silently (no ICMP), as on the internet, so such dials time out.
    _ns(inet, "sysctl", "-qw", "net.ipv4.ip_forward=0")

    for i, name in enumerate(public):
        netns, ip, port = f"{prefix}-{name}", f"{PUBLIC_NET}.{10 + i}", f"p-{name}"
        _new_netns(netns)
        _veth_to(inet, port, netns, "eth0")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        sh("ip", "-n", netns, "route", "add", "default", "via", GATEWAY_IP)
        lab.hosts[name] = LabHost(name=name, netns=netns, ip=ip, public_ip=ip, port=port)

    for i, (name, nat) in enumerate(homes.items()):
        rns, hns = f"{prefix}-nat-{name}", f"{prefix}-{name}"
        wan_ip, lan_ip, ip = f"{PUBLIC_NET}.{100 + i}", f"192.168.{10 + i}.1", f"192.168.{10 + i}.2"
        port = f"w-{name}"
        _new_netns(rns)
        _new_netns(hns)
        _veth_to(inet, port, rns, "wan")
        sh("ip", "-n", rns, "addr", "add", f"{wan_ip}/24", "dev", "wan")
        sh("ip", "-n", rns, "link", "set", "wan", "up")
        sh("ip", "-n", rns, "route", "add", "default", "via", GATEWAY_IP)
        sh("ip", "-n", rns, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", hns)
        sh("ip", "-n", rns, "addr", "add", f"{lan_ip}/24", "dev", "lan")
        sh("ip", "-n", rns, "link", "set", "lan", "up")
        sh("ip", "-n", hns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", hns, "link", "set", "eth0", "up")
        sh("ip", "-n", hns, "route", "add", "default", "via", lan_ip)
        _ns(rns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _home_router_rules(rns, nat)
        lab.routers[name] = HomeRouter(netns=rns, wan_ip=wan_ip, lan_ip=lan_ip, nat=nat, port=port)
        lab.hosts[name] = LabHost(name=name, netns=hns, ip=ip, public_ip=wan_ip, nat=nat, port=port)
    return lab


def kill_netns_processes(netns: str) -> list[int]:
    """SIGKILL the processes inside one of our namespaces; returns their pids."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
    pids = [int(p) for p in result.stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def lab_namespaces(prefix: str) -> list[str]:
    """Namespaces that belong to a lab with this prefix (also ones left by a crash)."""
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{prefix}-")]


def destroy_lab(prefix: str) -> list[str]:
    """Remove every namespace of the lab ``prefix`` (killing what still runs in them)."""
    gone = []
    for netns in lab_namespaces(prefix):
        kill_netns_processes(netns)
    for netns in lab_namespaces(prefix):
        # A killed process can take a moment to leave; the namespace (and its
        # veths) disappears when its last process is gone.
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        gone.append(netns)
    # Veths are made inside the namespaces; sweep the root namespace anyway in
    # case a half-made pair was left there.
    result = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30)
    for line in result.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            dev = parts[1].strip().split("@")[0]
            if dev.startswith(f"{prefix}-"):
                subprocess.run(["ip", "link", "del", dev], capture_output=True, timeout=30)
    return gone


@contextlib.contextmanager
def nat_lab(prefix: str, homes: Mapping[str, str], public: Sequence[str] = ("r1", "r2")) -> Iterator[Lab]:
    """Build the lab, yield it, and remove it on exit (also after a failure)."""
    destroy_lab(prefix)  # leftovers of a crashed run with the same prefix
    try:
        yield build_lab(prefix, homes, public)
    finally:
        destroy_lab(prefix)


def _parse_homes(items: Sequence[str]) -> dict[str, str]:
    homes = {}
    for item in items:
        name, _, nat = item.partition("=")
        homes[name] = nat or "cone"
    return homes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.natlab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab (replacing one with the same prefix); prints it as JSON")
    up.add_argument("--prefix", default=DEFAULT_PREFIX)
    up.add_argument(
        "--home",
        action="append",
        default=[],
        metavar="PEER=cone|symmetric",
        help="a peer behind a NAT (repeatable; default a=cone b=cone)",
    )
    up.add_argument("--public", default="r1,r2", help="comma-separated public hosts (default r1,r2)")
    down = sub.add_parser("down", help="remove a lab's namespaces")
    down.add_argument("--prefix", default=DEFAULT_PREFIX)
    ls = sub.add_parser("list", help="list a lab's namespaces")
    ls.add_argument("--prefix", default=DEFAULT_PREFIX)
    args = parser.parse_args(argv)

    if args.cmd == "list":
        print("\n".join(lab_namespaces(args.prefix)))
        return 0
    if args.cmd == "down":
        for netns in destroy_lab(args.prefix):
            print(f"deleted {netns}")
        return 0
    reason = netns_nat_available()
    if reason:
        print(f"natlab: {reason}", file=sys.stderr)
        return 2
    homes = _parse_homes(args.home or ["a=cone", "b=cone"])
    public = [p for p in args.public.split(",") if p]
    destroy_lab(args.prefix)
    try:
        lab = build_lab(args.prefix, homes, public)
    except (NetnsError, ValueError) as exc:
        destroy_lab(args.prefix)
        print(f"natlab: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(lab.describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
