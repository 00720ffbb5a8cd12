"""Run a scenario: simulate it (and, given an emulator, run its twin on real peers) and write the report.

The emulator (real daemons, ``tools/emulate.py``) is passed in rather than imported: the
simulator must not depend on the daemon, and the shipped package on the repository's tools.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .metrics import Observations, summarize
from .scenario import Scenario, twin_scenario
from .world import run_world


@dataclass(frozen=True, slots=True)
class RunStats:
    """What a run cost (kept out of the report, which must not depend on the machine)."""

    wall_s: float
    """Seconds of wall time the simulation took."""
    peak_rss_mib: float
    """Peak resident memory of this process, MiB."""
    peer_hours: float
    """Peers × simulated hours."""
    events: int
    """Events the engine ran."""

    @property
    def wall_ms_per_peer_hour(self) -> float:
        return self.wall_s * 1000 / self.peer_hours if self.peer_hours else 0.0


def simulate(scenario: Scenario, seed: int) -> tuple[dict, RunStats]:
    """The summary of one simulated run, and what it cost."""
    started = time.perf_counter()
    obs = run_world(scenario, seed)
    wall = time.perf_counter() - started
    summary = summarize(obs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hours = scenario.peers.count * scenario.sim.duration_s / 3600
    return summary, RunStats(wall, peak, hours, obs.counters.get("events", 0))


TWIN_BOUNDS = {
    "success_rate": ("|sim − emu| ≤ 0.05", lambda s, e: abs(s - e) <= 0.05),
    "latency_p50_s": ("within ×2 or 0.1 s", lambda s, e: abs(s - e) <= 0.1 or 0.5 <= s / e <= 2),
    "known_99_p50_s": ("within ×3 or 1 s", lambda s, e: abs(s - e) <= 1.0 or 1 / 3 <= s / e <= 3),
    "ledger_lag_p50_s": ("within ×3 or 1 s", lambda s, e: abs(s - e) <= 1.0 or 1 / 3 <= s / e <= 3),
    "lost": ("both 0", lambda s, e: s == 0 and e == 0),
}
"""How close the simulated twin must come to the real peers (docs/simulator.md says why)."""


def headline(summary: dict) -> dict:
    """The figures the twin comparison is judged on."""
    return {
        "success_rate": summary["requests"]["success_rate"],
        "latency_p50_s": summary["requests"]["latency_s"]["p50"],
        "known_99_p50_s": summary["discovery"]["known_99_s"]["p50"],
        "ledger_lag_p50_s": summary["ledger"]["lag_s"]["p50"],
        "lost": summary["requests"]["lost"],
    }


def compare(simulated: dict, emulated: dict) -> dict:
    """Each bound with both values and whether it holds."""
    sim, emu = headline(simulated), headline(emulated)
    out = {}
    for name, (limit, check) in TWIN_BOUNDS.items():
        s, e = sim[name], emu[name]
        out[name] = {
            "limit": limit,
            "simulated": s,
            "emulated": e,
            "ok": s is not None and e is not None and bool(check(s, e)),
        }
    return out


Emulator = Callable[..., Observations]
"""``emulator(scenario, seed, log=log)``: the scenario's twin run on real peers (``tools.emulate.run_emulation``)."""


def run_scenario(
    scenario: Scenario, seed: int, out: Path, *, emulator: Emulator | None = None, log=print
) -> tuple[dict, RunStats, dict | None]:
    """Simulate, run the twin with ``emulator`` if given, and write the report into ``out``."""
    from .report import write_report

    summary, stats = simulate(scenario, seed)
    twin = None
    if emulator is not None:
        twin_sc = twin_scenario(scenario)
        simulated, _ = simulate(twin_sc, seed)
        log(f"emulating {twin_sc.peers.count} real peers for {twin_sc.sim.duration_s:g} s …")
        emulated = summarize(emulator(scenario, seed, log=log))
        twin = {"simulated": simulated, "emulated": emulated, "bounds": compare(simulated, emulated)}
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, scenario=scenario, seed=seed, summary=summary, twin=twin)
    return summary, stats, twin
