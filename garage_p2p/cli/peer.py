"""``garage-peer``: run the daemon in the foreground.

The daemon's modules (trio, libp2p, the HTTP stack: ~0.85 CPU-s, most of a start) are imported
by ``main_command``, not here: in garage-peer's own process, the garbage collector is paused first
(``collect_after_start``) and modules the daemon never uses are kept out (``import_policy``).
"""

from __future__ import annotations

import gc
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from .common import HomeOption, fail, setup_logging
from .import_policy import keep_unused_modules_out

if TYPE_CHECKING:
    from ..settings import Settings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

_own_process = False
"""Set by ``main``: this is garage-peer's own process, not a test calling the command in-process
(whose collector and imports are left as they are)."""


def collect_after_start() -> None:
    """Turn the collector back on once the peer is ready (``main`` paused it).

    A start allocates ~200,000 objects that live as long as the process (modules, classes, the
    host): collections during it found almost nothing to free (~3,500 objects) and cost every
    start ~0.1 CPU-s, which each peer joining a mesh pays. ``gc.freeze`` keeps them out of every
    later collection too; the few cycles already dead then are never freed (well under 1 MiB)."""
    if _own_process:
        gc.freeze()
        gc.enable()


async def run_peer(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain; a second signal stops at once."""
    import trio

    from ..daemon import open_peer

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_peer(settings) as peer:
            collect_after_start()
            await signals.__anext__()
            async with trio.open_nursery() as nursery:

                async def second_signal() -> None:
                    await signals.__anext__()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(second_signal)
                await peer.shutdown()
                nursery.cancel_scope.cancel()


@app.command()
def main_command(
    home: Path | None = HomeOption,
    listen: list[str] = typer.Option(None, "--listen", help="libp2p listen multiaddr (repeatable)."),
    api: str | None = typer.Option(None, "--api", help="HOST:PORT of the OpenAI endpoint (default 127.0.0.1:8000)."),
    bootstrap: list[str] = typer.Option(
        None, "--bootstrap", help="MULTIADDR/p2p/ID of a peer to join through (repeatable)."
    ),
    backend: list[str] = typer.Option(
        None, "--backend", help="NAME=URL: serve model NAME from this OpenAI base URL (repeatable)."
    ),
    request_timeout: float | None = typer.Option(None, "--request-timeout", help="Seconds a request may take."),
    log_level: str | None = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    mdns: bool | None = typer.Option(None, "--mdns/--no-mdns", help="Find peers on the LAN with mDNS (default on)."),
    region: str | None = typer.Option(None, "--region", help="Advertised location, e.g. se-sto."),
    dht_mode: str | None = typer.Option(None, "--dht-mode", help="auto, server or client."),
    relay: bool | None = typer.Option(
        None, "--relay/--no-relay", help="Offer a circuit relay to peers behind NAT (public peers only)."
    ),
    peer_concurrency: int | None = typer.Option(
        None,
        "--peer-concurrency",
        min=1,
        help="Requests one consumer peer may run here at once (default: half of the slots).",
    ),
    peer_tpm: int | None = typer.Option(
        None, "--peer-tpm", min=1, help="Tokens per minute one consumer peer may use here (default unlimited)."
    ),
    allow_peer: list[str] = typer.Option(
        None, "--allow-peer", help="Deal only with these peers (repeatable): a closed group."
    ),
    deny_peer: list[str] = typer.Option(None, "--deny-peer", help="Never deal with this peer (repeatable)."),
    swarm_key: Path | None = typer.Option(
        None, "--swarm-key", help="A private mesh's swarm key file (default HOME/swarm.key if present)."
    ),
    require_keys: bool | None = typer.Option(
        None,
        "--require-keys/--no-require-keys",
        help="Ask for an API key even on 127.0.0.1 (any other --api address always does).",
    ),
    runtime_model: Path | None = typer.Option(
        None,
        "--model-dir",
        help=(
            "Serve this model (a directory, or a model id in the local Hugging Face cache) "
            "from a vLLM container run in Podman."
        ),
    ),
    runtime_name: str | None = typer.Option(
        None, "--model-name", help="The model's name in the mesh (default: the directory's name)."
    ),
    runtime_image: str | None = typer.Option(
        None, "--image", help="Server image (default localhost/garage-vllm-cpu:0.32.0)."
    ),
    runtime_gpus: str | None = typer.Option(None, "--gpus", help="'all', indices like '0,1', or '' for the CPU."),
    runtime_port: int | None = typer.Option(
        None, "--runtime-port", help="Loopback port for the container's server (default 8001)."
    ),
    podman_socket: Path | None = typer.Option(
        None, "--podman-socket", help="Use this Podman API socket instead of starting one."
    ),
    spot_check_rate: float | None = typer.Option(
        None, "--spot-check-rate", help="Share of received answers re-verified on another provider (0: none)."
    ),
) -> None:
    """Run the Garage P2P peer daemon in the foreground."""
    from ..settings import SettingsError, load_settings, parse_backend

    try:
        backends = dict(parse_backend(b) for b in backend or [])
        settings = load_settings(
            {
                "home": home,
                "listen": listen or None,
                "api": api,
                "bootstrap": bootstrap or None,
                "backends": backends or None,
                "request_timeout": request_timeout,
                "log_level": log_level,
                "mdns": mdns,
                "region": region,
                "dht_mode": dht_mode,
                "relay": relay,
                "peer_concurrency": peer_concurrency,
                "peer_tpm": peer_tpm,
                "allow_peers": allow_peer or None,
                "deny_peers": deny_peer or None,
                "swarm_key": swarm_key,
                "require_keys": require_keys,
                "runtime_model": runtime_model,
                "runtime_name": runtime_name,
                "runtime_image": runtime_image,
                "runtime_gpus": runtime_gpus,
                "runtime_port": runtime_port,
                "podman_socket": podman_socket,
                "spot_check_rate": spot_check_rate,
            }
        )
    except SettingsError as exc:
        fail(str(exc))
    if _own_process:
        keep_unused_modules_out(runtime=settings.runtime_model is not None)
    import trio

    from ..mesh.patches import LibraryPatchError
    from ..runtime.podman_service import PodmanUnavailable
    from ..store.identity_file import IdentityFileError
    from ..trio_util import single_exceptions

    setup_logging(settings.log_level)
    try:
        with single_exceptions():
            trio.run(run_peer, settings)
    except (IdentityFileError, LibraryPatchError, PodmanUnavailable, SettingsError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.strerror or exc} (is another garage-peer using the same --api or --listen port?)")


def main() -> None:
    global _own_process
    _own_process = True
    gc.disable()  # until the peer is ready: collect_after_start
    app()


if __name__ == "__main__":
    main()
