"""The peer's settings: defaults < HOME/config.toml < GARAGE_* variables < flags."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .core.owner_activity import parse_window

# TCP only. py-libp2p 0.8.1 dials QUIC first whenever a peer lists a QUIC address, and a QUIC
# connection has no yamux frames for liveness to watch (a frozen peer held it for aioquic's 600 s
# idle timeout), brings no hole punching (docs/platform.md) and keeps the library's inbound-slot
# behaviour (docs/library-patches.md). `--listen /ip4/0.0.0.0/udp/4001/quic-v1` opts in.
DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001",)


class SettingsError(Exception):
    """Settings that cannot be used; the message says which and why."""


def default_home() -> Path:
    return Path(os.environ.get("GARAGE_HOME") or Path.home() / ".garage")


class Settings(BaseModel):
    """Everything ``garage-peer`` can be told. The fields' docstrings are for readers (not parsed by
    pydantic: use_attribute_docstrings reads the module's source at import, ~0.05 CPU-s of every
    daemon start, for descriptions nothing reads)."""

    model_config = ConfigDict(extra="forbid")

    home: Path = Field(default_factory=default_home)
    """Where the identity, config and state live."""
    listen: list[str] = list(DEFAULT_LISTEN)
    """libp2p listen multiaddrs."""
    api: str = "127.0.0.1:8000"
    """HOST:PORT of the local OpenAI endpoint."""
    bootstrap: list[str] = []
    """Multiaddrs with /p2p/ of peers to join the mesh through."""
    backends: dict[str, str] = {}
    """Model name → OpenAI base URL of the local server that serves it."""
    request_timeout: float = Field(default=600.0, gt=0, le=3600)
    """Seconds a request may take end to end."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body the endpoint accepts."""
    max_concurrency: int = Field(default=64, ge=1)
    """Requests this peer serves at once, for all consumers together."""
    peer_concurrency: int | None = Field(default=None, ge=1)
    """Requests one consumer peer may have served at once (default: half of max_concurrency)."""
    peer_tpm: int | None = Field(default=None, ge=1)
    """Tokens per minute one consumer peer may use here (default: unlimited)."""
    ad_heartbeat: float = Field(default=300.0, gt=0, le=8 * 3600)
    """Shortest period of the capability ad heartbeat, in seconds; it stretches with the mesh and an ad
    also goes out at once when what it says changes (docs/discovery-and-routing.md)."""
    ledger_max_entries: int = Field(default=100_000, ge=1)
    """Others' ledger entries this peer holds in all (docs/ledger.md, Replication caps)."""
    ledger_max_seq: int = Field(default=25_000, ge=1)
    """How far into the log of a peer it has dealt with (directly or through a peer it dealt with) it replicates."""
    ledger_max_unknown_entries: int = Field(default=10_000, ge=0)
    """Entries of peers with no tie to this one, all together."""
    ledger_max_unknown_seq: int = Field(default=1_000, ge=0)
    """How far into the log of a peer with no tie to this one it replicates."""
    ledger_restore_timeout: float = Field(default=20.0, ge=0)
    """At start, seconds our own log stays closed (and other peers' requests are turned away) while no
    peer has told us its head, unless one holds a newer head: then until it is pulled back (docs/ledger.md)."""
    drain_timeout: float = Field(default=30.0, ge=0)
    """On shutdown, seconds in-flight requests get to finish."""
    log_level: str = "INFO"
    """Python logging level."""
    mdns: bool = True
    """Find and dial peers on the LAN with mDNS."""
    liveness: bool = True
    """Ping quiet connections and close those whose peer went silent, withdrawing its routes, within 10 s
    (off only to measure the difference: benchmarks/liveness.py)."""
    spot_check_rate: float = Field(default=0.025, ge=0, le=1)
    """Share of the answers this peer receives that it re-verifies on another provider of the model, off the
    request path (0: none). The default refutes a provider serving another model within its first 200
    temperature-0 answers with 99 % probability (docs/verification.md)."""
    cache_affinity: bool = True
    """Route requests that share a prefix to the provider whose cache holds it (core/affinity.py)."""
    dht_mode: Literal["auto", "server", "client"] = "auto"
    """Kademlia role: servers hold records; peers behind NAT should be clients."""
    region: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    """Self-declared location advertised to the mesh, e.g. ``se-sto``."""
    allow_peers: list[str] = []
    """If not empty, the only peers this peer connects to, serves and routes to (a closed group)."""
    deny_peers: list[str] = []
    """Peers this peer never connects to, serves or routes to."""
    swarm_key: Path | None = None
    """A private mesh's swarm key file (default: HOME/swarm.key when it exists); only peers with the same key
    connect."""
    require_keys: bool = False
    """Ask for an API key even on a loopback endpoint (any other address always does)."""
    relay: bool = False
    """Offer a circuit relay to peers behind NAT (for publicly reachable peers; on for bootstrap nodes)."""
    relay_seconds: int = Field(default=120, ge=1, le=86400)
    """A relay's limit on each relayed connection's life, in seconds (its other limit: 128 MiB); its users
    learn it from the relay's answer and move their streams before it (docs/discovery-and-routing.md)."""
    runtime_model: Path | None = None
    """Serve this model (a directory, or a model id already in the local Hugging Face cache) from a vLLM
    container the daemon runs in Podman."""
    runtime_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
    """The model's name in the mesh (default: the directory's name)."""
    runtime_image: str = "localhost/garage-vllm-cpu:0.32.0"
    """The server image (``garage runtime build-image`` makes the CPU one; see images/)."""
    runtime_gpus: str = ""
    """GPUs for the container: empty for the CPU, ``all``, or indices such as ``0,1``."""
    runtime_port: int = Field(default=8001, ge=1, le=65535)
    """Loopback port the container's server is published on."""
    runtime_memory: str = Field(default="16g", pattern=r"^[0-9]+[kmgKMG]?$")
    """Memory limit of the container."""
    runtime_gpu_memory: float = Field(default=0.85, gt=0, le=1)
    """Share of GPU memory vLLM may take (the rest stays for the desktop)."""
    runtime_args: list[str] = []
    """Extra vLLM arguments."""
    podman_socket: Path | None = None
    """Use this Podman API socket instead of starting ``podman system service`` under HOME."""
    owner_gpu: Literal["auto", "on", "off"] = "auto"
    """Step aside when a GPU process that is not ours runs, or the GPU is busy while we serve nothing
    (``nvidia-smi``). ``auto``: when the daemon runs its own model container (a backend started by hand
    would look like the owner's process)."""
    owner_processes: list[str] = []
    """Process names that mean the owner is using the machine (e.g. a game's ``game.exe``)."""
    owner_schedule: list[str] = []
    """Hours of the day (local time) the rig never serves, e.g. ``18:00-23:00``."""
    owner_quiet: float = Field(default=120.0, ge=0, le=24 * 3600)
    """Seconds without owner activity before the rig serves again."""
    owner_drain_timeout: float = Field(default=10.0, ge=0, le=600)
    """Seconds in-flight answers get to finish once the owner is seen; then their consumers fail over."""
    owner_gpu_busy: float = Field(default=30.0, gt=0, le=100)
    """GPU utilisation (percent) that counts as the owner's while we serve nothing."""
    owner_probe_interval: float = Field(default=2.0, ge=0.1, le=60)
    """Seconds between two looks at the machine."""

    @field_validator("api")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @field_validator("backends")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"backend {name}: {url!r} is not an http(s) URL")
        return value

    @field_validator("runtime_gpus")
    @classmethod
    def _gpus(cls, value: str) -> str:
        value = value.strip()
        if value and value != "all" and not all(p.strip().isdigit() for p in value.split(",")):
            raise ValueError(f"expected '', 'all' or GPU indices like '0,1', got {value!r}")
        return value

    @field_validator("owner_schedule")
    @classmethod
    def _schedule(cls, value: list[str]) -> list[str]:
        for window in value:
            parse_window(window)  # its ValueError says what is wrong
        return value

    @property
    def gpu_list(self) -> tuple[str, ...]:
        """The runtime's GPUs as CDI names: () for the CPU."""
        if not self.runtime_gpus:
            return ()
        return ("all",) if self.runtime_gpus == "all" else tuple(p.strip() for p in self.runtime_gpus.split(","))

    def swarm_key_path(self) -> Path | None:
        """The swarm key file in force, if any."""
        if self.swarm_key is not None:
            return self.swarm_key
        default = self.home / "swarm.key"
        return default if default.exists() else None

    @property
    def api_host(self) -> str:
        return self.api.rpartition(":")[0].strip("[]")

    @property
    def api_port(self) -> int:
        return int(self.api.rpartition(":")[2])


def parse_backend(spec: str) -> tuple[str, str]:
    """``NAME=URL`` → (name, url)."""
    name, sep, url = spec.partition("=")
    if not sep or not name or not url:
        raise SettingsError(f"--backend wants NAME=URL, got {spec!r}")
    return name, url


_LIST_KEYS = {"listen", "bootstrap", "runtime_args", "owner_processes", "owner_schedule"}


def read_bootstrap_file(path: Path) -> list[str]:
    """The multiaddrs in a bootstrap list (one per line, ``#`` comments); [] if there is none."""
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, IsADirectoryError):
        return []
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in Settings.model_fields:
        raw = environ.get(f"GARAGE_{field.upper()}")
        if raw is None or field == "home":
            continue
        if field in _LIST_KEYS:
            out[field] = [x.strip() for x in raw.split(",") if x.strip()]
        elif field == "backends":
            out[field] = dict(parse_backend(x.strip()) for x in raw.split(",") if x.strip())
        elif field in ("mdns", "relay"):
            out[field] = raw.strip().lower() not in ("0", "false", "no", "off")
        else:
            out[field] = raw
    return out


def load_settings(flags: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Merge the layers; flags that are None are not given."""
    environ = dict(os.environ) if environ is None else environ
    home = Path(flags.get("home") or environ.get("GARAGE_HOME") or default_home())
    merged: dict[str, Any] = {}
    config_path = home / "config.toml"
    if config_path.exists():
        try:
            merged.update(tomllib.loads(config_path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{config_path}: {exc}") from None
    merged.update(_from_env(environ))
    merged.update({k: v for k, v in flags.items() if v not in (None, [], {})})
    merged["home"] = home
    if not merged.get("bootstrap"):
        merged["bootstrap"] = read_bootstrap_file(home / "bootstrap-peers.txt")
    try:
        return Settings(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise SettingsError(f"{where}: {first['msg']}") from None
