"""``garage ledger show|log|verify|export``: the ledger as this peer holds it.

These read ``HOME/ledger.sqlite`` directly (read-only; SQLite's WAL lets them
run beside a live daemon), so they work whether or not the daemon runs.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from enum import StrEnum
from pathlib import Path

import typer

from ..core.credit import credit_view
from ..core.errors import PeerFault
from ..core.ledger import LedgerState, decode_entry
from ..ledger.views import RECEIPT_COLUMNS, balances_view, counted_rows, verify_entries
from ..store.identity_file import IdentityFileError, key_path, load_identity
from ..store.ledger_store import LedgerStore
from .client import JsonOption, print_json, print_table
from .common import HomeOption, fail, resolve_home

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="The GPU-hours ledger: balances, entries, verification, export."
)
PeerOption = typer.Option(None, "--peer", help="Only this peer (a peer id).")
ViewerOption = typer.Option(
    None, "--viewer", help="Weigh credit as this peer sees it (a peer id; default: this home's identity)."
)


def _store(home: Path | None) -> LedgerStore:
    path = resolve_home(home) / "ledger.sqlite"
    try:
        return LedgerStore(path, readonly=True)
    except (FileNotFoundError, sqlite3.Error):
        fail(f"no ledger at {path}: start `garage-peer` once to create it, or pass --home")


def _blobs(home: Path | None) -> list[bytes]:
    store = _store(home)
    try:
        return list(store.entries())
    except sqlite3.Error as exc:
        fail(f"cannot read the ledger: {exc}")
    finally:
        store.close()


def _state(home: Path | None) -> LedgerState:
    state = LedgerState()
    for blob in _blobs(home):
        try:
            state.add(decode_entry(blob, check_signatures=False))
        except PeerFault as exc:
            fail(f"the ledger holds a malformed entry ({exc}): run `garage ledger verify`")
    return state


def _viewer(home: Path | None) -> str | None:
    """This home's peer id, whose eyes credit is weighed with; None if it has no identity yet."""
    home = resolve_home(home)
    if not key_path(home).exists():
        return None
    try:
        return load_identity(home).peer_id
    except IdentityFileError as exc:
        fail(str(exc))


def _short(peer_id: str) -> str:
    return peer_id[:8] + "…" + peer_id[-6:]


@app.command("show")
def show(
    peer: str | None = PeerOption,
    viewer: str | None = ViewerOption,
    home: Path | None = HomeOption,
    json_output: bool = JsonOption,
) -> None:
    """Balances: GPU-hours contributed (verified, unverified, refuted) and consumed, per peer and per model."""
    state = _state(home)
    view = balances_view(state, peer, credit_view(state, viewer or _viewer(home)))
    if json_output:
        return print_json(view)
    if not view["peers"]:
        typer.echo("the ledger holds no receipts" + (f" of {peer}" if peer else ""))
        return
    rows = [
        [
            _short(p["peer_id"]),
            f"{p['contributed']['gpu_hours']:.6f}",
            f"{p['verified']['gpu_hours']:.6f}",
            f"{p['unverified']['gpu_hours']:.6f}",
            f"{p['refuted']['gpu_hours']:.6f}",
            f"{p['consumed']['gpu_hours']:.6f}",
            f"{p['net_gpu_hours']:+.6f}",
            p["contributed"]["tokens"],
            p["consumed"]["tokens"],
            p["contributed"]["requests"],
            p["consumed"]["requests"],
            " ".join(f for f, on in (("FORKED", p["flagged"]), ("CONTRIBUTOR", p["contributor"])) if on),
        ]
        for p in view["peers"]
    ]
    typer.echo(f"credit as {view['viewer'] or 'no one (no identity in this home)'} sees it")
    print_table(
        [
            "PEER",
            "GPU-H GIVEN",
            "VERIFIED",
            "UNVERIFIED",
            "REFUTED",
            "GPU-H USED",
            "NET",
            "TOK SERVED",
            "TOK USED",
            "REQ SERVED",
            "REQ USED",
            "FLAG",
        ],
        rows,
    )
    typer.echo("")
    print_table(
        ["MODEL", "REQUESTS", "TOKENS", "GPU-HOURS"],
        [[m["model"], m["requests"], m["tokens"], f"{m['gpu_hours']:.6f}"] for m in view["models"]],
    )


@app.command("log")
def log(
    peer: str | None = PeerOption,
    limit: int = typer.Option(50, "--limit", min=1, help="Newest entries to show."),
    home: Path | None = HomeOption,
    json_output: bool = JsonOption,
) -> None:
    """Counted entries (receipts), newest last."""
    rows = sorted(counted_rows(_state(home), peer), key=lambda r: (r["end_ms"], r["author"], r["seq"]))[-limit:]
    if json_output:
        return print_json(rows)
    print_table(
        ["PROVIDER", "SEQ", "CONSUMER", "MODEL", "PROMPT", "COMPLETION", "GPU-S", "REQUEST"],
        [
            [
                _short(r["provider"]),
                r["seq"],
                _short(r["consumer"]),
                r["model"],
                r["prompt_tokens"],
                r["completion_tokens"],
                f"{r['gpu_seconds']:.3f}",
                r["request_id"],
            ]
            for r in rows
        ],
    )


@app.command("verify")
def verify(home: Path | None = HomeOption, json_output: bool = JsonOption) -> None:
    """Re-verify every signature and chain; report forks, duplicates, over-claimed GPU time. Exits 1 on any problem."""
    report = verify_entries(_blobs(home))
    if json_output:
        print_json(report.as_dict())
    else:
        typer.echo(f"checked {report.entries} entries from {report.authors} authors")
        for problem in report.invalid:
            typer.echo(f"invalid entry: {problem}")
        for fork in report.forks:
            proof = ", ".join(h[:16] for h in fork["proof"])
            typer.echo(
                f"fork: {fork['author']} at seq {fork['seq']} (counted up to {fork['counted_up_to']}; proof {proof})"
            )
        for author, n in report.duplicates.items():
            typer.echo(f"duplicate receipts: {author} logged {n} receipts twice")
        for o in report.overclaims:
            typer.echo(
                f"over-claim: {o['author']} claims {o['claimed_us'] / 1e6:.3f} GPU-s "
                f"in a period allowing {o['limit_us'] / 1e6:.3f}"
            )
        typer.echo("ok" if report.ok else "PROBLEMS FOUND")
    if not report.ok:
        raise typer.Exit(1)


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


@app.command("export")
def export(
    format: ExportFormat = typer.Option(ExportFormat.jsonl, "--format", help="jsonl or csv."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
    peer: str | None = PeerOption,
    home: Path | None = HomeOption,
) -> None:
    """Every counted receipt, one per line (JSON Lines) or row (CSV)."""
    rows = counted_rows(_state(home), peer)
    try:
        out = output.open("w", newline="") if output else sys.stdout
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")
    try:
        if format is ExportFormat.csv:
            writer = csv.DictWriter(out, fieldnames=RECEIPT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
    finally:
        if output:
            out.close()
