"""``garage``: the user's command line."""

from __future__ import annotations

import typer

from . import bench, demo, doctor, identity, jobs, keys, ledger, litellm, mesh_views, runtime, sim, swarm

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Garage P2P: pool GPUs into one OpenAI-compatible mesh.",
)
app.command("init")(identity.init)
app.command("status")(mesh_views.status)
app.command("peers")(mesh_views.peers)
app.command("models")(mesh_views.models)
app.command("bans")(mesh_views.bans)
app.command("route")(mesh_views.route)
app.command("bench")(bench.bench)
app.command("doctor")(doctor.doctor)
app.command("demo")(demo.demo)
app.command("litellm-config")(litellm.litellm_config)
app.add_typer(ledger.app, name="ledger")
app.command("drain")(runtime.drain)
app.command("resume")(runtime.resume)
app.add_typer(runtime.app, name="runtime")
app.add_typer(jobs.app, name="job")
app.add_typer(sim.app, name="sim")
app.add_typer(keys.app, name="keys")
app.add_typer(swarm.app, name="swarm-key")


@app.callback()
def _root() -> None:
    """Garage P2P: pool GPUs into one OpenAI-compatible mesh."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
