"""When a provider counts as lost: adaptive first-byte and stall deadlines of one attempt.

Sans-IO: the caller passes ``now`` (seconds on its monotonic clock). A ``StreamDeadlines``
follows one attempt: ``get_timer()`` says when to wake, ``on_data(now)`` is told of each
response frame, ``handle_timer(now)`` says whether the provider is lost (``Expired``). Expiry
means "provider lost": the consumer fails the answer over (core/continuation.py).

First byte. A provider's ad says how fast it starts (the benchmark's median TTFT, scaled by its
queue, as the router scores it) and what it delivered to us before tells how it starts in fact
(``FirstByteHistory``). The deadline allows FIRST_BYTE_FACTOR × the slower of the two, plus the
prompt's prefill at a pessimistic PREFILL_TPS, plus FIRST_BYTE_SLACK (a dial, a busy provider's
QUEUE_WAIT of 2 s before it answers 429), and never less than FIRST_BYTE_MIN: a default provider
(0.5 s TTFT) gets 5 s, not the 600 s request timeout that a silent one used to cost.

Stall. Once tokens flow, the stream's own pace is the yardstick: the gaps between response
frames (the provider coalesces events for 20 ms, so gaps are ≥ 20 ms). After STALL_SAMPLES
gaps, a silence longer than max(STALL_FLOOR, STALL_FACTOR × the p95 gap) is a stall. The floor
covers what a live vLLM does to a running stream: a long prefill of a newcomer or a preemption
pauses decoding for a second or two on a consumer GPU. Before enough gaps are known, a pause as
long as the first-byte deadline is allowed. Neither deadline ever passes the request's own end.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .messages import dumps

FIRST_BYTE_FACTOR = 4.0
"""Multiple of the expected time to first byte allowed (a p50 figure; the tail is long)."""
FIRST_BYTE_SLACK = 3.0
"""Seconds added for a dial and a provider's admission queue (its QUEUE_WAIT is 2 s)."""
FIRST_BYTE_MIN = 5.0
"""The shortest first-byte deadline, in seconds."""
PREFILL_TPS = 1000.0
"""Prompt tokens per second a slow provider prefills (a CPU or an old GPU); a long prompt on a
slow rig must not look like a lost provider."""
STALL_FLOOR = 4.0
"""The shortest stall deadline, in seconds (a live stream pauses for a prefill or preemption)."""
STALL_FACTOR = 10.0
"""Multiple of the stream's p95 gap between frames that counts as a stall."""
STALL_SAMPLES = 8
"""Gaps needed before the stream's own pace is trusted."""
GAP_WINDOW = 64
"""Latest gaps kept for the p95."""
HISTORY_SIZE = 256
"""Providers whose delivered first-byte time is remembered (the latest used)."""
HISTORY_WEIGHT = 0.3
"""Weight of the newest first-byte time in the moving average."""


@dataclass(frozen=True, slots=True)
class Expired:
    """The attempt's provider is lost."""

    kind: str
    """``first_byte`` (nothing arrived in time) or ``stall`` (the stream stopped)."""
    waited: float
    """Seconds of silence that expired."""
    limit: float
    """The deadline that expired, in seconds."""


def first_byte_timeout(advertised: float, delivered: float | None, prompt_tokens: int, remaining: float) -> float:
    """Seconds to wait for an attempt's first byte.

    ``advertised``: the expected time to first byte from the provider's ad (RTT + relay + TTFT ×
    queue factor: the router's estimate). ``delivered``: its moving average to us, if any.
    ``prompt_tokens``: the prompt's length (estimated, or exact for a continuation).
    ``remaining``: seconds left of the request's own deadline (the cap).
    """
    expected = max(advertised, delivered or 0.0)
    wanted = FIRST_BYTE_FACTOR * expected + prompt_tokens / PREFILL_TPS + FIRST_BYTE_SLACK
    return max(0.0, min(remaining, max(FIRST_BYTE_MIN, wanted)))


def prompt_estimate(body: dict[str, Any]) -> int:
    """A pessimistic guess of a request's prompt tokens for its first-byte deadline: the JSON
    bytes of its ``messages`` or ``prompt`` / 3 (English runs 3 to 4 bytes a token; more tokens
    means a longer deadline, the safe side)."""
    prompt = body.get("messages", body.get("prompt"))
    return len(dumps(prompt)) // 3 if prompt is not None else 0


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass
class StreamDeadlines:
    """The deadlines of one attempt, from its start to its last frame."""

    started: float
    """When the request went out."""
    first_byte: float
    """Seconds allowed to the first frame (``first_byte_timeout``)."""
    end: float
    """The request's own deadline (absolute); no timer passes it."""
    last: float | None = None
    """When the latest frame arrived, or the caller began waiting for the next one if later
    (None before the first frame)."""
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=GAP_WINDOW))
    """The latest gaps between frames."""

    def on_data(self, now: float) -> None:
        """A response frame arrived at ``now``."""
        if self.last is not None:
            self.gaps.append(max(0.0, now - self.last))
        self.last = now

    def waiting(self, now: float) -> None:
        """The caller starts waiting for the next frame at ``now``: time it spent before (on a
        slow client) is not the provider's silence."""
        if self.last is not None:
            self.last = max(self.last, now)

    def stall_limit(self) -> float:
        """Seconds of silence allowed now that tokens flow."""
        if len(self.gaps) < STALL_SAMPLES:
            return max(STALL_FLOOR, self.first_byte)
        return max(STALL_FLOOR, STALL_FACTOR * p95(list(self.gaps)))

    def get_timer(self) -> float:
        """When to call ``handle_timer`` next (absolute)."""
        if self.last is None:
            return min(self.end, self.started + self.first_byte)
        return min(self.end, self.last + self.stall_limit())

    def handle_timer(self, now: float) -> Expired | None:
        """``Expired`` if the provider is lost at ``now``; None when the timer fired early. The
        request's own deadline is not an expiry here (the caller answers 504 for it)."""
        if now < self.get_timer() or now >= self.end:
            return None
        if self.last is None:
            return Expired("first_byte", now - self.started, self.first_byte)
        return Expired("stall", now - self.last, self.stall_limit())


@dataclass
class FirstByteHistory:
    """What each provider delivered to us: a moving average of its time to first byte."""

    seconds: OrderedDict[str, float] = field(default_factory=OrderedDict)
    """Provider → moving average, least recently updated first."""

    def get(self, peer_id: str) -> float | None:
        """The provider's average, if it served us before."""
        return self.seconds.get(peer_id)

    def record(self, peer_id: str, seconds: float) -> None:
        """The provider's first byte came ``seconds`` after the request went out."""
        old = self.seconds.pop(peer_id, None)
        self.seconds[peer_id] = seconds if old is None else (1 - HISTORY_WEIGHT) * old + HISTORY_WEIGHT * seconds
        while len(self.seconds) > HISTORY_SIZE:
            self.seconds.popitem(last=False)
