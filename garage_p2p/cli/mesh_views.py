"""``garage status``, ``garage peers``, ``garage models``, ``garage route``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .client import ApiOption, JsonOption, call, get, print_json, print_table
from .common import HomeOption, fail


def _short(peer_id: str) -> str:
    return peer_id[:8] + "…" + peer_id[-6:]


def status(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """This peer: id, addresses, reachability, connections, DHT, models, backends."""
    data = get(api, home, "/garage/v1/status")
    if json_output:
        return print_json(data)
    typer.echo(f"peer        {data['peer_id']}")
    typer.echo(f"api         {data['api_url']}")
    for addr in data["addrs"]:
        typer.echo(f"listening   {addr}")
    typer.echo(f"reachability {data['reachability']}   region {data['region'] or '-'}   hardware {data['hardware']}")
    typer.echo(
        f"connections {data['connections']}   known peers {data['known_peers']}   DHT {data['dht_mode']} "
        f"({data['dht_table_size']} in table)"
    )
    counts = data.get("connection_counts")
    if counts:
        typer.echo(
            f"            {counts['open']} open ({counts['draining']} duplicates closing); last minute "
            f"{counts['opened_last_minute']} opened, {counts['closed_last_minute']} closed"
        )
    typer.echo(f"in flight   {data['in_flight']}{'   DRAINING' if data['draining'] else ''}")
    if data.get("not_serving"):
        owner = data.get("owner") or {}
        resume = owner.get("resume_in_s")
        typer.echo(f"serving     no: {data['not_serving']}" + (f" (again in {resume:.0f} s)" if resume else ""))
    led = data["ledger"]
    typer.echo(
        f"ledger      {led['entries']} entries from {led['authors']} authors; own log {led['own_seq']}; GPU-h given "
        f"{led['contributed_gpu_hours']:.6f}, used {led['consumed_gpu_hours']:.6f}"
    )
    if data.get("runtime"):
        rt = data["runtime"]
        typer.echo(f"runtime     {rt['container']} ({rt['image']}): {rt['state']}, {rt['restarts']} restarts")
    for backend in data["backends"]:
        state = "healthy" if backend["healthy"] else "DOWN"
        typer.echo(f"backend     {backend['model']} → {backend['url']} ({state})")


def peers(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """Peers this peer knows: connection, RTT, models, GPU, load, claimed vs delivered speed, last seen."""
    data = get(api, home, "/garage/v1/peers")["peers"]
    if json_output:
        return print_json(data)
    rows = []
    for p in data:
        load = ", ".join(f"{m}:{int(v['running'] + v['waiting'])}+{v['in_flight']}" for m, v in p["load"].items())
        rtt = None if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f} ms"
        flags = ["LEDGER-FORK"] if p["ledger_flagged"] else []
        if p["cosign_refusals"]:
            flags.append(f"unsigned:{p['cosign_refusals']}")
        if p.get("refuted"):
            flags.append("REFUTED")
        checks = p.get("checks")
        if checks:
            flags.append(f"checks:{checks['passed']}ok/{checks['refuted']}bad/{checks['inconclusive']}?")
        if p.get("overclaims"):
            flags.append("OVERCLAIMS")
        rows.append(
            [
                _short(p["peer_id"]),
                p["connection"],
                rtt,
                ",".join(p["models"]) or None,
                p["hardware"],
                load or None,
                p["region"],
                _speeds(p.get("delivery", {})),
                f"{p['last_seen_s']:.0f}s ago",
                " ".join(flags) or None,
            ]
        )
    print_table(
        [
            "PEER",
            "CONN",
            "RTT",
            "MODELS",
            "HARDWARE",
            "LOAD",
            "REGION",
            "TOK/S, TTFT CLAIMED→DELIVERED",
            "SEEN",
            "FLAGS",
        ],
        rows,
    )


def _speeds(delivery: dict[str, dict]) -> str | None:
    """Per model: claimed → delivered tokens/s and TTFT (``-`` where unknown; ``!`` overclaims)."""

    def num(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.0f}{unit}"

    parts = [
        f"{model}:{num(d['claimed_tps'], '')}→{num(d['delivered_tps'], '')} "
        f"{num(d['claimed_ttft_ms'], 'ms')}→{num(d['delivered_ttft_ms'], 'ms')}{'!' if d['overclaims'] else ''}"
        for model, d in delivery.items()
    ]
    return ", ".join(parts) or None


def bans(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """Peers banned now for repeated faults: time left, faults per service, the last one."""
    data = get(api, home, "/garage/v1/bans")["bans"]
    if json_output:
        return print_json(data)
    rows = [
        [
            _short(b["peer"]),
            f"{b['remaining_s']:.0f}s",
            " ".join(f"{service}:{n}" for service, n in sorted(b["faults"].items())),
            b["last_reason"],
        ]
        for b in data
    ]
    print_table(["PEER", "LEFT", "FAULTS", "LAST"], rows)


def models(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """Models in the mesh: providers and their total benchmarked capacity."""
    data = get(api, home, "/garage/v1/models")["models"]
    if json_output:
        return print_json(data)
    rows = [
        [
            m["model"],
            len(m["providers"]),
            f"{m['aggregate_tps']:.0f} tok/s" if m["aggregate_tps"] else None,
            int(m["running"]),
            m["context_length"],
        ]
        for m in data
    ]
    print_table(["MODEL", "PROVIDERS", "CAPACITY", "RUNNING", "CONTEXT"], rows)


def route(
    model: str = typer.Argument(..., help="The model to route."),
    tokens: int = typer.Option(256, "--tokens", help="Expected output tokens."),
    region: str | None = typer.Option(None, "--region", help="As the x-garage-region header."),
    peer: str | None = typer.Option(None, "--peer", help="As the x-garage-peer header."),
    path: str = typer.Option("/v1/chat/completions", "--path", help="The endpoint path, e.g. /v1/embeddings."),
    request: Path | None = typer.Option(
        None, "--request", help="A chat or completions request body (JSON): show its cache affinity."
    ),
    home: Path | None = HomeOption,
    api: str | None = ApiOption,
    json_output: bool = JsonOption,
) -> None:
    """How this peer would route a request: every provider with its score, and the affinity."""
    params = {"model": model, "tokens": tokens, "region": region or "", "peer": peer or "", "path": path}
    if request is None:
        data = get(api, home, "/garage/v1/route", params)
    else:
        try:
            body = json.loads(request.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read the request body {request}: {exc}")
        data = call("POST", api, home, "/garage/v1/route", params, body=body)
    if json_output:
        return print_json(data)
    rows = []
    for c in data["candidates"]:
        parts = " ".join(f"{k}={v:.3f}" for k, v in c["parts"].items() if v)
        rows.append(
            [
                _short(c["peer_id"]),
                f"{c['estimate_s']:.3f} s",
                f"{c['load']:g}",
                "yes" if c["eligible"] else f"no: {c['reason']}",
                parts,
            ]
        )
    if not rows:
        typer.echo(f"no provider of {model} is known")
        return
    print_table(["PROVIDER", "ESTIMATE", "LOAD", "ELIGIBLE", "TERMS"], rows)
    affinity = data["affinity"]
    if not affinity["keys"]:
        typer.echo("affinity: none (give --request BODY.json to see a request's)")
        return
    wanted = _short(affinity["provider"]) if affinity["provider"] else "none"
    matched = f"key {affinity['matched']}" if affinity["matched"] else "no key learned, hashed"
    verdict = "honoured" if affinity["honoured"] else "not honoured"
    typer.echo(f"affinity: {matched} → {wanted}, {verdict}: {affinity['reason']}")
    keys = affinity["keys"]
    shown = ", ".join(keys[:4]) + (f", … ({len(keys)} in all)" if len(keys) > 4 else "")
    typer.echo(f"  keys looked up, most specific first: {shown}")
