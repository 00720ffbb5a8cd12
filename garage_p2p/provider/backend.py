"""A local OpenAI-compatible backend (a vLLM server) that this peer serves."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from ..core.capabilities import ModelCard
from ..core.endpoints import served_path_ids

log = logging.getLogger(__name__)

MAX_OPENAPI_BYTES = 4 * 1024 * 1024
"""The backend's /openapi.json at most (vLLM's is about 200 KB)."""
OPENAPI_TIMEOUT = 20.0
"""Seconds to read /openapi.json: vLLM (FastAPI) builds it on the first request, which took over
5 s on a busy 2-core machine."""


@dataclass
class Backend:
    """One served model and where its server is."""

    name: str
    """The model name the mesh knows it by."""
    base_url: str
    """The backend's OpenAI base URL, e.g. ``http://127.0.0.1:8001/v1``."""
    backend_model: str | None = None
    """The model id the backend itself expects (found from its /models)."""
    context_length: int | None = None
    """The backend's max_model_len, if it reports one."""
    card: ModelCard | None = None
    """The rest of the backend's ``/v1/models`` entry that clients read (advertised with the model)."""
    gpus: int = 1
    """Devices the model occupies (a CPU-only backend counts as one); receipts bill GPU time by it."""
    managed: bool = False
    """Run by the daemon's container runtime, which owns its health (the probe loop leaves it alone)."""
    healthy: bool = False
    """Whether the last probe found it answering; only healthy models are advertised."""
    failures: int = field(default=0)
    """Consecutive failed probes."""
    paths: tuple[str, ...] | None = None
    """Ids of the endpoint paths the backend serves (core/endpoints.py), read from its
    /openapi.json when it became healthy; None when it publishes none (chat and completions)."""
    paths_read: bool = False
    """Whether /openapi.json was answered since the backend became healthy (else read again at
    the next probe)."""

    def url(self, path: str) -> str:
        """The backend URL for an endpoint path: ``/v1/...`` under the base URL, others (vLLM's
        ``/tokenize``, ``/openapi.json``) at the server's root, the base URL without its ``/v1``."""
        base = self.base_url.rstrip("/")
        if path.startswith("/v1/"):
            return base + path.removeprefix("/v1")
        return base.removesuffix("/v1") + path

    async def probe(self, client: httpx.AsyncClient, timeout: float = 3.0) -> bool:
        """Ask the backend which models it serves; update health and the model id."""
        try:
            response = await client.get(self.url("/v1/models"), timeout=timeout)
            response.raise_for_status()
            models = response.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            if self.healthy or self.failures == 0:
                log.warning("backend %s at %s is not answering: %s", self.name, self.base_url, exc)
            self.healthy = False
            self.failures += 1
            return False
        ids = [m.get("id") for m in models if isinstance(m, dict)]
        # Serve under our name whatever the backend calls it: the same id if it has
        # it, else its only model.
        if self.name in ids:
            chosen = next(m for m in models if m.get("id") == self.name)
        elif len(models) == 1:
            chosen = models[0]
        else:
            log.warning("backend %s serves %s, not %s", self.base_url, ids, self.name)
            self.healthy = False
            self.failures += 1
            return False
        self.backend_model = chosen.get("id")
        length = chosen.get("max_model_len")
        self.context_length = length if isinstance(length, int) and length > 0 else None
        self.card = model_card(chosen)
        if not self.healthy or not self.paths_read:
            self.paths, self.paths_read = await self.published_paths(client)
            log.info(
                "backend %s ready at %s (model %s, paths %s)",
                self.name,
                self.base_url,
                self.backend_model,
                ", ".join(self.paths or ("chat", "completions")),
            )
        self.healthy = True
        self.failures = 0
        return True

    async def published_paths(self, client: httpx.AsyncClient) -> tuple[tuple[str, ...] | None, bool]:
        """(the mesh's paths among those the backend's /openapi.json lists, whether it answered).
        vLLM registers only the routes of its model's tasks. No document (404, not JSON): None, as
        a backend of chat and completions; no answer (a timeout): None for now, to be read again."""
        try:
            async with client.stream("GET", self.url("/openapi.json"), timeout=OPENAPI_TIMEOUT) as response:
                if response.status_code != 200:
                    return None, response.status_code < 500
                raw = b""
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > MAX_OPENAPI_BYTES:
                        log.warning("backend %s: /openapi.json exceeds %d bytes", self.name, MAX_OPENAPI_BYTES)
                        return None, True
            paths = json.loads(raw).get("paths")
        except httpx.HTTPError as exc:
            log.info("backend %s: no /openapi.json yet (%s); chat and completions until it answers", self.name, exc)
            return None, False
        except (ValueError, AttributeError):
            return None, True
        return (served_path_ids(paths) if isinstance(paths, dict) else None), True


def model_card(entry: dict) -> ModelCard:
    """The advertised card of a backend's ``/v1/models`` entry: each field that is a string within
    its limit (``ModelCard``), the others left out."""
    fields = {}
    for name in ModelCard.model_fields:
        try:
            ModelCard(**{name: entry.get(name)})
        except ValidationError:
            continue
        fields[name] = entry.get(name)
    return ModelCard(**fields)
