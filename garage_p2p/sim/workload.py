"""What clients ask for: drawn the same way by the simulator and the emulation."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .scenario import Scenario

SIGMA = 0.8
"""Spread of the log-normal token counts (a factor of ~2.2 either side of the median)."""


@dataclass(frozen=True, slots=True)
class Ask:
    """One request's parameters."""

    model: str
    """The model asked for."""
    max_tokens: int
    """Tokens it may generate (the provider generates all of them)."""
    prompt_tokens: int
    """Prompt length in tokens."""
    stream: bool
    """Server-sent events or not."""


def draw_ask(rng: random.Random, scenario: Scenario) -> Ask:
    load = scenario.load
    names = list(scenario.models)
    model = rng.choices(names, weights=[scenario.models[n].weight for n in names])[0]
    tokens = int(round(load.max_tokens_median * math.exp(rng.gauss(0, SIGMA))))
    prompt = int(round(load.prompt_tokens_median * math.exp(rng.gauss(0, SIGMA))))
    return Ask(model, max(1, min(load.max_tokens_max, tokens)), max(1, prompt), rng.random() < load.stream_share)


def rate_factor(scenario: Scenario, t: float) -> float:
    """The flash crowds' multiplier of the request rate at ``t``."""
    factor = 1.0
    for event in scenario.events:
        if event.kind != "flash_crowd" or t < event.at_s:
            continue
        into = t - event.at_s
        if into < event.ramp_s:
            factor *= 1 + (event.factor - 1) * into / event.ramp_s
        elif into < event.ramp_s + event.hold_s:
            factor *= event.factor
    return factor


def peak_factor(scenario: Scenario) -> float:
    """The largest multiplier any time of the run sees."""
    return math.prod(e.factor for e in scenario.events if e.kind == "flash_crowd") or 1.0
