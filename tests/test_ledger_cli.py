"""``garage ledger`` on a ledger file made here: balances, log, verify (and what it catches), export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.store.ledger_store import LedgerStore
from tools.ledger_builders import chain, entry, identity

A, B, C = identity("a"), identity("b"), identity("c")
runner = CliRunner()


def write(home, entries, raw_blobs=()):
    store = LedgerStore(home / "ledger.sqlite")
    store.add_entries([(e.author, e.seq, e.hash, e.encoded) for e in entries])
    store.add_entries([("x", i, bytes([i]) * 32, blob) for i, blob in enumerate(raw_blobs)])
    store.close()


def run(*args):
    return runner.invoke(app, ["ledger", *args])


def test_show_log_export_verify_on_a_clean_ledger(tmp_path):
    write(tmp_path, chain(A, B, 3) + chain(B, C, 2))
    home = ["--home", str(tmp_path)]
    result = run("show", "--json", *home)
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    by_peer = {p["peer_id"]: p for p in view["peers"]}
    assert by_peer[A.peer_id]["contributed"]["requests"] == 3
    assert by_peer[B.peer_id]["consumed"]["requests"] == 3 and by_peer[B.peer_id]["contributed"]["requests"] == 2
    assert by_peer[C.peer_id]["consumed"]["gpu_seconds"] == pytest.approx(1.0)
    table = run("show", *home).output
    assert "GPU-H GIVEN" in table and "tiny" in table
    only = json.loads(run("show", "--json", "--peer", C.peer_id, *home).output)
    assert [p["peer_id"] for p in only["peers"]] == [C.peer_id]

    log = json.loads(run("log", "--json", "--peer", A.peer_id, *home).output)
    assert [r["seq"] for r in log] == [1, 2, 3] and all(r["provider"] == A.peer_id for r in log)

    lines = run("export", "--format", "jsonl", *home).output.splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["model"] == "tiny"
    rows = list(csv.DictReader(io.StringIO(run("export", "--format", "csv", *home).output)))
    assert len(rows) == 5 and rows[0]["request_id"]
    out = tmp_path / "receipts.csv"
    assert run("export", "--format", "csv", "-o", str(out), *home).exit_code == 0
    assert out.read_text().count("\n") == 6

    result = run("verify", *home)
    assert result.exit_code == 0 and "checked 5 entries from 2 authors" in result.output and "ok" in result.output


def test_show_splits_contributed_time_as_a_viewer_sees_it(tmp_path):
    write(tmp_path, chain(A, B, 3) + chain(B, C, 2))
    # No identity in this home: no one's eyes, nothing verified.
    view = json.loads(run("show", "--json", "--home", str(tmp_path)).output)
    assert view["viewer"] is None and all(p["verified"]["gpu_seconds"] == 0 for p in view["peers"])
    # As C sees it: B served C 1 s; of A's 1.5 s for B, 1 s reached C through B.
    view = json.loads(run("show", "--json", "--viewer", C.peer_id, "--home", str(tmp_path)).output)
    by_peer = {p["peer_id"]: p for p in view["peers"]}
    assert {k: by_peer[A.peer_id][k]["gpu_seconds"] for k in ("verified", "unverified", "refuted")} == {
        "verified": pytest.approx(1.0),
        "unverified": pytest.approx(0.5),
        "refuted": 0,
    }
    assert by_peer[B.peer_id]["verified"]["gpu_seconds"] == pytest.approx(1.0)
    assert by_peer[A.peer_id]["contributor"] and not by_peer[C.peer_id]["contributor"]
    table = run("show", "--viewer", C.peer_id, "--home", str(tmp_path)).output
    assert f"credit as {C.peer_id} sees it" in table and "CONTRIBUTOR" in table


def test_verify_reports_forks_tampering_duplicates_and_overclaims(tmp_path):
    honest = chain(A, B, 3)
    fork = entry(A, C, 2, honest[0].hash, "other-history")
    tampered = bytearray(chain(B, C, 1)[0].encoded)
    tampered[-70] ^= 1  # inside the receipt: the author's signature no longer verifies
    dup1 = entry(C, A, 1, bytes(32), "same")
    dup2 = entry(C, A, 2, dup1.hash, "same")
    # Two receipts claiming the same second of one GPU in full: 2 GPU-s in 1 s.
    same_second = {"start_ms": 1_900_000_000_000, "end_ms": 1_900_000_001_000, "gpu_us": 1_000_000}
    greedy1 = entry(B, A, 1, bytes(32), "g1", **same_second)
    greedy2 = entry(B, A, 2, greedy1.hash, "g2", **same_second)
    write(tmp_path, honest + [fork, dup1, dup2, greedy1, greedy2], [bytes(tampered)])
    result = run("verify", "--json", "--home", str(tmp_path))
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert not report["ok"]
    assert report["forks"][0]["author"] == A.peer_id and report["forks"][0]["seq"] == 2
    assert len(report["forks"][0]["proof"]) == 2
    assert "author's signature" in report["invalid"][0]
    assert report["duplicates"] == {C.peer_id: 1}
    assert report["overclaims"][0]["author"] == B.peer_id
    text = run("verify", "--home", str(tmp_path)).output
    assert "fork:" in text and "PROBLEMS FOUND" in text


def test_no_ledger_is_a_one_line_error(tmp_path):
    result = run("show", "--home", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no ledger at") and "Traceback" not in result.output
