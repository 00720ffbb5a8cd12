"""``garage doctor``: what is wrong with this peer, and how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..runtime.cdi import CDI_DIRS, GENERATE, GPU_KIND, GpuSpec, nvidia_cdi_specs
from .client import ApiOption, JsonOption, get, print_json
from .common import HomeOption


def diagnose(status: dict[str, Any], cdi: list[GpuSpec] | None = None) -> list[dict[str, str]]:
    """Checks as (check, state ok|warn|fail, detail, fix); ``cdi``: this machine's GPU CDI specs, None: unchecked."""
    checks: list[dict[str, str]] = []

    def add(check: str, state: str, detail: str, fix: str = "") -> None:
        checks.append({"check": check, "state": state, "detail": detail, "fix": fix})

    reach = status["reachability"]
    observed = ", ".join(status.get("observed_addrs") or []) or "none yet"
    if reach == "public":
        add("reachability", "ok", f"public (others see us at {observed})")
    elif reach == "private":
        add(
            "reachability",
            "ok" if status["relay_reservations"] else "fail",
            f"behind NAT (others see us at {observed})",
            ""
            if status["relay_reservations"]
            else "no relay reservation: bootstrap from a peer that runs `garage-peer --relay`",
        )
    else:
        add(
            "reachability",
            "warn",
            "unknown: no peer has reported our address yet",
            "connect to at least one peer (--bootstrap)",
        )
    if status["relay_reservations"]:
        add(
            "relays",
            "ok",
            f"{len(status['relay_reservations'])} reservation(s): " + " ".join(status["relay_reservations"].values()),
        )
    elif reach == "private":
        add(
            "relays",
            "fail",
            f"none ({status['known_relays']} relays known)",
            "add a relay to --bootstrap, or open a port on the router",
        )
    if status["connections"] == 0:
        add("connections", "fail", "connected to no peer", "pass --bootstrap MULTIADDR/p2p/ID, or enable mDNS on a LAN")
    else:
        add("connections", "ok", f"{status['connections']} connected, {status['known_peers']} known")
    if status["dht_table_size"] == 0:
        add(
            "dht",
            "warn",
            f"{status['dht_mode']} mode, empty routing table",
            "it fills from connected DHT servers; check --bootstrap",
        )
    else:
        add("dht", "ok", f"{status['dht_mode']} mode, {status['dht_table_size']} peers in the routing table")
    for backend in status["backends"]:
        if backend["healthy"]:
            add(f"backend {backend['model']}", "ok", f"{backend['url']} serves {backend['backend_model']}")
        else:
            add(
                f"backend {backend['model']}",
                "fail",
                f"{backend['url']} is not answering",
                "start the model server (vLLM), or fix --backend NAME=URL",
            )
    limits = (status.get("runtime") or {}).get("limits")
    if limits is not None:
        # The container runs only with its memory, pids and CPU limits (runtime/rootless.py).
        add("container limits", "ok" if limits["ok"] else "fail", limits["detail"], limits["fix"])
    hardware = status["hardware"]
    driver = status.get("driver_version")
    if hardware == "cpu":
        add(
            "gpu",
            "warn" if status["backends"] else "ok",
            "no NVIDIA GPU found (nvidia-smi absent or failing)",
            "install the NVIDIA driver so nvidia-smi works" if status["backends"] else "",
        )
    else:
        add("gpu", "ok", f"{hardware}, driver {driver or 'unknown'}")
        if cdi is not None:
            _check_cdi(add, cdi)
    owner = status.get("owner")
    if status.get("not_serving"):
        resume = owner.get("resume_in_s") if owner else None
        add(
            "serving",
            "warn",
            status["not_serving"] + (f" (serving again in {resume:.0f} s if nothing changes)" if resume else ""),
        )
    skewed = status.get("clock_skew") or {}
    if skewed:
        add(
            "clocks",
            "warn",
            "; ".join(f"peer {peer}'s clock is off by {skew:+d} s" for peer, skew in sorted(skewed.items())[:5]),
            "their ads are dropped: enable NTP there (or here, if many peers look off)",
        )
    else:
        add("clocks", "ok", "every peer's ads arrive within their time")
    if status.get("duplicate_identity_at"):
        add(
            "identity",
            "fail",
            "another peer signs ads with this identity, at " + ", ".join(status["duplicate_identity_at"]),
            "every rig needs its own HOME/identity.key: move the copy away and run `garage init` there",
        )
    else:
        add("identity", "ok", status["peer_id"])
    return checks


def _check_cdi(add, specs: list[GpuSpec]) -> None:
    """A GPU reaches the model container only through a CDI spec (runtime/cdi.py)."""
    if not specs:
        add("gpu cdi", "fail", f"no {GPU_KIND} CDI spec in {' or '.join(map(str, CDI_DIRS))}", GENERATE)
        return
    spec = specs[0]
    if "all" not in spec.devices:
        add("gpu cdi", "warn", f"{spec.path} has no device 'all' (--gpus all fails)", f"regenerate it: {GENERATE}")
    else:
        add("gpu cdi", "ok", f"{spec.path}: {GPU_KIND}=" + ",".join(spec.devices[:8]))


def doctor(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """Check reachability, relays, DHT, backends, GPU and identity; exit 1 on any failure."""
    checks = diagnose(get(api, home, "/garage/v1/status"), nvidia_cdi_specs())
    if json_output:
        print_json(checks)
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            typer.echo(f"[{marks[c['state']]}] {c['check']}: {c['detail']}")
            if c["fix"]:
                typer.echo(f"       fix: {c['fix']}")
    if any(c["state"] == "fail" for c in checks):
        raise typer.Exit(1)
