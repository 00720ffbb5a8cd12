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


@dataclass(slots=True)
class Conversation:
    """A consumer's conversation: its turns share a prefix (an affinity key) and a model."""

    id: str
    """Names it (the affinity key cache-aware routing sees)."""
    model: str
    """Every turn's model."""
    turns: int = 1
    """Requests so far."""
    last: str | None = None
    """The provider that answered its latest turn."""


class Conversations:
    """Each consumer's current conversation: a request continues it with probability 1 − 1 / turns
    (``load.conversation_turns``); with 1 (the default) requests are unrelated and draw nothing."""

    def __init__(self, rng: random.Random, turns: float) -> None:
        self._rng = rng
        self._continue = 1 - 1 / turns
        self._current: dict[str, Conversation] = {}

    def turn(self, consumer: str, request_id: str, model: str) -> Conversation | None:
        """The conversation ``consumer``'s request belongs to (a new one named ``request_id`` for
        ``model``), or None when conversations are off."""
        if self._continue <= 0:
            return None
        held = self._current.get(consumer)
        if held is not None and self._rng.random() < self._continue:
            held.turns += 1
            return held
        held = self._current[consumer] = Conversation(request_id, model)
        return held


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
