"""Attacks by one hostile peer on real ``garage-peer`` daemons (docs/THREAT_MODEL.md).

Each attack lives in a module of its own here and exposes one coroutine::

    async def attack(attacker: Peer, victim: Target, **params) -> dict[str, int | float | str]

``attacker`` is a full in-process peer (``garage_p2p.daemon.Peer``) whose libp2p host the attack
drives by hand (raw streams, gossip, forged ads, entries or receipts); ``victim`` is the daemon
under attack, in this process or another. The coroutine performs the attack and returns what it
sent (counts, bytes), nothing it measured on the victim: the hostile-peer tests assert the
victim's behaviour (a reset stream, a penalty, a bounded table, an honest chat still answered) and
``benchmarks/attacks.py`` measures victim memory, CPU, honest chats and bans around the same call,
against the fixed tree and a baseline revision side by side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A daemon under attack, as an outsider knows it."""

    peer_id: str
    """Its libp2p peer id (base58)."""
    addrs: tuple[str, ...]
    """Multiaddrs it listens on, each ending in /p2p/<peer_id>."""
    api_url: str
    """Its OpenAI endpoint, e.g. http://127.0.0.1:8000/v1 (for honest chats and /metrics)."""
    pid: int | None = None
    """Its process id when it runs in a process of its own (memory and CPU are read from /proc)."""
