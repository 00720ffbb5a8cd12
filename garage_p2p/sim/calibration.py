"""The models of what py-libp2p does, and the measurements they rest on.

Each constant names the measurement behind it (the command, the figure);
``docs/simulator.md`` has the table, and ``python -m tools.emulate`` puts
the simulator beside real peers so the constants can be checked again.
"""

from __future__ import annotations

GOSSIP_HOP_MS = 6.0
"""CPU time a gossip message spends in one py-libp2p peer before it goes on
(validation, signature check, forwarding). A 5-node line reached its end in
28 ms on loopback (docs/platform.md): ~7 ms per hop including loopback latency."""

GOSSIP_DEGREE = 6
"""Gossipsub mesh degree D: each peer keeps this many mesh links per topic."""

GOSSIP_DEGREE_LOW = 4
"""Below this many mesh links a peer grafts new ones at its next heartbeat."""

HEARTBEAT_S = 1.0
"""Gossipsub heartbeat (our setting): mesh repair happens at this pace."""

JOIN_FIRST_AD_S = 0.15
"""From a peer's start to its first ad leaving through its first connection. The
daemon publishes at once when its ad service starts (mesh/caps.py), by which
time the bootstrap connection is up; the 6-peer emulation
(tests/test_sim_emulation.py, seeds 1–3) saw a new provider known by 99 % of
the peers 0.16–0.23 s after its start. (mesh/discovery.py's 0.5 s
GOSSIP_SETTLE only delays a second announcement.)"""

LEDGER_PULL_S = 0.3
"""A replica's pull after a heads announcement: a new stream, a request, a
page, verification in a worker thread. The 6-peer emulation measured a median
ledger lag of 0.10–0.50 s (seeds 1–3), where the network alone accounts for a
few milliseconds."""

HANDSHAKE_MS = 20.0
"""CPU time of a TCP + Noise + yamux connection set-up: dials took 17–27 ms on
loopback once the happy-eyeballs delay was patched (docs/platform.md)."""

HANDSHAKE_RTTS = 2.0
"""Round trips of a new connection before the first stream: TCP, Noise XX (1.5)."""

RELAY_DIAL_MS = 35.0
"""Extra time of a relayed dial over the two legs' RTTs: 28–41 ms in the NAT
lab's raw probe (benchmarks/nat.py, issue 4)."""

PUNCH_S = (0.58, 0.86)
"""DCUtR made a cone-NAT connection direct 0.58–0.86 s after the first relayed
request (benchmarks/nat.py, 3 of 3 trials)."""

RELAY_RECOVERY_S = 7.5
"""After its relay died, a NAT-ed peer was served through its second relay
7.5 s later (tests/integration/test_nat_traversal.py, issue 4)."""

RESERVE_RETRY_S = 1.0
"""A peer behind NAT with no reservation looks for a relay again after this (mesh/nat.py
``NatService.serve``: 1 s while it has none)."""

RESERVE_INTERVAL_S = 5.0
"""... and after this while it holds fewer than RELAY_RESERVATIONS (mesh/nat.py RESERVE_INTERVAL)."""

LIVENESS_DETECT_S = 9.0
"""From a peer vanishing to the far end of a watched connection closing it and withdrawing the
peer's routes: the last frame, QUIET (5 s) of silence, a ping, PONG_TIMEOUT (4 s) without an answer
(core/liveness.py; the worst case of a connection that was busy, tests/test_liveness_inprocess.py
and benchmarks/liveness.py measure ≤ 10 s)."""

RELAY_CONNECTION_LIMIT_S = 120.0
"""Our relays cut a relayed connection after 2 minutes (bootstrap/relay-node.toml)."""

RELAY_RESERVATIONS = 2
"""Relays a NAT-ed peer reserves a slot on."""

MESH_OVERHEAD_MS = 11.85
"""What the mesh adds to a request over calling the backend directly, p50
(benchmarks/overhead.py, issue 7 closing note)."""

DIAL_TIMEOUT_S = 5.0
"""A dial to a peer that vanished without a word fails after this (gateway/dispatch.py)."""

DHT_LOOKUP_S = 0.9
"""Median find_providers at 40 nodes (docs/platform.md)."""

RECONNECT_S = 30.0
"""After a partition heals, a cut connection comes back within the discovery
refresh interval (mesh/discovery.py REFRESH_INTERVAL); the 20-process
partition test converged 24.5 s and 35.7 s after the heal."""

AD_INTERVAL_S = 5.0
"""Legacy gossip (``[gossip] policy = "legacy"``): ads went out every 5 s, and at most once a second on a
change. The daemon now follows ``core.ad_schedule``, which the simulator drives itself."""

AD_TTL_S = 20.0
"""Legacy gossip: an ad was valid for 20 s."""

AD_MIN_GAP_S = 1.0
"""Legacy gossip: at most one early ad per second however many changes."""

TABLE_SYNC_S = 30.0
"""Each peer asks one random neighbour for its table every 30 s (mesh/discovery.py REFRESH_INTERVAL)."""


IDLE_CONNECTIONS = 15
"""Connections an idle daemon holds: the auto-connector's target, (low + high watermark) / 2
(mesh/host.py). Each costs its keepalives and gossipsub heartbeat (``connection_per_s`` in costs.json)."""

HEADS_MIN_GAP_S = 1.0
"""Ledger heads go out within a second of a change (ledger/sync.py MIN_GAP)."""

ANTI_ENTROPY_S = 15.0
"""Each peer compares heads with a random neighbour every 15 s × U(0.5, 1.5) (ledger/sync.py); while they
agree the compare is a digest (the cost model prices it as one small exchange)."""

QUEUE_WAIT_S = 2.0
"""Seconds a request waits in a full provider's line before its 429 (provider/service.py QUEUE_WAIT)."""

STREAM_TICK_S = 0.4
"""How often the simulated consumer reads a running stream. The real gaps are ~20-50 ms (one
coalesced frame per token or few); reading every 0.4 s gives the stall deadline its floor, as a
live stream does (core/deadlines.py: STALL_FLOOR = STALL_FACTOR × 0.4 s), at a tenth of the events."""
