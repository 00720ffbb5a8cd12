"""What each simulated peer pays: CPU time and bytes in and out, by kind of message.

Every message a real peer sends or receives costs it CPU time in py-libp2p and in our
code; ``costs.json`` holds those per-message costs, measured on real hosts by
``python -m tools.calibrate_costs`` (docs/simulator.md). The world tells a
``CostMeter`` what each peer sends and receives, and the meter adds it up:

- **Gossip** (ads, ledger heads) floods the gossipsub mesh: the publisher sends one
  copy to each of its mesh links, and every other peer of its side of the network
  receives about ``d - 1`` copies (``d``: its mesh degree, gossipsub keeps it within
  [D_low, D_high]) — one it checks, the rest dropped by the seen cache — and forwards
  ``d - 1``. Counting each copy at each peer would cost O(N) per message, so the meter
  keeps, per side, the running total of messages and bytes flooded, and settles a
  peer's share (total now − total when last settled, times its degree) when it leaves
  and at every cost tick.
- **Streams** (table sync, ledger pulls, pings, requests) are charged to both ends,
  and to the relay in between when relayed, as they happen.
- **Upkeep**: every online second, a daemon's own timers and its connections' keepalives
  and gossipsub heartbeat (measured on idle real daemons), messages or not.

CPU is reported as a share of one core over the time the peer was online, bytes per
online second; "idle" is what a peer pays with nothing asked of it (ads, tables,
heads, pings), "total" adds requests and ledger pulls.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import percentile

COSTS_FILE = Path(__file__).with_name("costs.json")
ADS, TABLES, HEADS, PINGS, REQUESTS, LEDGER = "ads", "tables", "heads", "pings", "requests", "ledger"
UPKEEP = "upkeep"
"""A daemon's own timers and its connections' keepalives: paid every second, messages or not."""
KINDS = (ADS, TABLES, HEADS, PINGS, UPKEEP, REQUESTS, LEDGER)
IDLE_KINDS = (ADS, TABLES, HEADS, PINGS, UPKEEP)
"""What a peer pays when nobody asks it for anything."""
FLOODED = (ADS, HEADS)
"""Kinds that travel by gossip (``CostMeter.flood``)."""
DEGREE_HIGH = 8
"""Gossipsub's D_high (mesh/host.py): a peer with more mesh links prunes back to D."""
TOKEN_CHUNK_BYTES = len(
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-0123456789abcdef",
            "object": "chat.completion.chunk",
            "created": 1800000000,
            "model": "llama-3.1-8b",
            "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
        }
    ).encode()
    + b"\n\n"
)
"""Bytes of one streamed token: an OpenAI server-sent event chunk."""
JSON_TOKEN_BYTES = 5
"""Bytes per token of a non-streamed answer (the text itself)."""
MIN_ONLINE_SHARE = 0.1
"""Peers online less than this share of the run are left out of the per-peer figures (their rates are noise)."""


@dataclass(frozen=True, slots=True)
class Costs:
    """Per-message CPU milliseconds and byte sizes (``costs.json``)."""

    cpu_ms: dict[str, float]
    """Milliseconds of CPU per message, by name (see tools/calibrate_costs.py)."""
    bytes: dict[str, int]
    """Sizes: per-frame and per-gossip-message overheads, a ping, a heads message's parts."""

    @classmethod
    def load(cls, path: Path = COSTS_FILE) -> Costs:
        data = json.loads(path.read_text())
        return cls(cpu_ms=data["cpu_ms"], bytes=data["bytes"])

    def heads_bytes(self, authors: int, max_heads: int) -> int:
        """A heads announcement naming ``authors`` heads (at most ``max_heads``)."""
        return self.bytes["heads_base"] + round(self.bytes["heads_per_head"] * min(max(authors, 1), max_heads))


class CostMeter:
    """Per-peer CPU seconds, bytes in and out, and messages in, by kind."""

    def __init__(self, n: int, costs: Costs) -> None:
        self.costs = costs
        self.ms = costs.cpu_ms
        self.cpu_ms = np.zeros((len(KINDS), n))
        self.bytes_in = np.zeros((len(KINDS), n))
        self.bytes_out = np.zeros((len(KINDS), n))
        self.msgs_in = np.zeros((len(KINDS), n))
        self.online_s = np.zeros(n)
        self._since = np.full(n, math.nan)
        self._side = np.zeros(n, dtype=np.int64)
        # Flooded so far, per kind: [side, (messages, bytes)]; and each peer's reading of it.
        self._flooded = {k: np.zeros((2, 2)) for k in FLOODED}
        self._read = {k: np.zeros((n, 2)) for k in FLOODED}
        self._row = {k: i for i, k in enumerate(KINDS)}

    # -- presence ------------------------------------------------------------------------------

    def online(self, peer: int, now: float, side: int) -> None:
        """The peer came online: gossip flooded before now is not its."""
        self._since[peer] = now
        self._side[peer] = side
        for kind in FLOODED:
            self._read[kind][peer] = self._flooded[kind][side]

    def offline(self, peer: int, now: float, degree: int) -> None:
        """The peer leaves: settle its gossip, close its online time."""
        if math.isnan(self._since[peer]):
            return
        self.settle(np.array([peer]), np.array([degree]))
        self.online_s[peer] += now - self._since[peer]
        self._since[peer] = math.nan

    def close(self, now: float) -> None:
        """The run ends: online time up to ``now`` (gossip is settled by the caller's last tick)."""
        on = ~np.isnan(self._since)
        self.online_s[on] += now - self._since[on]
        self._since[on] = now

    def resides(self, sides: np.ndarray, peers: np.ndarray, degrees: np.ndarray) -> None:
        """The network split or healed: settle everyone online, then read their new side's totals."""
        self.settle(peers, degrees)
        self._side = sides.astype(np.int64)
        for kind in FLOODED:
            self._read[kind][peers] = self._flooded[kind][self._side[peers]]

    # -- charges -------------------------------------------------------------------------------

    def charge(self, peer: int, kind: str, ms: float, *, b_in: float = 0, b_out: float = 0, m_in: float = 0) -> None:
        row = self._row[kind]
        self.cpu_ms[row, peer] += ms
        self.bytes_in[row, peer] += b_in
        self.bytes_out[row, peer] += b_out
        self.msgs_in[row, peer] += m_in

    def flood(self, kind: str, origin: int, size: int, degree: int, sides: tuple[int, ...]) -> None:
        """``origin`` publishes a ``size``-byte gossip message that reaches the peers on ``sides``."""
        wire = size + self.costs.bytes["gossip_overhead"]
        d = min(max(degree, 1), DEGREE_HIGH)
        self.charge(origin, kind, d * self.ms["gossip_send"], b_out=d * wire)
        for side in sides:
            self._flooded[kind][side] += (1.0, wire)
        if self._side[origin] in sides:
            self._read[kind][origin] += (1.0, wire)  # its own message does not come back to it

    def settle(self, peers: np.ndarray, degrees: np.ndarray) -> None:
        """Charge ``peers`` (online, with these mesh degrees) the gossip that reached them since last time."""
        if not len(peers):
            return
        d = np.clip(degrees, 1, DEGREE_HIGH).astype(float)
        copies = np.maximum(d - 1, 1.0)  # first copy plus duplicates (see the module's docstring)
        for kind in FLOODED:
            now = self._flooded[kind][self._side[peers]]
            new = now - self._read[kind][peers]
            self._read[kind][peers] = now
            messages, wire = new[:, 0], new[:, 1]
            first = self.ms["ad_receive"] if kind == ADS else self.ms["heads_receive"]
            row = self._row[kind]
            self.cpu_ms[row, peers] += messages * (
                first + (copies - 1) * self.ms["gossip_duplicate"] + (d - 1) * self.ms["gossip_send"]
            )
            self.bytes_in[row, peers] += wire * copies
            self.bytes_out[row, peers] += wire * (d - 1)
            self.msgs_in[row, peers] += messages * copies

    def stream(self, client: int, server: int, kind: str, up: int, down: int, relay: int | None = None) -> None:
        """A request of ``up`` bytes and an answer of ``down`` bytes on a new stream."""
        ms, frame = self.ms, self.costs.bytes["frame_overhead"]
        opened = self.costs.bytes["stream_open"]
        up_b, down_b = up + frame + opened / 2, down + frame + opened / 2
        self.charge(
            client,
            kind,
            ms["stream_client"] + up_b / 1024 * ms["kib_send"] + down_b / 1024 * ms["kib_receive"],
            b_in=down_b,
            b_out=up_b,
            m_in=1,
        )
        self.charge(
            server,
            kind,
            ms["stream_server"] + up_b / 1024 * ms["kib_receive"] + down_b / 1024 * ms["kib_send"],
            b_in=up_b,
            b_out=down_b,
            m_in=1,
        )
        if relay is not None:
            self.relayed(relay, kind, frames=2, size=up_b + down_b)

    def exchanges(self, peers: np.ndarray, kind: str, each: float, up: int, down: int) -> None:
        """Each of ``peers`` asks ``each`` small stream exchanges of a random neighbour, and (on average)
        answers as many: charged at once to both roles (a periodic compare)."""
        if not len(peers):
            return
        ms, frame = self.ms, self.costs.bytes["frame_overhead"]
        opened = self.costs.bytes["stream_open"]
        b = up + down + 2 * frame + opened
        cpu = ms["stream_client"] + ms["stream_server"] + 2 * b / 1024 * (ms["kib_send"] + ms["kib_receive"]) / 2
        row = self._row[kind]
        self.cpu_ms[row, peers] += each * cpu
        self.bytes_in[row, peers] += each * b
        self.bytes_out[row, peers] += each * b
        self.msgs_in[row, peers] += each * 2

    def frames(self, sender: int, receiver: int, kind: str, frames: int, size: int, relay: int | None = None) -> None:
        """``frames`` frames totalling ``size`` bytes on an open stream."""
        ms = self.ms
        wire = size + frames * self.costs.bytes["frame_overhead"]
        self.charge(sender, kind, frames * ms["frame_send"] + wire / 1024 * ms["kib_send"], b_out=wire)
        self.charge(
            receiver, kind, frames * ms["frame_receive"] + wire / 1024 * ms["kib_receive"], b_in=wire, m_in=frames
        )
        if relay is not None:
            self.relayed(relay, kind, frames=frames, size=wire)

    def relayed(self, relay: int, kind: str, frames: int, size: float) -> None:
        """A relay passes ``frames`` frames of ``size`` bytes on: it reads and writes each."""
        ms = self.ms
        cpu = frames * (ms["frame_receive"] + ms["frame_send"]) + size / 1024 * (ms["kib_receive"] + ms["kib_send"])
        self.charge(relay, kind, cpu, b_in=size, b_out=size, m_in=frames)

    def upkeep(self, peers: np.ndarray, seconds: float, connections: float) -> None:
        """``seconds`` of each of ``peers``' upkeep with ``connections`` connections open (the bytes of
        keepalives count half in, half out)."""
        if not len(peers):
            return
        row = self._row[UPKEEP]
        self.cpu_ms[row, peers] += seconds * (self.ms["upkeep_per_s"] + connections * self.ms["connection_per_s"])
        moved = seconds * connections * self.costs.bytes["connection_per_s"]
        self.bytes_in[row, peers] += moved / 2
        self.bytes_out[row, peers] += moved / 2

    def pings(self, peers: np.ndarray, degrees: np.ndarray, seconds: float, quiet: float) -> None:
        """``seconds`` of liveness pings on each of ``peers``' idle connections (``degrees`` of them): one
        exchange per ``quiet`` seconds per connection, sent by either end, so each end pays half of
        one ping sent and answered (mesh/liveness.py)."""
        if not len(peers):
            return
        row = self._row[PINGS]
        exchanges = degrees * seconds / quiet
        self.cpu_ms[row, peers] += exchanges * (self.ms["ping_client"] + self.ms["ping_server"]) / 2
        moved = exchanges * self.costs.bytes["ping"]  # a ping one way, its answer the other
        self.bytes_in[row, peers] += moved
        self.bytes_out[row, peers] += moved
        self.msgs_in[row, peers] += exchanges

    # -- figures -------------------------------------------------------------------------------

    def summary(self, duration_s: float, policy: str) -> dict:
        """Per-peer figures over the peers online at least MIN_ONLINE_SHARE of the run: mean and p99."""
        counted = np.flatnonzero(self.online_s >= MIN_ONLINE_SHARE * duration_s)
        secs = self.online_s[counted]
        idle = [self._row[k] for k in IDLE_KINDS]

        def stats(values: np.ndarray) -> dict:
            listed = values.tolist()
            return {
                "mean": _r(float(np.mean(values))) if listed else None,
                "p99": _r(percentile(listed, 99)),
            }

        def block(rows: list[int]) -> dict:
            cpu = self.cpu_ms[rows][:, counted].sum(axis=0) / 1000 / secs * 100
            b_in = self.bytes_in[rows][:, counted].sum(axis=0) / secs
            b_out = self.bytes_out[rows][:, counted].sum(axis=0) / secs
            return {
                "cpu_pct": stats(cpu),
                "bytes_in_per_s": stats(b_in),
                "bytes_out_per_s": stats(b_out),
                "bytes_per_s": stats(b_in + b_out),
            }

        by_kind = {}
        for kind in KINDS:
            row = self._row[kind]
            by_kind[kind] = {
                "cpu_pct_mean": _r(float(np.mean(self.cpu_ms[row, counted] / 1000 / secs * 100)))
                if len(counted)
                else None,
                "bytes_per_s_mean": _r(
                    float(np.mean((self.bytes_in[row, counted] + self.bytes_out[row, counted]) / secs))
                )
                if len(counted)
                else None,
                "messages_in_per_s_mean": _r(float(np.mean(self.msgs_in[row, counted] / secs)))
                if len(counted)
                else None,
            }
        return {
            "gossip": policy,
            "peers_counted": int(len(counted)),
            "idle": block(idle),
            "total": block(list(range(len(KINDS)))),
            "by_kind": by_kind,
        }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)
