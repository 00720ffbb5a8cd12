"""Requests in flight and the last ones finished, on both sides of the mesh.

What ``/garage/v1/requests`` and the dashboard show, and what the Prometheus
metrics are fed from. Pure bookkeeping: every call takes ``now`` (a monotonic
clock) and, where a wall time is shown, ``wall``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["consumer", "provider"]


@dataclass
class LiveRequest:
    """One request while it runs (mutable: the adapters note its progress)."""

    id: str
    """The request id (``req-…``), the one in the receipt."""
    role: Role
    """``consumer``: this peer's endpoint sent it into the mesh; ``provider``: this peer serves it."""
    model: str
    """The model asked for."""
    stream: bool
    """Whether the answer streams (SSE)."""
    started: float
    """Monotonic seconds when it began."""
    peer: str | None = None
    """The other side: the provider (consumer role) or the consumer (provider role, None when local)."""
    path: str | None = None
    """How the other side is reached: ``direct``, ``relayed`` or ``local``."""
    first_token: float | None = None
    """Monotonic seconds of the first response bytes."""
    events_out: int = 0
    """Response chunks so far (SSE events: one per token on vLLM)."""


@dataclass(frozen=True)
class FinishedRequest:
    """One request after it ended."""

    id: str
    """The request id."""
    role: Role
    """``consumer`` or ``provider``."""
    model: str
    """The model asked for."""
    peer: str | None
    """The other side, as in ``LiveRequest``."""
    status: int
    """The HTTP status the client saw, or the error's status when a stream failed midway."""
    latency_s: float
    """Seconds from start to end."""
    ttft_s: float | None
    """Seconds to the first response bytes (None when none came)."""
    tokens_in: int
    """Prompt tokens the provider reported (0 when unknown)."""
    tokens_out: int
    """Completion tokens the provider reported (0 when unknown)."""
    ended_at: float
    """Wall-clock seconds (Unix time) when it ended."""


@dataclass
class LiveRequests:
    """In-flight requests by id, and a ring of the last ``keep`` finished ones."""

    keep: int = 50
    """How many finished requests to remember."""
    in_flight: dict[tuple[Role, str], LiveRequest] = field(default_factory=dict)
    """Running requests, by (role, id): one peer can be both sides of a request (local serving)."""
    recent: deque[FinishedRequest] = field(default_factory=deque)
    """The newest finished requests, oldest first."""

    def begin(self, id: str, role: Role, model: str, stream: bool, now: float, peer: str | None = None) -> LiveRequest:
        request = LiveRequest(id=id, role=role, model=model, stream=stream, started=now, peer=peer)
        self.in_flight[(role, id)] = request
        return request

    def data(self, request: LiveRequest, chunk: bytes, now: float) -> None:
        """Response bytes went out: the first ones set the time to first token."""
        if request.first_token is None:
            request.first_token = now
        request.events_out += max(1, chunk.count(b"data:")) if request.stream else 0

    def end(
        self, request: LiveRequest, status: int, now: float, wall: float, tokens_in: int = 0, tokens_out: int = 0
    ) -> FinishedRequest:
        """The request is over (idempotent per request: a second end is ignored)."""
        self.in_flight.pop((request.role, request.id), None)
        finished = FinishedRequest(
            id=request.id,
            role=request.role,
            model=request.model,
            peer=request.peer,
            status=status,
            latency_s=now - request.started,
            ttft_s=None if request.first_token is None else request.first_token - request.started,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            ended_at=wall,
        )
        self.recent.append(finished)
        while len(self.recent) > self.keep:
            self.recent.popleft()
        return finished

    def count(self, role: Role) -> int:
        return sum(1 for r in self.in_flight.values() if r.role == role)

    def view(self, now: float) -> dict[str, Any]:
        """The JSON of ``/garage/v1/requests``: newest first."""
        running = sorted(self.in_flight.values(), key=lambda r: r.started)
        return {
            "in_flight": [
                {
                    "id": r.id,
                    "role": r.role,
                    "model": r.model,
                    "peer": r.peer,
                    "path": r.path,
                    "stream": r.stream,
                    "age_s": now - r.started,
                    "tokens_out": r.events_out,
                }
                for r in running
            ],
            "recent": [
                {
                    "id": f.id,
                    "role": f.role,
                    "model": f.model,
                    "peer": f.peer,
                    "status": f.status,
                    "latency_s": f.latency_s,
                    "ttft_s": f.ttft_s,
                    "tokens_in": f.tokens_in,
                    "tokens_out": f.tokens_out,
                    "ended_at": f.ended_at,
                }
                for f in reversed(self.recent)
            ],
        }
