"""What a gaming GPU serves: tokens per second and time to first token.

Rounded public figures for a ~8B model in 4-bit weights on vLLM (single
stream, and the aggregate of 16 streams); a model of ``params_b`` billion
parameters runs ``8 / params_b`` times as fast. They set the scale of the
simulation, not its logic: the routing and admission code is the project's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GpuKind:
    """One kind of GPU, as the simulator uses it."""

    vram_gib: float
    """Memory of the card."""
    single_tps: float
    """Tokens/s of one stream alone (8B model)."""
    aggregate_tps: float
    """Tokens/s of ``CONCURRENCY`` streams together (8B model)."""
    ttft_ms: float
    """Time to first token of a ~300-token prompt alone (8B model)."""


CONCURRENCY = 16
"""Streams in the aggregate figure, and the admission limit of a simulated provider."""

GPUS: dict[str, GpuKind] = {
    "RTX 3060": GpuKind(12, 45, 400, 120),
    "RTX 3070": GpuKind(8, 55, 500, 100),
    "RTX 3080": GpuKind(10, 70, 700, 80),
    "RTX 3090": GpuKind(24, 85, 1000, 70),
    "RTX 4060": GpuKind(8, 50, 420, 110),
    "RTX 4070": GpuKind(12, 70, 650, 85),
    "RTX 4080": GpuKind(16, 95, 1100, 60),
    "RTX 4090": GpuKind(24, 130, 1600, 45),
    "stand-in": GpuKind(24, 100, 1600, 50),
}
"""``stand-in`` is the emulation's StandInBackend (``STANDIN_DELAYS``): no GPU, a
fixed 100 tokens/s per stream whatever the concurrency."""

STANDIN_DELAYS = {"first_token_delay": 0.05, "token_delay": 0.01}
"""The StandInBackend settings that match the ``stand-in`` kind."""


def per_stream_tps(kind: GpuKind, params_b: float, streams: int) -> float:
    """Tokens/s each of ``streams`` concurrent streams gets."""
    scale = 8.0 / params_b
    single = kind.single_tps * scale
    if streams <= 1:
        return single
    at_c = kind.aggregate_tps * scale / CONCURRENCY
    if streams <= CONCURRENCY:
        return single + (at_c - single) * (streams - 1) / (CONCURRENCY - 1)
    return kind.aggregate_tps * scale / streams
