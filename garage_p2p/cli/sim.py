"""``garage sim run``: what a mesh of many rigs would do, before it happens."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .client import JsonOption
from .common import fail, setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The network simulator: scenarios in simulations/, reports with figures and plots.",
)


@app.command("run")
def run(
    scenario: Path = typer.Argument(..., help="A scenario file, e.g. simulations/sweden-1k.toml."),
    seed: int | None = typer.Option(
        None, "--seed", help="Random seed (default: the scenario's). Same scenario and seed, same report."
    ),
    out: Path | None = typer.Option(None, "--out", help="Report directory (default sim-out/<scenario name>)."),
    gossip: str | None = typer.Option(
        None,
        "--gossip",
        help="Gossip policy: new (the daemon's: ads on change and a stretching heartbeat, table sync by cursor) or "
        "legacy (an ad every 5 s from every peer, full table pages), overriding the scenario's [gossip] policy.",
    ),
    json_out: bool = JsonOption,
) -> None:
    """Simulate a scenario and write report.md, report.json and PNG plots."""
    simulate_and_report(scenario, seed, out, json_out, gossip=gossip)


def simulate_and_report(
    scenario: Path, seed: int | None, out: Path | None, json_out: bool, emulator=None, gossip: str | None = None
) -> None:
    """``garage sim run``'s work; ``emulator`` (``tools.emulate.run_emulation``, from a checkout) adds the twin."""
    try:
        from ..sim.run import run_scenario
        from ..sim.scenario import ScenarioError, load_scenario
    except ImportError as exc:
        fail(f"the simulator needs numpy, scipy and matplotlib ({exc.name} is missing): pip install 'garage-p2p[sim]'")
    try:
        sc = load_scenario(scenario, gossip=gossip)
    except ScenarioError as exc:
        fail(str(exc))
    setup_logging("WARNING")  # the emulation's daemons: our warnings, not py-libp2p's shutdown noise
    seed = sc.sim.seed if seed is None else seed
    out = out if out is not None else Path("sim-out") / sc.sim.name
    log = (lambda *_: None) if json_out else (lambda message: typer.echo(message, err=True))
    log(f"simulating {sc.sim.name}: {sc.peers.count} peers, {sc.sim.duration_s:g} s, seed {seed} …")
    summary, stats, twin = run_scenario(sc, seed, out, emulator=emulator, log=log)
    cost = {
        "wall_s": round(stats.wall_s, 2),
        "peak_rss_mib": round(stats.peak_rss_mib, 1),
        "peer_hours": round(stats.peer_hours, 2),
        "wall_ms_per_peer_hour": round(stats.wall_ms_per_peer_hour, 2),
        "events": stats.events,
    }
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "out": str(out),
                    "cost": cost,
                    "cost_per_peer": summary["cost"],
                    "requests": summary["requests"],
                    "twin_bounds": twin and twin["bounds"],
                },
                indent=2,
                sort_keys=True,
            )
        )
        return
    r = summary["requests"]
    typer.echo(f"report: {out / 'report.md'}")
    typer.echo(
        f"requests: {r['total']} ({r['ok']} ok, {r['lost']} lost), latency p50 {r['latency_s']['p50']} s, p99 "
        f"{r['latency_s']['p99']} s"
    )
    per_peer = summary["cost"]
    if per_peer is not None:
        idle = per_peer["idle"]
        typer.echo(
            f"per peer ({per_peer['gossip']} gossip): idle CPU {idle['cpu_pct']['mean']} % of a core (p99 "
            f"{idle['cpu_pct']['p99']}), {idle['bytes_per_s']['mean']} B/s in+out (p99 {idle['bytes_per_s']['p99']})"
        )
    typer.echo(
        f"cost: {cost['wall_s']} s wall, {cost['peak_rss_mib']} MiB peak, {cost['wall_ms_per_peer_hour']} ms per "
        f"peer-hour, {cost['events']} events"
    )
    if twin is not None:
        failed = [name for name, b in twin["bounds"].items() if not b["ok"]]
        typer.echo(
            "emulation vs simulation: " + ("all bounds hold" if not failed else f"outside bounds: {', '.join(failed)}")
        )
