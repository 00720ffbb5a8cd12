"""What a simulated provider streams: vLLM's chunks with token ids, as ``core.continuation`` reads them.

The policy (``core.request_policy``) and the transcript it fails over with see the same events a
real provider sends: a first chunk carrying the prompt's ids, chunks of tokens with their ids,
the finish chunk, the usage chunk and ``[DONE]``. Text is one character per token and every id
is the same: what the simulator measures is which tokens arrive when, not what they say.
"""

from __future__ import annotations

from typing import Any

from ..core.continuation import CHAT
from ..core.messages import RequestHead, dumps

TOKEN_ID = 42
"""The id of every simulated token."""
PROMPT_ID = 7
"""The id of every simulated prompt token."""


def attempt_shape(head: RequestHead, prompt_tokens: int) -> tuple[int, int, bool]:
    """(prompt tokens, tokens to generate, streamed) of an attempt's head: the client's request,
    or a continuation whose prompt is the original prompt's ids and the tokens already sent."""
    body = head.body
    prompt = body.get("prompt")
    prompt_len = len(prompt) if isinstance(prompt, list) else prompt_tokens
    tokens = body.get("max_tokens")
    return prompt_len, max(1, tokens if isinstance(tokens, int) else 1), head.stream


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def first_chunk(path: str, prompt_len: int) -> bytes:
    """The stream's first event: the role (chat) and the prompt's ids."""
    ids = [PROMPT_ID] * prompt_len
    if path == CHAT:
        return _event(
            {
                "id": "chatcmpl-sim",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "sim",
                "prompt_token_ids": ids,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            }
        )
    return _event(
        {
            "id": "cmpl-sim",
            "object": "text_completion",
            "created": 0,
            "model": "sim",
            "choices": [{"index": 0, "text": "", "prompt_token_ids": ids, "token_ids": [], "finish_reason": None}],
        }
    )


def token_chunk(path: str, n: int, finish: str | None = None) -> bytes:
    """``n`` tokens in one chunk (the provider coalesces what was generated since its last frame)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "token_ids": [TOKEN_ID] * n}
    if path == CHAT:
        choice["delta"] = {"content": "x" * n}
        return _event({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "choices": [choice]})
    choice["text"] = "x" * n
    return _event({"id": "cmpl-sim", "object": "text_completion", "choices": [choice]})


def last_chunks(path: str, n: int, prompt_len: int, completion: int) -> bytes:
    """The last ``n`` tokens with the finish reason, the usage chunk and ``[DONE]``."""
    usage = {"prompt_tokens": prompt_len, "completion_tokens": completion}
    kind = "chat.completion.chunk" if path == CHAT else "text_completion"
    return (
        token_chunk(path, n, "length")
        + _event({"id": "sim", "object": kind, "choices": [], "usage": usage})
        + b"data: [DONE]\n\n"
    )
