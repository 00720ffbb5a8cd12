"""``sim.report``: report.json, report.md and the plots, byte-identical for the same inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from garage_p2p.sim.metrics import (
    JoinRecord,
    Observations,
    ProviderRecord,
    RequestRecord,
    summarize,
)
from garage_p2p.sim.report import DASH, fmt_seconds, fmt_share, write_report
from garage_p2p.sim.scenario import Scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["known_by.png", "requests.png", "latency.png", "fairness.png", "online.png"]


def make_scenario() -> Scenario:
    return Scenario.model_validate(
        {
            "sim": {"name": "report | test $5", "duration_s": 600, "sample_s": 60},
            "peers": {"count": 12},
            "events": [{"at_s": 300, "kind": "partition"}, {"at_s": 420, "kind": "heal"}],
        }
    )


def make_observations(shift: float = 0.0) -> Observations:
    """A small run: answers direct and relayed, errors, a lost request, None fields, joins, events."""
    req = RequestRecord
    obs = Observations(duration_s=600, sample_s=60)
    obs.requests = [
        req(
            1,
            "c1",
            "m",
            10,
            100,
            True,
            ended=10.4 + shift,
            status=200,
            provider="p1",
            path="direct",
            attempts=1,
            first_byte=10.1,
            tokens=100,
        ),
        req(
            2,
            "c1",
            "m",
            70,
            100,
            True,
            ended=71.9 + shift,
            status=200,
            provider="p2",
            path="relayed",
            attempts=2,
            first_byte=70.5,
            tokens=80,
        ),
        req(
            3,
            "c2",
            "m",
            130,
            50,
            False,
            ended=130.6 + shift,
            status=200,
            provider="p1",
            path="direct",
            attempts=1,
            tokens=50,
        ),  # no first byte time
        req(
            4,
            "c2",
            "m",
            200,
            50,
            True,
            ended=203.0,
            status=503,
            code="provider_busy",
            provider="p2",
            attempts=3,
            tried=["p1 online public: provider_busy", "p9 vanished: dial timeout", "p2 online 2 relays: provider_busy"],
            reachable=2,
            routable=0,
        ),
        req(
            5,
            "c1",
            "m",
            320,
            50,
            True,
            ended=440.0,
            status=504,
            code="deadline_exceeded",
            provider="p3",
            attempts=1,
            reachable=0,
            routable=0,
        ),
        req(
            6,
            "c2",
            "m",
            330,
            50,
            True,
            ended=330.2 + shift,
            status=200,
            provider="p3",
            path=None,
            attempts=1,
            first_byte=330.05,
            tokens=20,
        ),
        req(7, "c1", "m", 590, 50, True),  # lost: never ended
    ]
    obs.joins = [JoinRecord("p4", 100, 2.5 + shift), JoinRecord("p5", 250, 4.0), JoinRecord("p6", 500, None)]
    obs.providers = [
        ProviderRecord("p1", "RTX 4090", 100.0, online_s=600, tokens=150, requests=2),
        ProviderRecord("p2", "RTX 3060", 40.0, online_s=500, tokens=80, requests=1),
        ProviderRecord("p3", "stand-in", 10.0, online_s=30, tokens=20, requests=1),  # too briefly online to count
    ]
    obs.ledger_lag = [0.2, 0.5, 1.5]
    obs.ledger_converged_after_heal = 12.5
    obs.ledger_replicas, obs.ledger_entries = 5, 40
    obs.events = [(300.0, "partition: Stockholm | rest"), (420.0, "heal $x$")]
    obs.online = [(0.0, 3, 8), (120.0, 4, 8), (300.0, 4, 5), (540.0, 2, 9)]
    obs.counters = {"dials": 12, "punches": 3, "relay_cuts": 0}
    return obs


def make_twin(summary: dict) -> dict:
    emulated = summarize(make_observations(shift=0.3))
    return {
        "simulated": summary,
        "emulated": emulated,
        "bounds": {
            "latency p50 ratio": {
                "limit": "≤ ×3",
                "simulated": summary["requests"]["latency_s"]["p50"],
                "emulated": emulated["requests"]["latency_s"]["p50"],
                "ok": True,
            },
            "success rate": {"limit": "≥ 99 %", "simulated": 0.8, "emulated": 0.8, "ok": False},
        },
    }


def write(out: Path, *, twin: bool = False) -> list[Path]:
    """The report of the hand-made run (also called from a second Python process)."""
    summary = summarize(make_observations())
    return write_report(
        out, scenario=make_scenario(), seed=7, summary=summary, twin=make_twin(summary) if twin else None
    )


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> list[Path]:
    """The report without a twin, written once for the tests that read it."""
    return write(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def with_twin(tmp_path_factory) -> list[Path]:
    """The report with a twin, written once."""
    return write(tmp_path_factory.mktemp("twin"), twin=True)


def assert_same_files(a: list[Path], b: list[Path]) -> None:
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_same_inputs_give_the_same_bytes(plain, tmp_path):
    first, second = plain, write(tmp_path)
    assert [p.name for p in first] == ["report.json", "report.md", *PLOTS]
    assert_same_files(first, second)
    for path in first:
        if path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(PNG_SIGNATURE)
            # no metadata: neither the matplotlib version nor a time
            assert b"tEXt" not in data and b"tIME" not in data and b"Matplotlib" not in data


def test_json_embeds_config_and_summary(plain):
    summary = summarize(make_observations())
    text = plain[0].read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["scenario"] == "report | test $5" and data["seed"] == 7
    assert data["config"]["peers"]["count"] == 12
    assert data["summary"] == json.loads(json.dumps(summary))
    assert data["emulation"] is None
    assert text.endswith("}\n")


def test_markdown_shows_the_headline_figures(plain):
    summary = summarize(make_observations())
    md = plain[1].read_text(encoding="utf-8")
    req = summary["requests"]
    assert md.startswith("# Simulation report: report | test $5 (seed 7)\n")
    assert req["success_rate"] == 0.6667 and "| Success rate (of ended) | 66.7 % |" in md
    assert f"| Latency p50 | {fmt_seconds(req['latency_s']['p50'])} |" in md
    assert f"| Latency p99 | {fmt_seconds(req['latency_s']['p99'])} |" in md
    assert f"| {fmt_seconds(summary['discovery']['known_99_s']['p50'])} |" in md
    assert "| Relayed share | " + fmt_share(req["relayed_share"]) + " |" in md
    assert f"| Jain's index of provider utilisation | {summary['fairness']['jain_utilisation']:.3f} |" in md
    assert "| Converged after heal | 12.5 s |" in md
    assert "| Lag p50 | 500 ms |" in md
    assert "| Joins never known by 99 % | 1 |" in md
    assert "| 503 | `provider_busy` | 1 | 16.7 % |" in md  # 1 of the 6 that ended
    assert "partition: Stockholm \\| rest" in md  # a '|' cannot split the events table
    assert "| `dials` | 12 |" in md
    # Why each failed: whether anyone could have served it, and what each attempt met.
    assert "| 503 provider_busy, 2 reachable, none routable (unknown or banned) | 1 |" in md
    assert "| 504 deadline_exceeded, no provider reachable | 1 |" in md
    assert "p9 vanished: dial timeout; p2 online 2 relays: provider_busy |" in md
    for name in PLOTS:
        assert f"]({name})" in md
    assert "Simulation vs emulation" not in md


def test_twin_adds_a_comparison(with_twin, tmp_path):
    first, second = with_twin, write(tmp_path, twin=True)
    assert [p.name for p in first] == ["report.json", "report.md", *PLOTS, "twin.png"]
    assert_same_files(first, second)
    assert first[-1].read_bytes().startswith(PNG_SIGNATURE)
    md = first[1].read_text(encoding="utf-8")
    assert "## Simulation vs emulation" in md and "](twin.png)" in md
    assert "1 of 2 bounds fail." in md
    assert "| latency p50 ratio | ≤ ×3 | 0.4 | 0.7 | pass |" in md and "**FAIL**" in md and "| pass |" in md
    # latency p50: 0.4 s simulated, 0.7 s emulated (0.3 s later)
    assert "| Requests: Latency p50 | 400 ms | 700 ms | ×1.75 |" in md
    assert "| Requests: Success rate (of ended) | 66.7 % | 66.7 % | +0.0 pp |" in md
    data = json.loads(first[0].read_text(encoding="utf-8"))
    assert set(data["emulation"]) == {"simulated", "emulated", "bounds"}


def test_an_empty_run_still_reports(tmp_path):
    summary = summarize(Observations(duration_s=30, sample_s=10))
    empty_twin = {"simulated": summary, "emulated": None}
    paths = write_report(tmp_path, scenario=make_scenario(), seed=1, summary=summary, twin=empty_twin)
    assert all(p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"| Latency p50 | {DASH} |" in md
    assert "No request ended in an error." in md and "No bounds were checked." in md


def test_the_same_bytes_from_another_process(with_twin, tmp_path):
    here = with_twin
    code = (
        "import sys; from pathlib import Path; from tests.test_sim_report import write; "
        "write(Path(sys.argv[1]), twin=True)"
    )
    # A different hash seed and locale: neither may reach the files.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "LC_ALL": "C.UTF-8"}
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], cwd=root, env=env, check=True, timeout=120)
    assert_same_files(here, [tmp_path / "there" / p.name for p in here])


def test_the_callers_matplotlib_settings_neither_reach_nor_change(plain, tmp_path):
    import matplotlib

    with matplotlib.rc_context({"font.size": 20, "lines.linewidth": 5, "axes.grid": False, "text.parse_math": True}):
        before = dict(matplotlib.rcParams)
        paths = write(tmp_path)
        assert dict(matplotlib.rcParams) == before
    assert_same_files(plain, paths)
