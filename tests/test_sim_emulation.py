"""The emulation mode: a small twin with real peers in this process (about 25 s)."""

from __future__ import annotations

import time

from garage_p2p.sim.metrics import summarize
from garage_p2p.sim.run import compare, simulate
from garage_p2p.sim.scenario import (
    EmulationSection,
    ModelSpec,
    PeersSection,
    Scenario,
    SimSection,
    twin_scenario,
)
from tools.emulate import run_emulation


def small_scenario() -> Scenario:
    # 6 peers: 3 providers (one joins at 10 s) and 3 consumers; 3 × 1800/h over
    # 20 s is ~30 requests.
    return Scenario(
        sim=SimSection(name="emulation test", duration_s=20),
        peers=PeersSection(count=6),
        models={"tiny": ModelSpec()},
        emulation=EmulationSection(peers=6, duration_s=20, joins=1, requests_per_consumer_hour=1800),
    )


def test_a_small_emulation_agrees_with_its_simulated_twin():
    lines: list[str] = []
    started = time.monotonic()
    obs = run_emulation(small_scenario(), seed=3, log=lines.append)
    wall = time.monotonic() - started
    print("\n".join(lines))
    report = summarize(obs)
    requests = report["requests"]
    assert 15 <= requests["total"] <= 60, requests
    assert requests["lost"] == 0
    assert all(r.ended is not None and r.ended >= r.submitted for r in obs.requests)
    assert requests["success_rate"] >= 0.9, requests["errors"]
    assert requests["relayed"] == 0  # loopback: every connection is direct

    assert len(obs.joins) == 1
    known = [j.known_99 for j in obs.joins if j.known_99 is not None]
    assert known and min(known) < 15, obs.joins

    assert obs.ledger_lag and obs.ledger_entries > 0 and obs.ledger_replicas == 6
    assert sum(p.tokens for p in obs.providers) == sum(r.tokens for r in obs.requests if r.ok) > 0
    assert {p.gpu for p in obs.providers} == {"stand-in"} and len(obs.providers) == 3
    assert obs.online[0][1:] == (2, 3) and obs.online[-1][1:] == (3, 3)
    assert obs.counters["real_peers"] == 6
    assert wall < 90

    # The simulator, run on the same twin, lands within the stated bounds (docs/simulator.md).
    simulated, _ = simulate(twin_scenario(small_scenario()), 3)
    bounds = compare(simulated, report)
    assert all(b["ok"] for b in bounds.values()), bounds
