"""``garage bench``: measure this peer's backends and keep the figures for its ads."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
import typer

from ..core.capabilities import Benchmark
from ..runtime.bench import BenchError, resolve_model, run_benchmark
from ..settings import SettingsError, load_settings, parse_backend
from ..store.bench_store import bench_path, save_benchmark
from .client import aligned, post
from .common import HomeOption, fail, resolve_home

BackendOption = typer.Option(
    None,
    "--backend",
    metavar="NAME=URL",
    help="Model NAME served at OpenAI base URL (repeatable; default: the peer's configured backends).",
)


def _backends(home: Path | None, specs: list[str] | None) -> dict[str, str]:
    """The backends to measure: from --backend, else from the peer's settings."""
    try:
        if specs:
            pairs = [parse_backend(spec) for spec in specs]
            for name, url in pairs:
                if not url.startswith(("http://", "https://")):
                    raise SettingsError(f"backend {name}: {url!r} is not an http(s) URL")
            return dict(pairs)
        return load_settings({"home": home}).backends
    except SettingsError as exc:
        fail(str(exc))


async def _measure(
    backends: dict[str, str], concurrency: int, max_tokens: int, home: Path
) -> tuple[dict[str, Benchmark], list[str]]:
    """Benchmark each backend in turn, saving each result; (results, one error line per failure)."""
    results: dict[str, Benchmark] = {}
    errors: list[str] = []
    async with httpx.AsyncClient() as client:
        for name, url in backends.items():
            try:
                served = await resolve_model(client, url, name)
                typer.echo(f"benchmarking {name} at {url}: single streams, then {concurrency} at once…", err=True)
                result = await run_benchmark(client, url, served, concurrency=concurrency, max_tokens=max_tokens)
            except BenchError as exc:
                errors.append(f"backend {name}: {exc}")
                continue
            try:
                save_benchmark(home, name, result)
            except OSError as exc:
                errors.append(f"cannot save to {bench_path(home)}: {exc.strerror or exc}")
            results[name] = result
    return results, errors


def format_table(results: dict[str, Benchmark]) -> str:
    """The results as an aligned text table, one row per model."""
    concurrency = {b.concurrency for b in results.values()}
    at = f" @{concurrency.pop()}" if len(concurrency) == 1 else ""
    header = ["model", "single-stream tok/s", f"aggregate tok/s{at}", "TTFT p50"]
    rows = [
        [
            name,
            f"{b.single_stream_tps:.1f}",
            f"{b.aggregate_tps:.1f}" + ("" if at else f" @{b.concurrency}"),
            f"{b.ttft_p50_ms:.0f} ms",
        ]
        for name, b in results.items()
    ]
    return aligned(header, rows)


def _tell_running_peer(home: Path) -> None:
    """A peer running in HOME advertises the new figures now, not at its next start."""
    if not (home / "run" / "peer.json").exists():
        typer.echo("no peer is running in this HOME: it advertises the figures when it starts", err=True)
        return
    try:
        advertised = post(None, home, "/garage/v1/bench/reload", timeout=10)
    except typer.Exit:  # the error is printed; the figures are saved all the same
        typer.echo("the figures are saved; the peer advertises them when it starts again", err=True)
        return
    typer.echo(
        f"the running peer now advertises the benchmarks of: {', '.join(sorted(advertised)) or 'none'}", err=True
    )


def bench(
    home: Path | None = HomeOption,
    backend: list[str] | None = BackendOption,
    concurrency: int = typer.Option(
        8, "--concurrency", min=1, max=4096, help="Parallel streams for the aggregate figure."
    ),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, max=100_000, help="Tokens each request generates."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON (model → benchmark) instead of a table."),
) -> None:
    """Measure each backend's speed (tokens/s alone and under load, time to first token).

    The figures are saved in HOME/bench.json; the peer puts them in its ads so that
    others can route to it well (a peer running in HOME is told to, at once).
    """
    backends = _backends(home, backend)
    if not backends:
        fail("no backend to benchmark: pass --backend NAME=URL or configure backends for the peer")
    target_home = resolve_home(home)
    try:
        results, errors = trio.run(_measure, backends, concurrency, max_tokens, target_home)
    except KeyboardInterrupt:
        fail("interrupted; results measured so far are saved", 130)
    if results:
        if json_output:
            typer.echo(json.dumps({name: b.model_dump(mode="json") for name, b in results.items()}, indent=2))
        else:
            typer.echo(format_table(results))
    if results:
        _tell_running_peer(target_home)
    if errors:
        for line in errors[:-1]:
            typer.echo(f"error: {line}", err=True)
        fail(errors[-1])
