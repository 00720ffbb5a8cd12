"""``garage job submit|status|results|cancel|list``: batch jobs in the OpenAI Batch file format."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from .client import ApiOption, JsonOption, call, get, post, print_json, print_table
from .common import HomeOption, fail

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Batch jobs spread over the mesh (OpenAI Batch API file format)."
)


def _bar(p: dict) -> str:
    width = 30
    filled = int(width * p["done"] / max(1, p["total"]))
    eta = f"{p['eta_s']:.0f}s" if p.get("eta_s") is not None else "-"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {p['done']}/{p['total']} done, {p['failed']} failed, "
        f"{p['in_flight']} in flight, {p['tokens_per_s']:.0f} tok/s, ETA {eta}"
    )


def _write_output(api: str | None, home: Path | None, job_id: str, output: Path) -> tuple[int, int]:
    counts = []
    for kind, path in (("results", output), ("errors", output.with_name(output.stem + ".errors" + output.suffix))):
        content = call("GET", api, home, f"/garage/v1/jobs/{job_id}/output", {"kind": kind}, timeout=120, text=True)
        try:
            path.write_text(content)
        except OSError as exc:
            fail(f"cannot write {path}: {exc}")
        counts.append(content.count("\n"))
    return counts[0], counts[1]


@app.command("submit")
def submit(
    input: Path = typer.Option(..., "--input", "-i", help="The batch file (JSONL: custom_id, method, url, body)."),
    model: str | None = typer.Option(None, "--model", help="Run every line on this model (overrides body.model)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="With --wait: write results here (errors beside it)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Show progress until the job ends."),
    shard_size: int = typer.Option(50, "--shard-size", min=1, max=1000, help="Lines per shard (one lease)."),
    max_providers: int | None = typer.Option(
        None, "--max-providers", min=1, help="At most this many providers at once."
    ),
    deadline: float | None = typer.Option(None, "--deadline", min=1, help="Seconds until unfinished lines fail."),
    home: Path | None = HomeOption,
    api: str | None = ApiOption,
) -> None:
    """Submit a batch; prints the job id (with --wait: a progress bar, then the output files)."""
    # The file is streamed as it is, options in the query string: the daemon spools it to disk
    # without holding or parsing it whole (a JSON {"input": text} body would be both).
    options = {"model": model, "shard_size": shard_size, "max_providers": max_providers, "deadline_s": deadline}
    try:
        progress = call(
            "POST",
            api,
            home,
            "/garage/v1/jobs",
            {k: v for k, v in options.items() if v is not None},
            upload=input,
            content_type="application/jsonl",
            timeout=120,
        )
    except OSError as exc:
        fail(f"cannot read {input}: {exc}")
    job_id = progress["id"]
    if not wait:
        typer.echo(job_id)
        return
    typer.echo(f"{job_id}: {progress['total']} lines of {progress['model']} in {progress['shards']} shards", err=True)
    tty = sys.stderr.isatty()
    last = ""
    while progress["status"] == "running":
        time.sleep(0.5)
        progress = get(api, home, f"/garage/v1/jobs/{job_id}")
        line = _bar(progress)
        if tty:
            typer.echo("\r" + line, nl=False, err=True)
        elif line != last:
            typer.echo(line, err=True)
        last = line
    typer.echo(
        ("\n" if tty else "")
        + f"{job_id} {progress['status']}: {progress['succeeded']} succeeded, {progress['failed']} failed",
        err=True,
    )
    if output is not None:
        ok, errors = _write_output(api, home, job_id, output)
        typer.echo(f"wrote {ok} results to {output} and {errors} errors beside it", err=True)
    typer.echo(job_id)


@app.command("status")
def status(
    job_id: str, home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption
) -> None:
    """A job's progress."""
    progress = get(api, home, f"/garage/v1/jobs/{job_id}")
    if json_output:
        return print_json(progress)
    typer.echo(f"{progress['id']} {progress['status']} ({progress['model']})")
    typer.echo(_bar(progress))


@app.command("results")
def results(
    job_id: str,
    output: Path = typer.Option(..., "--output", "-o", help="Results file (errors go beside it)."),
    home: Path | None = HomeOption,
    api: str | None = ApiOption,
) -> None:
    """Write a job's output (OpenAI batch output format) and its errors file."""
    ok, errors = _write_output(api, home, job_id, output)
    typer.echo(f"wrote {ok} results to {output} and {errors} errors beside it")


@app.command("cancel")
def cancel(job_id: str, home: Path | None = HomeOption, api: str | None = ApiOption) -> None:
    """Cancel a job: lines not yet done end as errors."""
    progress = post(api, home, f"/garage/v1/jobs/{job_id}/cancel")
    typer.echo(f"{job_id} {progress['status']}: {progress['succeeded']} succeeded, {progress['failed']} failed")


@app.command("list")
def listing(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """This peer's jobs."""
    jobs = get(api, home, "/garage/v1/jobs")["jobs"]
    if json_output:
        return print_json(jobs)
    print_table(
        ["JOB", "STATUS", "MODEL", "DONE", "FAILED", "TOTAL"],
        [[j["id"], j["status"], j["model"], j["done"], j["failed"], j["total"]] for j in jobs],
    )
