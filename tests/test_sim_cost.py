"""The simulator's cost model: what each peer pays in CPU and bytes, under the legacy and the new gossip."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.liveness import QUIET
from garage_p2p.sim.calibration import IDLE_CONNECTIONS
from garage_p2p.sim.cost import ADS, PINGS, UPKEEP, CostMeter, Costs
from garage_p2p.sim.metrics import summarize
from garage_p2p.sim.scenario import Scenario
from garage_p2p.sim.world import World


def idle_mesh(peers: int, policy: str, duration_s: float = 900.0) -> Scenario:
    """``peers`` always on, nobody asking anything."""
    return Scenario.model_validate(
        {
            "sim": {"name": f"idle-{peers}", "duration_s": duration_s, "drain_s": 0},
            "peers": {"count": peers, "provider_share": 0.3, "relay_share": 0.3},
            "network": {"cities": {"Stockholm": 1, "Malmö": 1}, "public": 0.5, "cone": 0.4, "symmetric": 0.1},
            "load": {"requests_per_consumer_hour": 0},
            "gossip": {"policy": policy},
        }
    )


def ads_in_per_peer_second(peers: int, policy: str) -> float:
    cost = summarize(World(idle_mesh(peers, policy), 1).run())["cost"]
    assert cost["gossip"] == policy and cost["peers_counted"] == peers
    return cost["by_kind"][ADS]["messages_in_per_s_mean"]


def test_an_idle_peer_hears_more_ads_as_the_legacy_mesh_grows_but_not_under_the_new_policy():
    small, large = 16, 64
    legacy = ads_in_per_peer_second(small, "legacy"), ads_in_per_peer_second(large, "legacy")
    new = ads_in_per_peer_second(small, "new"), ads_in_per_peer_second(large, "new")
    # Legacy: every peer's ad every 5 s reaches every peer, a few copies each: linear in the mesh.
    assert legacy[1] > 3 * legacy[0], legacy
    # New: the heartbeat stretches with the mesh; what a peer hears stays about the same.
    assert new[1] < 2 * new[0], new
    assert new[1] < legacy[1] / 20, (new, legacy)


def test_a_flood_charges_each_copy_to_its_receiver_and_not_the_publisher():
    costs = Costs.load()
    meter = CostMeter(3, costs)
    for peer in range(3):
        meter.online(peer, 0.0, 0)
    meter.flood(ADS, 0, 800, degree=2, sides=(0, 1))
    meter.settle(np.array([0, 1, 2]), np.array([2, 3, 1]))
    wire = 800 + costs.bytes["gossip_overhead"]
    row = 0  # ADS
    # The publisher sends one copy per mesh link and hears nothing back.
    assert meter.bytes_out[row, 0] == 2 * wire and meter.msgs_in[row, 0] == 0
    # A peer with 3 links takes 2 copies (one checked, one dropped as seen) and forwards 2.
    assert meter.msgs_in[row, 1] == 2 and meter.bytes_in[row, 1] == 2 * wire and meter.bytes_out[row, 1] == 2 * wire
    ms = costs.cpu_ms
    assert meter.cpu_ms[row, 1] == ms["ad_receive"] + ms["gossip_duplicate"] + 2 * ms["gossip_send"]
    # A leaf takes its one copy and forwards nothing.
    assert meter.msgs_in[row, 2] == 1 and meter.bytes_out[row, 2] == 0
    # Gossip published while a peer was away is not its.
    meter.offline(2, 10.0, 1)
    meter.flood(ADS, 0, 800, degree=2, sides=(0, 1))
    meter.online(2, 20.0, 0)
    meter.settle(np.array([2]), np.array([1]))
    assert meter.msgs_in[row, 2] == 1


def test_the_report_and_json_show_the_cost_per_peer(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        '[sim]\nname = "tiny"\nduration_s = 120\ndrain_s = 30\n'
        "[peers]\ncount = 12\n[load]\nrequests_per_consumer_hour = 600\nmax_tokens_median = 50\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["sim", "run", str(scenario), "--out", str(out), "--gossip", "legacy", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    per_peer = json.loads(result.output)["cost_per_peer"]
    assert per_peer["gossip"] == "legacy"
    for block in ("idle", "total"):
        for figure in ("cpu_pct", "bytes_in_per_s", "bytes_out_per_s", "bytes_per_s"):
            assert per_peer[block][figure]["mean"] > 0 and per_peer[block][figure]["p99"] > 0
    # Requests cost on top of idle.
    assert per_peer["total"]["cpu_pct"]["mean"] > per_peer["idle"]["cpu_pct"]["mean"]
    assert per_peer["by_kind"]["requests"]["bytes_per_s_mean"] > 0
    report = (out / "report.md").read_text()
    section = report.split("## Cost per peer", 1)[1].split("\n## ", 1)[0]
    assert "Gossip policy `legacy`" in section
    for row in ("| Idle | CPU |", "| Total | Bytes in |", "| ads |", "| tables |", "| heads |", "| requests |"):
        assert row in section, row
    saved = json.loads((out / "report.json").read_text())["summary"]["cost"]
    assert saved == per_peer


def test_an_idle_peer_pays_its_daemons_upkeep_for_every_second_online():
    """Timers and keepalives cost a real daemon CPU with no message at all (tools/calibrate_costs.py measures
    them on idle daemons): the model charges them per online second, under either policy."""
    costs = Costs.load()
    cost = summarize(World(idle_mesh(16, "new", duration_s=600.0), 1).run())["cost"]
    upkeep = cost["by_kind"][UPKEEP]
    per_s = costs.cpu_ms["upkeep_per_s"] + IDLE_CONNECTIONS * costs.cpu_ms["connection_per_s"]
    assert upkeep["cpu_pct_mean"] > 0.9 * per_s / 10, upkeep  # ms per s → % of a core
    assert cost["idle"]["cpu_pct"]["mean"] >= upkeep["cpu_pct_mean"], cost["idle"]
    # Every idle connection is pinged (mesh/liveness.py), consumers' and providers' alike: a ping
    # exchange per QUIET seconds, each end paying half of one.
    pings = cost["by_kind"][PINGS]
    exchange_ms = (costs.cpu_ms["ping_client"] + costs.cpu_ms["ping_server"]) / 2
    assert pings["cpu_pct_mean"] > 0.5 * exchange_ms / QUIET / 10, pings  # at least one connection each
    assert pings["messages_in_per_s_mean"] > 0.5 / QUIET, pings


def test_table_syncs_follow_one_partner_so_each_ad_comes_once_by_table_not_once_per_neighbour():
    cost = summarize(World(idle_mesh(64, "new"), 1).run())["cost"]["by_kind"]
    # Gossip hands a peer d - 1 copies of each ad and it forwards as many; a cursor sync with a random
    # neighbour handed it each ad once per neighbour more (as many bytes as gossip). One partner: once.
    assert cost["tables"]["bytes_per_s_mean"] < cost[ADS]["bytes_per_s_mean"] / 4, cost
