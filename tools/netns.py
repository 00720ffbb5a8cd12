"""Network namespaces for tests: real hosts on one machine (needs root and iproute2).

Only namespaces made here are used as network targets; everything is removed
on exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


class NetnsError(RuntimeError):
    """A namespace command failed; the message has its output."""


def sh(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def netns_available() -> str | None:
    """None when namespaces can be made here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        sh("ip", "netns", "list")
    except (OSError, NetnsError) as exc:
        return f"iproute2 is not usable: {exc}"
    return None


@dataclass(frozen=True)
class Host:
    """A namespace with one address on the test link."""

    netns: str
    """The namespace's name (for ``ip netns exec``)."""
    ip: str
    """Its address on the link."""

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@contextlib.contextmanager
def linked_hosts(prefix: str, subnet: str = "10.77.0") -> Iterator[tuple[Host, Host]]:
    """Two namespaces joined by a veth pair: a two-machine LAN (multicast works)."""
    a, b = Host(f"{prefix}-a", f"{subnet}.1"), Host(f"{prefix}-b", f"{subnet}.2")
    va, vb = f"{prefix}-va"[:15], f"{prefix}-vb"[:15]
    try:
        for host in (a, b):
            sh("ip", "netns", "add", host.netns)
            sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        for host, dev in ((a, va), (b, vb)):
            sh("ip", "link", "set", dev, "netns", host.netns)
            sh("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", dev)
            sh("ip", "-n", host.netns, "link", "set", dev, "up")
        yield a, b
    finally:
        for host in (a, b):
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)


@contextlib.contextmanager
def private_loopback(name: str) -> Iterator[Host]:
    """A namespace with only its own loopback, multicast on: mDNS among processes run in it reaches
    each other and nothing outside (the host's LAN never sees it)."""
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up", "multicast", "on")
        sh("ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", "lo")
        yield Host(name, "127.0.0.1")
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
