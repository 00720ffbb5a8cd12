"""Who may use the endpoint: API keys, their limits and their usage.

On a loopback endpoint keys are optional: a request without one (or with a
token that is not one of ours, such as the ``api_key="unused"`` many clients
need) is served without limits; one with a key is held to that key's limits.
When the endpoint listens on any other address, or ``require_keys`` is set,
every request needs an active key. A key that is unknown, wrong or revoked
is a 401; a key over its limits is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..core.limits import Limiter
from ..core.messages import ErrorInfo, Usage, error_info
from ..store.admin_token import ADMIN_TOKEN_HEADER
from ..store.keys import ApiKey, KeyStore, looks_like_key
from ..store.keys import Usage as KeyUsage

log = logging.getLogger(__name__)

CACHE_S = 1.0
"""How long a checked key is trusted before the store is read again (a revocation takes at most this long)."""
FLUSH_S = 2.0
"""Usage is written to the store this often."""
MAX_CACHED = 10_000


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without the port (``[::1]:8000`` → ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def from_browser(headers) -> bool:
    """Whether a browser sent the request: browsers add ``Origin`` or ``Sec-Fetch-*``; page scripts cannot
    remove them."""
    return "origin" in headers or "sec-fetch-site" in headers


def browser_refusal(headers, anonymous_allowed: bool) -> ErrorInfo | None:
    """Why a browser's request must be refused, or None.

    - Another site's page may not use this endpoint (a form POST to
      ``/garage/v1/drain``, a ``fetch`` spending the owner's mesh credit): its
      ``Origin`` differs from the ``Host`` it reached, or the browser says
      ``Sec-Fetch-Site: cross-site``.
    - Where requests without a key are served (a loopback endpoint), the
      ``Host`` must be a loopback name: a DNS-rebinding page reaches
      127.0.0.1 under a name of its own.
    Requests that are not from a browser (the CLI, SDKs, curl) pass unchanged.
    """
    if not from_browser(headers):
        return None
    host = headers.get("host", "")
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site", "")
    if (origin is not None and origin.partition("://")[2] != host) or site in ("cross-site", "same-site"):
        return error_info(
            403,
            "Requests from another site's web page are refused. Open the dashboard at this peer's own address.",
            code="cross_origin_refused",
        )
    if anonymous_allowed and not is_loopback(host_name(host)):
        return error_info(
            403,
            f"Host {host!r} is not this machine: without an API key the endpoint answers browsers only at 127.0.0.1 "
            "or localhost.",
            code="host_refused",
        )
    return None


class Refused(Exception):
    """The request may not go on; ``info`` is the OpenAI error to answer with."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.error.message)
        self.info = info


@dataclass(frozen=True, slots=True)
class Pass:
    """A request let in: by which key (None: anonymous, on loopback)."""

    key_id: str | None


ANONYMOUS = Pass(None)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Gatekeeper:
    def __init__(
        self,
        store: KeyStore | None,
        *,
        required: bool,
        where: str,
        admin_token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.required = required
        self.where = where
        """The endpoint's address, for error messages."""
        self.admin_token = admin_token
        """The secret that makes an admin API request the operator's (HOME/run/admin.token); None: no such request."""
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._limiter = Limiter()
        self._usage: dict[str, KeyUsage] = {}

    def _lookup(self, token: str) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        key = self.store.check(token) if self.store is not None else None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[token] = (key, now + CACHE_S)
        return key

    def operator(self, headers, client_host: str | None) -> bool:
        """Whether an admin API request (``/garage/v1/*``) is the operator's: it sees every job, no input quota.

        It is if it carries the admin token. Where keys are not required, a loopback request that is
        not a browser's and shows no key is too (the CLI of a peer that is open to its own machine).
        Where keys are required, anything else needs a key: Refused (401) without one, naming the fix.
        """
        token = headers.get(ADMIN_TOKEN_HEADER)
        if token is not None:
            if self.admin_token is not None and hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return True
            raise Refused(
                error_info(
                    401,
                    "The admin token is not this peer's: a new one is written to HOME/run/admin.token at every "
                    "start; the `garage` CLI reads it there (pass --home if the peer runs with another HOME).",
                    code="invalid_admin_token",
                )
            )
        keyed = looks_like_key(bearer_token(headers.get("authorization")) or "")
        if not self.required:
            # A request that shows one of our keys is that key's, wherever it comes from: on a
            # loopback endpoint every key holder on the machine would otherwise pass as the CLI.
            return client_host is not None and is_loopback(client_host) and not from_browser(headers) and not keyed
        if not keyed:
            raise Refused(
                error_info(
                    401,
                    f"The admin API at {self.where} needs an API key (`Authorization: Bearer gk-…`; create one "
                    "with `garage keys create`), or the operator's admin token, which the `garage` CLI on this "
                    "peer's machine reads from HOME/run/admin.token and sends by itself.",
                    code="invalid_api_key",
                )
            )
        return False

    def admit(self, authorization: str | None, *, charge: bool = True) -> Pass:
        """Let the request in, or raise Refused (401, 429).

        ``charge=False`` checks the key (401) without counting the request
        against its limits or usage: reads of this peer's own state, which
        the dashboard polls every few seconds and which use no GPU. Such a
        pass needs no ``finish``.
        """
        token = bearer_token(authorization)
        if token is None or not looks_like_key(token):
            if self.required:
                raise Refused(
                    error_info(
                        401,
                        f"You didn't provide an API key. The endpoint at {self.where} needs one: send "
                        "`Authorization: Bearer gk-…` (create a key with `garage keys create`).",
                        code="invalid_api_key",
                    )
                )
            return ANONYMOUS
        key = self._lookup(token)
        if key is None:
            shown = token[:11] + "…" if len(token) > 11 else token
            raise Refused(
                error_info(
                    401,
                    f"Incorrect API key provided: {shown}. It is unknown here or revoked; `garage keys list` shows "
                    "the keys of this peer.",
                    code="invalid_api_key",
                )
            )
        if not charge:
            return Pass(key.id)
        verdict = self._limiter.admit(key.id, key.limits, self._clock())
        if not verdict.ok:
            self._count(key.id, refused=1)
            raise Refused(
                error_info(
                    429,
                    f"Rate limit reached for key {key.id} on {verdict.limit}. "
                    f"Try again in {verdict.retry_after:.1f} s.",
                    code="rate_limit_exceeded",
                    retry_after=max(1.0, verdict.retry_after),
                )
            )
        self._count(key.id, requests=1)
        return Pass(key.id)

    def finish(self, grant: Pass, usage: Usage | None) -> None:
        """An admitted request ended; ``usage`` as the provider reported it (None: unknown or failed)."""
        if grant.key_id is None:
            return
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        self._limiter.done(grant.key_id, prompt + completion, self._clock())
        self._count(grant.key_id, prompt_tokens=prompt, completion_tokens=completion)

    def _count(
        self, key_id: str, *, requests: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0, refused: int = 0
    ) -> None:
        old = self._usage.get(key_id, KeyUsage())
        self._usage[key_id] = KeyUsage(
            old.requests + requests,
            old.prompt_tokens + prompt_tokens,
            old.completion_tokens + completion_tokens,
            old.refused + refused,
            time.time(),
        )

    async def flush(self) -> None:
        if self._usage and self.store is not None:
            batch, self._usage = self._usage, {}
            await trio.to_thread.run_sync(self.store.add_usage, batch)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write usage every few seconds (and once more on the way out)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(FLUSH_S)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):
                await self.flush()
            if self.store is not None:
                self.store.close()
