"""The simulator: determinism, invariants, and that it runs the real core."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.capabilities import SERVE_MARGIN
from garage_p2p.core.ledger import decode_entry
from garage_p2p.core.request_policy import RequestPolicy
from garage_p2p.core.routing import Router
from garage_p2p.sim import calibration as cal
from garage_p2p.sim.calibration import GOSSIP_HOP_MS
from garage_p2p.sim.metrics import summarize
from garage_p2p.sim.network import PUBLIC
from garage_p2p.sim.peers import CONSUMER, PROVIDER, SimPeer
from garage_p2p.sim.run import run_scenario
from garage_p2p.sim.scenario import Scenario, ScenarioError, load_scenario, twin_scenario
from garage_p2p.sim.world import EPOCH, World

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"


def scenario(**overrides) -> Scenario:
    """A small mesh with every kind of event: 60 peers, 15 simulated minutes."""
    data = {
        "sim": {"name": "small", "duration_s": 900, "drain_s": 200, "sample_s": 60},
        "peers": {"count": 60, "provider_share": 0.3, "relay_share": 0.3, "gpus": {"RTX 3060": 1, "RTX 4090": 1}},
        "network": {
            "cities": {"Stockholm": 2, "Göteborg": 1, "Malmö": 1},
            "public": 0.3,
            "cone": 0.5,
            "symmetric": 0.2,
        },
        "churn": {"provider_online": [0.8], "consumer_online": [0.8], "mean_session_min": 20},
        "load": {"requests_per_consumer_hour": 60},
        "events": [
            {"at_s": 120, "kind": "flash_crowd", "factor": 4, "ramp_s": 30, "hold_s": 120},
            {"at_s": 300, "kind": "partition", "side": ["Göteborg", "Malmö"]},
            {"at_s": 500, "kind": "heal"},
            {"at_s": 650, "kind": "relay_loss", "share": 0.5},
            {"at_s": 60, "kind": "job", "lines": 200, "shard_size": 10},
        ],
        "gossip": {},
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return Scenario.model_validate(data)


def test_same_scenario_and_seed_give_the_same_report_byte_for_byte(tmp_path):
    sc = scenario(load={"requests_per_consumer_hour": 20})
    run_scenario(sc, 7, tmp_path / "a", log=lambda *_: None)
    run_scenario(sc, 7, tmp_path / "b", log=lambda *_: None)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"report.md", "report.json", "known_by.png", "latency.png"} <= set(files)
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    run_scenario(sc, 8, tmp_path / "c", log=lambda *_: None)
    assert (tmp_path / "c" / "report.json").read_bytes() != (tmp_path / "a" / "report.json").read_bytes()


def test_no_request_is_lost_and_the_ledger_converges_after_the_heal():
    world = World(scenario(), 3)
    summary = summarize(world.run())
    requests = summary["requests"]
    assert requests["total"] > 300
    assert requests["lost"] == 0
    assert all(r.ended is not None and r.status is not None for r in world.obs.requests)
    # The partition refused dials across it (fresh rounds then found providers on the consumer's
    # side); a request that failed anyway did so with an explicit error.
    assert summary["counters"]["dial_failures"] > 0
    assert all(r.code for r in world.obs.requests if not r.ok)
    # Relayed and direct paths both carried answers; the relays were used.
    assert requests["direct"] > 0 and requests["relayed"] > 0
    assert summary["ledger"]["converged_after_heal_s"] is not None
    # The batch job finished, every line once, though providers came and went.
    [job] = summary["jobs"]
    assert job["lines_done"] == job["lines"] == 200 and job["duration_s"] is not None
    # Providers claimed their next shard while their last one's lines still ran (jobs/worker.py).
    assert job["early_claims"] > 0
    # After the drain every online replica holds the same ledger.
    prints = {p.state.fingerprint() for p in world.replicas if p.online}
    assert len(prints) == 1


def test_the_ledger_holds_real_signed_entries_for_answered_requests():
    world = World(scenario(events=[]), 5)
    world.run()
    ok = {r.id for r in world.obs.requests if r.ok}
    entries = [e for p in world.peers if p.kind is not None for e in p.state.entries(p.peer_id)]
    assert entries
    # Each entry decodes and both its signatures verify, as a daemon would check them.
    for entry in entries:
        assert decode_entry(entry.encoded).hash == entry.hash
    # Every answered request has its entry, but for a provider that left before the COSIGN came.
    assert len(ok) - 5 <= len(entries) <= len(ok)


def test_load_is_spread_fairly_in_a_balanced_mesh():
    balanced = scenario(
        sim={"duration_s": 600},
        peers={"gpus": {"RTX 4070": 1}, "relay_share": 0.0},
        network={"cities": {"Stockholm": 1}, "public": 1.0, "cone": 0.0, "symmetric": 0.0},
        churn={"provider_online": [1.0], "consumer_online": [1.0]},
        load={"requests_per_consumer_hour": 200},
        events=[],
    )
    summary = summarize(World(balanced, 1).run())
    assert summary["requests"]["success_rate"] == 1.0
    assert summary["fairness"]["jain_utilisation"] >= 0.9


def test_an_overloaded_mesh_answers_busy_not_silence():
    crowded = scenario(
        sim={"duration_s": 300, "drain_s": 150},
        peers={"provider_share": 0.1},
        churn={"provider_online": [1.0], "consumer_online": [1.0]},
        # Past what its 6 providers serve (about 60 % get answered). At 600 an hour it was at the edge:
        # 2 × 429 of 2,292, none once NAT-ed providers kept their relay reservations.
        load={"requests_per_consumer_hour": 1200, "max_tokens_median": 600},
        events=[],
    )
    summary = summarize(World(crowded, 2).run())
    assert summary["requests"]["lost"] == 0
    assert summary["requests"]["errors"].get("429 providers_busy", 0) > 0


def test_the_shipped_scenarios_load_and_have_valid_twins():
    shipped = sorted(SIMULATIONS.glob("*.toml"))
    assert {p.stem for p in shipped} >= {"sweden-1k", "sweden-10k", "flash-crowd", "partition-heal", "relay-loss"}
    for path in shipped:
        sc = load_scenario(path)
        twin = twin_scenario(sc)
        Scenario.model_validate(twin.model_dump())  # the twin is itself a valid scenario
        assert twin.network.loopback and twin.peers.count == sc.emulation.peers


@pytest.mark.parametrize(
    "text, message",
    [
        ('[sim]\nname="x"\nduration_s=10\n[peers]\ncount=5\n[network]\ncities={"Atlantis"=1}\n', "unknown cities"),
        (
            '[sim]\nname="x"\nduration_s=10\n[peers]\ncount=5\n[network]\npublic=0.5\ncone=0.1\nsymmetric=0.1\n',
            "add up to 1",
        ),
        ("[sim\n", "not valid TOML"),
    ],
)
def test_a_bad_scenario_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)
    result = CliRunner().invoke(app, ["sim", "run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_the_cli_writes_the_report(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(
        '[sim]\nname="tiny"\nduration_s=120\ndrain_s=60\n[peers]\ncount=12\n[load]\nrequests_per_consumer_hour=120\n'
    )
    result = CliRunner().invoke(app, ["sim", "run", str(path), "--seed", "3", "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"lost": 0' in result.output
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Simulation report: tiny (seed 3)")


def test_a_table_in_the_simulator_serves_by_the_cores_rule():
    """A neighbour's table passes on a provider's ad only while the core would serve it
    (``choose_page``: SERVE_MARGIN left to live at the server). The simulator once re-implemented
    freshness and served an ad until its ttl ran out."""
    world = World(scenario(events=[]), 3)
    world.run()
    p = next(p for p in world.peers if p.ads)
    published, ad, _ = p.ads[-1]

    def has_it(peer) -> bool:  # every neighbour holds the ad: whichever serves, it can
        n = world.topo.neighbours[peer.idx]
        return bool(n) and all(world.peers[i].online_since <= published for i in n)

    c = next(c for c in world.peers if c.online and c.table is not None and c is not p and has_it(c))

    def fetch_at(t: float) -> bool:
        c.applied_seq.pop(p.idx, None)
        c.table.forget(p.peer_id)
        world.engine.now = t
        world._fetch_table(c, c.session)
        return c.table.get(p.peer_id, EPOCH + t) is not None

    assert fetch_at(published + SERVE_MARGIN)  # fresh: served
    assert not fetch_at(published + ad.ttl - 1)  # live at the server, but less than SERVE_MARGIN left


def test_a_catch_up_looks_at_every_provider_with_news(monkeypatch):
    """A consumer's catch-up looks only at the providers that may have news (``_maybe_news``): each with
    an ad newer than the consumer applied is among them, through churn, restarts and a partition."""
    original = World._catch_up
    checked = []

    def checking(self, consumer, model):
        news = {
            p.idx for p in self.providers_of[model] if p.ads and p.ads[-1][1].seq > consumer.applied_seq.get(p.idx, 0)
        }
        assert news <= {p.idx for p in self._maybe_news(consumer, model)}
        checked.append(len(consumer.caught_up))
        original(self, consumer, model)

    monkeypatch.setattr(World, "_catch_up", checking)
    World(scenario(), 3).run()
    assert len(checked) > 100 and sum(1 for n in checked if n) > 50  # most after a first catch-up


def test_a_run_pauses_the_cycle_collector_and_leaves_it_as_it_found_it():
    """The cyclic garbage collector is off while a world runs, on again after, and stays off after a run
    if it was off before."""
    seen = []
    original = World._sample

    def sampling(self):
        seen.append(gc.isenabled())
        original(self)

    assert gc.isenabled()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(World, "_sample", sampling)
        World(scenario(sim={"duration_s": 120, "drain_s": 0}), 1).run()
        assert seen and not any(seen) and gc.isenabled()
        gc.disable()
        try:
            World(scenario(sim={"duration_s": 60, "drain_s": 0}), 1).run()
            assert not gc.isenabled()
        finally:
            gc.enable()


def test_the_gossip_graph_holds_exactly_the_mesh_links_after_churn_and_a_partition():
    """The overlay's graph, kept link by link as peers come and go and a partition cuts and heals, is
    the mesh of the neighbour sets: each link both ways, weighted by its latency plus a hop."""
    world = World(scenario(), 5)
    world.run()
    topo = world.topo
    graph = topo._build_graph().tocoo()
    links = {(int(a), int(b)): w for a, b, w in zip(graph.row, graph.col, graph.data, strict=True)}
    assert len(links) == graph.nnz
    assert set(links) == {(a, b) for a in range(len(topo.places)) for b in topo.neighbours[a]}
    assert all(w == pytest.approx(topo.one_way(a, b) + GOSSIP_HOP_MS / 1000) for (a, b), w in links.items())


def test_an_answer_whose_provider_vanishes_continues_elsewhere_through_the_cores_policy():
    """Providers that vanish mid-answer (power cut: their connections go silent) and relays cut by
    their time limit: with failover (core/request_policy.py) the answers continue on another
    provider and none waits for its 504; without it they are cut. (One in this run is still cut:
    the providers its continuation tried had vanished too, an explicit error.)"""
    churning = scenario(
        sim={"duration_s": 600, "drain_s": 300},
        churn={"provider_online": [0.8], "consumer_online": [1.0], "mean_session_min": 3, "graceful_share": 0.0},
        load={"requests_per_consumer_hour": 120, "max_tokens_median": 800, "stream_share": 1.0},
        events=[],
    )
    on = summarize(World(churning, 3).run())["requests"]
    off = summarize(
        World(churning.model_copy(update={"load": churning.load.model_copy(update={"failover": False})}), 3).run()
    )["requests"]
    assert on["lost"] == off["lost"] == 0
    assert off["cut_mid_stream"] > 0
    assert on["failed_over"] > 0
    assert on["cut_mid_stream"] * 10 < off["cut_mid_stream"]
    assert not any(key.startswith("504") for key in on["errors"])
    assert on["success_rate"] > off["success_rate"]


def _nat_providers(world: World) -> list[SimPeer]:
    return [p for p in world.peers if p.role == PROVIDER and p.online and world.topo.places[p.idx].nat != PUBLIC]


def test_nat_ed_providers_keep_their_relays_and_replace_a_vanished_one_once_liveness_finds_it():
    """As NatService does: every NAT-ed provider holds RELAY_RESERVATIONS relays, those online from the
    start too (the relays came online after some of them). A relay that vanishes is still named by
    its providers until their liveness finds it silent; then they reserve another."""
    quiet = scenario(
        sim={"duration_s": 100, "drain_s": 0},
        churn={"provider_online": [1.0], "consumer_online": [1.0]},
        load={"requests_per_consumer_hour": 0},
        events=[{"at_s": 50, "kind": "relay_loss", "share": 0.5}],
    )
    world = World(quiet, 4)
    seen: dict[str, list[list[bool]]] = {}

    def look(name: str) -> None:
        # As many as there are relays online to hold them (a relay loss may leave fewer than wanted).
        wanted = min(cal.RELAY_RESERVATIONS, sum(r.online for r in world.relays))
        seen[name] = [
            [world.peers[r].online for r in p.relays] + [True] * (cal.RELAY_RESERVATIONS - wanted)
            for p in _nat_providers(world)
        ]

    lost_known = 50 + cal.LIVENESS_DETECT_S
    for name, at in (
        ("start", 1.0),
        ("unnoticed", lost_known - 1),
        ("replaced", lost_known + cal.RELAY_RECOVERY_S + 1),
    ):
        world.engine.at(at, look, name)
    world.run()
    assert seen["start"] and all(relays == [True] * cal.RELAY_RESERVATIONS for relays in seen["start"])
    assert any(False in relays for relays in seen["unnoticed"])  # the ads still name the vanished relay
    assert all(relays == [True] * cal.RELAY_RESERVATIONS for relays in seen["replaced"])


def test_liveness_withdraws_a_vanished_provider_from_the_consumers_connected_to_it():
    busy = scenario(
        sim={"duration_s": 200, "drain_s": 0},
        churn={"provider_online": [1.0], "consumer_online": [1.0]},
        load={"requests_per_consumer_hour": 300},
        events=[],
    )
    world = World(busy, 2)
    watched: dict[str, object] = {}

    def vanish() -> None:
        providers = [p for p in world.peers if p.role == PROVIDER and p.online]
        consumers = [c for c in world.peers if c.role == CONSUMER and c.online]
        gone = max(providers, key=lambda p: (sum(p.idx in c.conns for c in consumers), -p.idx))
        watched["gone"] = gone
        watched["watchers"] = [c for c in consumers if gone.idx in c.conns]
        world._vanish(gone)

    def held(name: str) -> None:
        gone = watched["gone"]
        now = EPOCH + world.engine.now
        watched[name] = [c.table.get(gone.peer_id, now) is not None for c in watched["watchers"]]

    world.engine.at(150.0, vanish)
    world.engine.at(150.0 + cal.LIVENESS_DETECT_S - 1, held, "before")
    world.engine.at(150.0 + cal.LIVENESS_DETECT_S + 0.1, held, "after")
    world.run()
    assert len(watched["watchers"]) >= 3
    assert all(watched["before"])  # ads live for hours: only liveness tells
    assert not any(watched["after"])
    assert all(watched["gone"].idx not in c.conns for c in watched["watchers"])


def test_an_attempt_over_a_relayed_connection_tells_the_policy_when_the_relay_cuts_it(monkeypatch):
    """The daemon passes ``Mesh.relay_deadline`` to ``RequestPolicy.opened``, so a cut at the relay's
    limit moves the answer instead of banning its provider; the simulator does the same."""
    deadlines: list[tuple[float, float | None]] = []
    opened = RequestPolicy.opened

    def spy(self, attempt, now, relay_deadline=None):
        deadlines.append((now, relay_deadline))
        return opened(self, attempt, now, relay_deadline)

    monkeypatch.setattr(RequestPolicy, "opened", spy)
    world = World(scenario(sim={"duration_s": 300, "drain_s": 100}, events=[]), 1)
    world.run()
    relayed = [(now, d) for now, d in deadlines if d is not None]
    assert relayed and len(relayed) < len(deadlines)  # direct ones have none
    assert all(now < d <= now + cal.RELAY_CONNECTION_LIMIT_S + 1 for now, d in relayed)


def test_a_busy_reply_tells_the_consumers_router_the_providers_live_load(monkeypatch):
    """As ``ProviderService`` puts its live load in a 429 and ``FrameExchange`` hands it to
    ``Router.observe``: a busy provider is ranked by its queue, not by its older ad."""
    observed: list[str] = []
    busy_observed: list[int] = []
    observe, deliver = Router.observe, World._deliver

    def spy_observe(self, peer_id, model, load, now):
        observed.append(peer_id)
        return observe(self, peer_id, model, load, now)

    def spy_deliver(self, flight, attempt, event):
        before = len(observed)
        deliver(self, flight, attempt, event)
        if event.info.status == 429:
            busy_observed.append(len(observed) - before)

    monkeypatch.setattr(Router, "observe", spy_observe)
    monkeypatch.setattr(World, "_deliver", spy_deliver)
    crowded = scenario(
        sim={"duration_s": 120, "drain_s": 100},
        peers={"provider_share": 0.1},
        churn={"provider_online": [1.0], "consumer_online": [1.0]},
        load={"requests_per_consumer_hour": 1200, "max_tokens_median": 600},
        events=[],
    )
    World(crowded, 2).run()
    assert busy_observed and all(n == 1 for n in busy_observed)


def test_turns_of_a_conversation_stay_with_their_provider_through_the_cores_affinity():
    """The workload's conversations carry affinity keys; the core's router keeps a conversation's
    turns where the previous one was answered, while that provider is within its load bound."""
    talky = scenario(
        sim={"duration_s": 240, "drain_s": 100},
        peers={"gpus": {"RTX 4070": 1}, "relay_share": 0.0},
        network={"cities": {"Stockholm": 1}, "public": 1.0, "cone": 0.0, "symmetric": 0.0},
        churn={"provider_online": [1.0], "consumer_online": [1.0]},
        load={"requests_per_consumer_hour": 120, "conversation_turns": 6},
        events=[],
    )
    summary = summarize(World(talky, 3).run())
    assert summary["requests"]["success_rate"] == 1.0
    counters = summary["counters"]
    kept = counters["conversation_turns_kept"] / counters["conversation_turns"]
    print(f"{counters['conversation_turns']} later turns, {kept:.0%} kept their provider")
    assert counters["conversation_turns"] > 100 and kept >= 0.8  # 3 % without the affinity


def test_a_provider_that_shuts_down_with_requests_running_leaves_once():
    """The drain's deadline cuts what still runs; cutting the last request finishes the drain from inside
    (``_maybe_drained``), and the outer shutdown must not take the peer offline a second time."""
    world = World(scenario(events=[], load={"requests_per_consumer_hour": 600}), 4)
    busy = []

    def look() -> None:
        busy.extend(p for p in world.peers if p.role == PROVIDER and p.online and p.flights and not p.batch)

    world.engine.at(300.0, look)
    original = world.engine.run

    def run_until_busy(until: float) -> None:
        original(300.0)
        assert busy, "no provider with requests running at 300 s"
        provider = busy[0]
        world._drain(provider)
        assert provider.online and provider.flights  # the drain waits for them
        world._drained(provider, provider.session)  # its deadline: it exits with them running
        assert not provider.online and not provider.flights
        original(until)

    world.engine.run = run_until_busy  # type: ignore[method-assign]
    world.run()
