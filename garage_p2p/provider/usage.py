"""Token counts (and content types) of the answers of paths other than chat and completions.

Each kind reports its usage its own way: embeddings, score and rerank count prompt tokens (and
only ``total_tokens`` in some vLLM versions), the Responses API says ``input_tokens`` and
``output_tokens`` (in a streamed answer inside its ``response.completed`` event), ``/tokenize``
answers a ``count``. What reports none (``/detokenize``, audio) is metered by GPU time alone.
"""

from __future__ import annotations

import json
import re

from ..core.messages import ANSWER_TYPE, Usage
from ..core.sse import event_data

MAX_TOKENS = 10_000_000
"""A count above this is not believed (the receipt's own limit)."""
CONTENT_TYPE = re.compile(ANSWER_TYPE)


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def usage_of(answer: object) -> Usage | None:
    """The usage of one answer object (a response body, or a streamed event's JSON)."""
    if not isinstance(answer, dict):
        return None
    raw = answer.get("usage")
    if not isinstance(raw, dict):
        nested = answer.get("response")  # a Responses API stream event
        raw = nested.get("usage") if isinstance(nested, dict) else None
    if not isinstance(raw, dict):
        count = _count(answer.get("count"))  # /tokenize
        return Usage(prompt_tokens=count) if count is not None else None
    completion = _count(raw.get("completion_tokens", raw.get("output_tokens"))) or 0
    prompt = _count(raw.get("prompt_tokens", raw.get("input_tokens")))
    if prompt is None:
        total = _count(raw.get("total_tokens"))
        prompt = max(0, total - completion) if total is not None else 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def body_usage(body: bytes) -> Usage | None:
    """The usage of a whole (non-streamed) answer, if it is JSON that reports one."""
    try:
        return usage_of(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return None


def event_usage(event: bytes) -> Usage | None:
    """The usage in one server-sent event, if it carries one (a cheap test first: most do not)."""
    if b'"usage"' not in event:
        return None
    data = event_data(event)
    try:
        return usage_of(json.loads(data)) if data else None
    except ValueError:
        return None


def answer_type(header: str | None) -> str | None:
    """The content type to tell the consumer for a whole answer: None for JSON (the default) or one
    that ``EndInfo`` cannot carry (then the consumer says JSON, as before)."""
    value = (header or "").strip().lower()
    if not value or value.startswith("application/json") or not CONTENT_TYPE.match(value):
        return None
    return value
