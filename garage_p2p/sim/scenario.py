"""Scenario files: what to simulate, as TOML (``simulations/*.toml``).

A scenario says how many peers, which GPUs, where they live (cities and
their latencies), how many sit behind NAT, when gamers switch their PCs on
and off, how many requests the mesh sees, and which events happen (a flash
crowd, a partition and its heal, the loss of relays). The simulator, and the
emulation mode with real peers, read the same file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class SimSection(_Section):
    name: str = Field(min_length=1, max_length=64)
    """Scenario name, printed in the report."""
    duration_s: float = Field(gt=0, le=7 * 86400)
    """Simulated seconds during which requests arrive."""
    drain_s: float = Field(default=300.0, ge=0, le=3600)
    """Simulated seconds after the last arrival for requests in flight to end."""
    seed: int = 1
    """Default seed (``--seed`` overrides)."""
    start_hour: float = Field(default=19.0, ge=0, lt=24)
    """Local time of day the run starts at (drives the daily on/off pattern)."""
    sample_s: float = Field(default=60.0, gt=0, le=3600)
    """Width of the time buckets in the report's curves."""


class PeersSection(_Section):
    count: int = Field(ge=2, le=100_000)
    """Peers in the mesh (relays included)."""
    provider_share: float = Field(default=0.3, ge=0, le=1)
    """Share of peers with a GPU that serve a model; the rest only consume."""
    relay_share: float = Field(default=0.1, ge=0, le=1)
    """Share of the *public* peers that run a circuit relay; relays stay on (they are servers)."""
    gpus: dict[str, float] = Field(default_factory=lambda: {"RTX 4090": 1.0})
    """GPU kind → weight among providers (kinds: ``sim.hardware.GPUS``)."""


class NetworkSection(_Section):
    cities: dict[str, float] = Field(default_factory=lambda: {"Stockholm": 1.0})
    """City → weight of peers living there (names: ``sim.geo.CITIES``)."""
    public: float = Field(default=0.3, ge=0, le=1)
    """Share of peers reachable directly (no NAT, or a forwarded port)."""
    cone: float = Field(default=0.55, ge=0, le=1)
    """Share behind an endpoint-independent (cone) NAT: hole punching can work."""
    symmetric: float = Field(default=0.15, ge=0, le=1)
    """Share behind a symmetric NAT: connections to them stay relayed."""
    access_ms: tuple[float, float] = (2.0, 12.0)
    """One-way latency of a home's access link, drawn uniformly from this range."""
    punch_success: float = Field(default=0.7, ge=0, le=1)
    """Chance that DCUtR makes a cone-to-cone connection direct."""
    loopback: bool = False
    """Every peer on one host (emulation's twin): no distance, no access link, no NAT."""

    @model_validator(mode="after")
    def _shares(self) -> NetworkSection:
        if abs(self.public + self.cone + self.symmetric - 1.0) > 1e-6:
            raise ValueError("network shares public + cone + symmetric must add up to 1")
        if self.access_ms[0] < 0 or self.access_ms[1] < self.access_ms[0]:
            raise ValueError("access_ms is a range [low, high] of non-negative milliseconds")
        return self


class ModelSpec(_Section):
    weight: float = Field(default=1.0, gt=0)
    """Share of requests asking for this model."""
    params_b: float = Field(default=8.0, gt=0, le=2000)
    """Billions of parameters; speed scales inversely with it from the 8B figures."""
    min_vram_gib: float = Field(default=6.0, ge=0)
    """A GPU with less memory cannot serve it."""


class ChurnSection(_Section):
    provider_online: tuple[float, ...] = (1.0,)
    """Share of gaming PCs switched on, per hour of day (24 values, or 1 for all hours)."""
    consumer_online: tuple[float, ...] = (1.0,)
    """Share of consumers online, per hour of day (24 values, or 1)."""
    mean_session_min: float = Field(default=120.0, gt=0)
    """Mean time a PC stays on once switched on."""
    graceful_share: float = Field(default=0.5, ge=0, le=1)
    """Share of switch-offs that drain first (the rest vanish: power cut, crash, lid shut)."""

    @model_validator(mode="after")
    def _hours(self) -> ChurnSection:
        for curve in (self.provider_online, self.consumer_online):
            if len(curve) not in (1, 24) or any(not 0 < p <= 1 for p in curve):
                raise ValueError("an online curve has 1 or 24 shares, each in (0, 1]")
        return self


class LoadSection(_Section):
    requests_per_consumer_hour: float = Field(default=6.0, ge=0, le=36_000)
    """Mean request rate of one online consumer."""
    max_tokens_median: int = Field(default=200, ge=1, le=32_768)
    """Median ``max_tokens`` of a request (log-normal)."""
    max_tokens_max: int = Field(default=1024, ge=1, le=32_768)
    """Largest ``max_tokens`` drawn."""
    prompt_tokens_median: int = Field(default=300, ge=1, le=1_000_000)
    """Median prompt length in tokens (log-normal)."""
    stream_share: float = Field(default=0.7, ge=0, le=1)
    """Share of requests that stream."""
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Each request's deadline."""
    failover: bool = True
    """Whether a provider lost mid-answer is replaced (false: every client sends ``x-garage-failover: off``)."""
    conversation_turns: float = Field(default=1.0, ge=1, le=1000)
    """Mean requests per conversation: a consumer's request continues its conversation (same model,
    same affinity key, as cache-aware routing sees it) with probability 1 − 1 / turns."""


class Event(_Section):
    at_s: float = Field(ge=0)
    """When it happens, seconds from the start."""
    kind: Literal["flash_crowd", "partition", "heal", "relay_loss", "join", "job"]
    """What happens."""
    count: int = Field(default=1, ge=1, le=10_000)
    """join: providers (offline until now) that switch on."""
    lines: int = Field(default=200, ge=1, le=100_000)
    """job: lines in the batch a random online consumer submits."""
    shard_size: int = Field(default=20, ge=1, le=1000)
    """job: lines per shard."""
    model: str | None = None
    """job: the model (default: the scenario's first)."""
    factor: float = Field(default=10.0, gt=0, le=1000)
    """flash_crowd: request rate multiplier at the peak."""
    ramp_s: float = Field(default=60.0, ge=0)
    """flash_crowd: seconds to climb to the peak."""
    hold_s: float = Field(default=600.0, ge=0)
    """flash_crowd: seconds at the peak before it ends."""
    side: tuple[str, ...] = ()
    """partition: the cities on one side; every other city is on the other."""
    share: float = Field(default=1.0, ge=0, le=1)
    """relay_loss: share of the relays that vanish."""


class LedgerSection(_Section):
    replicas: int = Field(default=0, ge=0)
    """Peers whose full ledger replica is simulated (0: every peer). Providers always keep their own log."""


class GossipSection(_Section):
    policy: Literal["new", "legacy"] = "new"
    """How peers publish their ads and sync tables. ``new``: the daemon's (``core.ad_schedule``: on change and at
    a heartbeat that stretches with the mesh; table sync by cursor). ``legacy``: as before issue 17 (an ad every
    5 s from every peer, ttl 20 s; every table sync a full page), to show what it cost."""


class EmulationSection(_Section):
    peers: int = Field(default=12, ge=3, le=100)
    """Real peers started by ``python -m tools.emulate``, in one process (12 keep one core of this 2-core machine
    below saturation)."""
    duration_s: float = Field(default=90.0, gt=0, le=1800)
    """Seconds of requests in the emulation (real time)."""
    requests_per_consumer_hour: float | None = Field(default=None, ge=0)
    """Request rate of the emulation and its simulated twin (default: the scenario's)."""
    joins: int = Field(default=3, ge=0, le=20)
    """Providers that join mid-run, to time how fast the mesh learns of them."""


class Scenario(_Section):
    sim: SimSection
    peers: PeersSection
    network: NetworkSection = NetworkSection()
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"llama-3.1-8b": ModelSpec()})
    churn: ChurnSection = ChurnSection()
    load: LoadSection = LoadSection()
    events: tuple[Event, ...] = ()
    ledger: LedgerSection = LedgerSection()
    gossip: GossipSection = GossipSection()
    emulation: EmulationSection = EmulationSection()

    @model_validator(mode="after")
    def _known_names(self) -> Scenario:
        from .geo import CITIES
        from .hardware import GPUS

        unknown = [c for c in self.network.cities if c not in CITIES]
        unknown += [c for e in self.events for c in e.side if c not in CITIES]
        if unknown:
            raise ValueError(f"unknown cities {unknown}; known: {', '.join(CITIES)}")
        gpus = [g for g in self.peers.gpus if g not in GPUS]
        if gpus:
            raise ValueError(f"unknown GPU kinds {gpus}; known: {', '.join(GPUS)}")
        if not self.models:
            raise ValueError("a scenario needs at least one model")
        return self


TWIN_GPU = "stand-in"
TWIN_TOKENS_MEDIAN = 24
TWIN_TOKENS_MAX = 64


def twin_scenario(scenario: Scenario) -> Scenario:
    """The scenario as the emulation runs it: its own peer count and length,
    every peer on loopback with a stand-in backend, no churn, and
    ``emulation.joins`` providers switching on during the run.

    The simulator runs this twin too, so the report can set the simulated
    figures beside the real ones. It serves one model, the scenario's most
    asked for, from two providers at the start plus the joining ones."""
    emu = scenario.emulation
    main = max(scenario.models, key=lambda name: scenario.models[name].weight)
    joins = tuple(
        Event(at_s=round(emu.duration_s * (i + 1) / (emu.joins + 1), 3), kind="join", count=1) for i in range(emu.joins)
    )
    rate = (
        emu.requests_per_consumer_hour
        if emu.requests_per_consumer_hour is not None
        else scenario.load.requests_per_consumer_hour
    )
    return scenario.model_copy(
        update={
            "sim": scenario.sim.model_copy(
                update={
                    "name": f"{scenario.sim.name} (emulation twin)",
                    "duration_s": emu.duration_s,
                    "drain_s": 60.0,
                    "sample_s": max(5.0, emu.duration_s / 12),
                }
            ),
            # Two providers from the start plus the joining ones, all on the scenario's main model:
            # with a dozen peers, several models would leave some with no provider at all.
            "peers": scenario.peers.model_copy(
                update={
                    "count": emu.peers,
                    "provider_share": max(scenario.peers.provider_share, (emu.joins + 2) / emu.peers),
                    "relay_share": 0.0,
                    "gpus": {TWIN_GPU: 1.0},
                }
            ),
            "network": NetworkSection(
                cities={"Stockholm": 1.0}, public=1.0, cone=0.0, symmetric=0.0, access_ms=(0.0, 0.0), loopback=True
            ),
            "models": {main: scenario.models[main].model_copy(update={"min_vram_gib": 0.0, "weight": 1.0})},
            "churn": ChurnSection(),
            "load": scenario.load.model_copy(
                update={
                    "requests_per_consumer_hour": rate,
                    "max_tokens_median": TWIN_TOKENS_MEDIAN,
                    "max_tokens_max": TWIN_TOKENS_MAX,
                }
            ),
            "events": joins,
            "ledger": LedgerSection(replicas=0),
        }
    )


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message says what to fix."""


def load_scenario(path: str | Path, *, gossip: str | None = None) -> Scenario:
    """Read and check a scenario file; ``gossip`` overrides its ``[gossip] policy``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"no scenario file {path} (the shipped ones are in simulations/)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path} is not valid TOML: {exc}") from None
    if gossip is not None:
        data.setdefault("gossip", {})["policy"] = gossip
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{path}: {where}: {first['msg']}") from None
