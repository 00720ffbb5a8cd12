"""What a provider changes in the request it sends its backend and in the answer it relays.

Sans-IO, bytes in and out. The mesh must not change what the backend said (issue 20): the
provider changes the request only to meter it (it asks every stream for the usage chunk) and the
answer only to undo what that request changed and to name the model the client asked for:

- ``metered_body``: ``stream_options.include_usage`` on, so that the usage chunk comes; for a
  client that did not ask for it, ``continuous_usage_stats`` off, since vLLM adds usage to every
  chunk only when both are on (the client's flag alone does nothing).
- The usage-only chunk is then dropped for that client. vLLM writes ``system_fingerprint`` on the
  usage chunk when it sends one and on each finish chunk when it does not, so
  ``stamp_fingerprint`` puts it back on the finish chunks.
- ``rename_model``: a backend serving a model under another name (``--backend ALIAS=URL``)
  answers with its own name; the client gets the one it asked for.

The edits are on bytes, not re-encoded JSON: everything else stays byte for byte the backend's
(float formatting, key order, escapes).
"""

from __future__ import annotations

import json
from typing import Any

FINISHING = b'"finish_reason":"'
"""In a chunk that finishes a choice (vLLM writes compact JSON; an unfinished one has null)."""


def metered_body(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A stream request's body as sent to the backend, and whether the client did not ask for
    the usage chunk (so it is to be dropped again)."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    if options.get("include_usage"):
        return body, False
    options["include_usage"] = True
    options.pop("continuous_usage_stats", None)  # only meaningful with include_usage (see above)
    return {**body, "stream_options": options}, True


def stamp_fingerprint(event: bytes, fingerprint: str) -> bytes:
    """A finish chunk's SSE event with ``system_fingerprint`` added as its last field, where
    vLLM writes it; any other event unchanged."""
    if FINISHING not in event or b'"system_fingerprint"' in event:
        return event
    body = event.rstrip(b"\n")
    if not body.endswith(b"}"):
        return event
    field = b',"system_fingerprint":' + _json_string(fingerprint)
    return body[:-1] + field + b"}" + event[len(body) :]


def rename_model(data: bytes, backend_model: str, name: str) -> bytes:
    """A JSON body or one SSE event naming ``name`` where the backend named its own model: its
    first ``"model":"…"`` (vLLM writes it near the start, before any text; a quote inside a JSON
    string is escaped, so the pattern cannot match inside one)."""
    if backend_model == name:
        return data
    return data.replace(b'"model":' + _json_string(backend_model), b'"model":' + _json_string(name), 1)


def _json_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()
