"""``garage drain``, ``garage resume``, ``garage runtime status|logs|restart|build-image|copy-image|check-limits``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..runtime.images import (
    ImageBuildError,
    build_base,
    build_gpu,
    build_standin,
    build_vllm_cpu,
    copy_to_user,
)
from ..runtime.rootless import check_limits, check_this_process
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
    for_user: str | None = typer.Option(
        None, "--for-user", help="Also load it into this user's rootless storage (the service's user, as root)."
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
    if for_user is not None:
        copy_image(results[-1].image, for_user)


@app.command("copy-image")
def copy_image(
    image: str = typer.Argument(..., help="An image in root's Podman storage."),
    to_user: str = typer.Option(..., "--to-user", help="The user whose rootless Podman runs the model (garage)."),
) -> None:
    """Load an image of root's into a user's rootless Podman storage (as root; skipped if there already)."""
    try:
        copied = copy_to_user(image, to_user)
    except (ImageBuildError, KeyError) as exc:  # KeyError: no such user
        fail(str(exc))
    typer.echo(f"{image}: {'already in' if copied.cached else 'loaded into'} {to_user}'s Podman storage")


@app.command("check-limits")
def check_limits_command(
    for_unit: bool = typer.Option(
        False, "--for-unit", help="Judge the host for a rootless unit with Delegate= (start.sh, before it runs)."
    ),
) -> None:
    """Would Podman enforce the container's memory, pids and CPU limits? One line; exit 1 if not."""
    check = check_limits(rootless=True) if for_unit else check_this_process()
    typer.echo(check.line)
    if not check.ok:
        raise typer.Exit(1)
