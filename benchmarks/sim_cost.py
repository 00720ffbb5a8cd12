"""What an idle peer costs in the simulator, legacy gossip against the new, side by side (issue 17).

For each mesh size (1,000 and 10,000 peers: sweden-10k's cities, NAT shares and GPUs; everyone
online, nobody asking) and each gossip policy, one simulated run prints per peer:

- idle CPU, % of one core (mean, p99) and bytes per second in + out (mean, p99), from the cost
  model (garage_p2p/sim/costs.json, measured by ``python -m tools.calibrate_costs``);
- what those bytes are made of, per kind of message (``sim/cost.py``): ads (gossip copies in and out),
  table syncs (anti-entropy by cursor), ledger heads (idle: a digest compared with a neighbour every
  ~15 s) and liveness pings (every idle connection, one yamux PING exchange per 5 s); and the CPU of
  ads + tables;
- how long until a provider that joins is known by 99 % of the peers (p99 over the joins; every
  consumer asks for every model, so the peers that use its model are all of them).

Then sweden-10k itself (churn, requests, a 20,000-line batch job at 1,200 s) under the new policy:
wall time for its whole hour and drain (target: under 10 minutes), printed per simulated minute as it
goes. A shorter ``--sweden-s`` is extrapolated linearly, which flatters it: the replicas' ledgers
pass the unknown-entries cap at ~730 s and the job runs from 1,200 s, and both cost more after.
Legacy gossip at 10,000 peers costs the simulator ~2,000 ads a second, so its runs are shorter
(``--legacy-s``): its rates settle within one 5-second round.

    .venv/bin/python benchmarks/sim_cost.py                      # ~20 min on a quiet 2-core machine
    .venv/bin/python benchmarks/sim_cost.py --sizes              # sweden-10k's hour only
    .venv/bin/python benchmarks/sim_cost.py --sweden-s 300       # a quick look (extrapolated)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.sim.cost import IDLE_KINDS  # noqa: E402
from garage_p2p.sim.metrics import summarize  # noqa: E402
from garage_p2p.sim.scenario import ChurnSection, Event, Scenario, load_scenario  # noqa: E402
from garage_p2p.sim.world import World  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEDEN = ROOT / "simulations" / "sweden-10k.toml"
JOINS = 5
TARGET_CPU_PCT = 1.0
TARGET_BYTES_PER_S = 2000.0
TARGET_KNOWN_S = 2.0
TARGET_WALL_S = 600.0


def idle_scenario(peers: int, policy: str, duration_s: float) -> Scenario:
    """sweden-10k's mesh at ``peers`` peers, always on, no requests; JOINS providers join during the run."""
    base = load_scenario(SWEDEN, gossip=policy)
    joins = tuple(Event(at_s=round(duration_s * (i + 1) / (JOINS + 1), 3), kind="join", count=1) for i in range(JOINS))
    return base.model_copy(
        update={
            "sim": base.sim.model_copy(update={"name": f"idle-{peers}", "duration_s": duration_s, "drain_s": 0.0}),
            "peers": base.peers.model_copy(update={"count": peers}),
            "load": base.load.model_copy(update={"requests_per_consumer_hour": 0.0}),
            "churn": ChurnSection(),
            "events": joins,
        }
    )


def kinds(cost: dict, names: tuple[str, ...], key: str) -> float:
    return sum(cost["by_kind"][k][key] for k in names)


def in_steps(run: Callable[[float], None], started: float, step: float = 300.0) -> Callable[[float], None]:
    """``Engine.run`` in steps of ``step`` simulated seconds, printing the wall time each took."""

    def stepped(until: float) -> None:
        done, last = 0.0, time.perf_counter()
        while done < until:
            done = min(until, done + step)
            run(done)
            now = time.perf_counter()
            print(
                f"  sweden-10k: simulated {done:>5.0f} s, this step {now - last:6.1f} s wall, "
                f"{now - started:7.1f} s in all",
                flush=True,
            )
            last = now

    return stepped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--idle-s", type=float, default=1800.0, help="simulated seconds of each new-policy run")
    parser.add_argument("--legacy-s", type=float, default=60.0, help="simulated seconds of each legacy run")
    parser.add_argument("--sweden-s", type=float, default=3600.0, help="simulated seconds of sweden-10k to time")
    args = parser.parse_args()
    print(
        f"{'peers':>6} {'gossip':<7} {'sim s':>6} {'wall s':>7} | {'idle CPU % mean':>15} {'p99':>7} "
        f"{'B/s mean':>10} {'p99':>10} | {'ads+tables CPU %':>16} | B/s: {'ads':>7} {'tables':>7} {'heads':>7} "
        f"{'pings':>7} | {'known 99 % p99':>14}",
        flush=True,
    )
    for peers in args.sizes:
        for policy, duration in (("legacy", args.legacy_s), ("new", args.idle_s)):
            started = time.perf_counter()
            summary = summarize(World(idle_scenario(peers, policy, duration), 1).run())
            wall = time.perf_counter() - started
            cost = summary["cost"]
            idle = cost["idle"]
            known = summary["discovery"]["known_99_s"]["p99"]
            gossip = ("ads", "tables")
            print(
                f"{peers:>6} {policy:<7} {duration:>6.0f} {wall:>7.1f} | {idle['cpu_pct']['mean']:>15.3f} "
                f"{idle['cpu_pct']['p99']:>7.3f} {idle['bytes_per_s']['mean']:>10.0f} "
                f"{idle['bytes_per_s']['p99']:>10.0f} | {kinds(cost, gossip, 'cpu_pct_mean'):>16.3f} |      "
                + " ".join(f"{cost['by_kind'][k]['bytes_per_s_mean']:>7.0f}" for k in IDLE_KINDS)
                + f" | {'-' if known is None else f'{known:.3f} s':>14}",
                flush=True,
            )
    print(
        f"targets: idle CPU <= {TARGET_CPU_PCT} % of a core and <= {TARGET_BYTES_PER_S:.0f} B/s per peer; "
        f"a new provider known by 99 % within {TARGET_KNOWN_S} s",
        flush=True,
    )
    sweden = load_scenario(SWEDEN)
    sweden = sweden.model_copy(update={"sim": sweden.sim.model_copy(update={"duration_s": args.sweden_s})})
    started, cpu = time.perf_counter(), time.process_time()
    world = World(sweden, sweden.sim.seed)
    world.engine.run = in_steps(world.engine.run, started)  # type: ignore[method-assign]
    summary = summarize(world.run())
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    simulated = args.sweden_s + sweden.sim.drain_s
    hour = wall * (3600 + sweden.sim.drain_s) / simulated
    r = summary["requests"]
    print(
        f"sweden-10k (new gossip): {args.sweden_s:.0f} s + {sweden.sim.drain_s:.0f} s drain simulated in {wall:.1f} s "
        f"wall ({r['total']} requests, {r['lost']} lost, success {r['success_rate']}); one simulated hour "
        f"{'took' if args.sweden_s >= 3600 else '≈ (linear in simulated time)'} {hour:.0f} s wall, "
        f"target < {TARGET_WALL_S:.0f} s; this process's CPU {cpu:.1f} s "
        f"({cpu * (3600 + sweden.sim.drain_s) / simulated:.0f} s per hour: the wall time on an otherwise idle core)"
    )


if __name__ == "__main__":
    main()
