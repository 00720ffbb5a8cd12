"""Token-exact mid-stream failover: one answer, written by one or more providers.

Sans-IO. The consumer's endpoint decides at the start whether a request may fail over
(``plan``), sends the provider the body the plan gives, and feeds every response byte of every
attempt into one ``Transcript``. The transcript gives the bytes the client sees (the first
provider's chunk shape, the token id fields stripped), and, when a provider is lost mid-answer,
the body that continues the answer on another one (``Transcript.continuation``).

The mechanism ("clean ids", measured in docs/notes/failover_research.md, identical byte for byte
at temperature 0 at every cut point):

1. Every provider request goes to vLLM as ``"stream": true, "return_token_ids": true`` with the
   usage chunk on: each chunk then carries the ids of its tokens and the first one the prompt's
   ids. A non-streamed client request is streamed at the provider and assembled here.
2. The clean boundary is the end of the last chunk whose text was not empty. A chunk with ids and
   no text means the detokenizer holds back an incomplete UTF-8 piece; the client has seen no
   text for it, so those tokens are regenerated rather than continued from (continuing from them
   hits vLLM#48853, which re-emits the whole prompt).
3. The continuation is ``POST /v1/completions`` with ``prompt`` = prompt ids + the clean ids, the
   client's sampling fields, ``max_tokens`` and ``min_tokens`` reduced by what was generated, no
   ``stop``/``echo``/``n``; its chunks are rewritten into the client's shape (a chat request's
   continuation becomes ``chat.completion.chunk`` deltas with the first chunk's id, model and
   creation time).
4. ``usage``: the original prompt's tokens; completion tokens = clean ids before the last attempt
   + the last attempt's own completion tokens (its prompt held the rest).

Requests whose continuation would not be exact are not failed over (``plan`` says why): ``n`` > 1,
tools and structured outputs (the grammar and parsers restart), ``logprobs``/``echo``/``best_of``,
``stop`` strings (vLLM misses a stop string that straddles the cut), frequency and presence
penalties (vLLM counts them over output tokens only), continuous usage stats, a batch of prompts.
A sampled request fails over with the seed ``continuation_seed(seed, k)``: reproducible for the
same cut, never the uninterrupted sample (vLLM restarts the random stream).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .endpoints import CHAT as CHAT
from .endpoints import COMPLETIONS as COMPLETIONS
from .errors import PeerFault
from .messages import ErrorInfo, Usage, dumps, error_info
from .sse import SseSplitter, event_data

FAILOVER_HEADER = "x-garage-failover"
"""Request header; ``off`` disables failover for the request (the body then goes out unchanged)."""
MAX_FAILOVERS = 2
"""Continuations per answer at most: a third lost provider in one answer says the model's
providers are failing, not that one rig went away."""
MAX_IDS_PER_CHUNK = 4096
"""Token ids one chunk may carry (vLLM sends one chunk per token, or a few under load)."""
MAX_TRACKED_IDS = 2_000_000
"""Prompt + generated ids the transcript keeps; a longer answer is served without failover."""
MAX_TOKEN_ID = 2**31 - 1
"""Largest token id accepted (vocabularies are far smaller; this only rejects garbage)."""
MAX_ANSWER_CHARS = 64 * 1024 * 1024
"""Text a non-streamed answer may accumulate (the endpoint's response limit)."""

_NOT_EXACT_FIELDS = (
    "tools",
    "functions",
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "logprobs",
    "top_logprobs",
    "prompt_logprobs",
    "echo",
    "best_of",
    "suffix",
    "stop",
)
"""Fields that, when set, make a continuation inexact (why: module docstring)."""

_CONTINUED_FIELDS = (
    "model",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "logit_bias",
    "repetition_penalty",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "ignore_eos",
    "stop_token_ids",
    "bad_words",
    "allowed_token_ids",
    "user",
    "priority",
)
"""Sampling fields copied from the client's body into a continuation (``/v1/completions`` takes
each of them with the same meaning); everything else of the client's body is dropped."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How a request goes out: failover on or off, and the body for the provider."""

    failover: bool
    """True when a lost provider is replaced mid-answer."""
    reason: str
    """Why failover is off ("" when on)."""
    body: dict[str, Any]
    """The body to send: the client's, plus ``stream``, ``return_token_ids`` and the usage chunk
    when failover is on (nothing else is changed)."""
    client_stream: bool
    """Whether the client asked for server-sent events."""
    client_usage: bool
    """Whether the client asked for the usage chunk of a stream."""


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def not_exact_reason(path: str, body: dict[str, Any]) -> str:
    """Why a continuation of this request would not equal the uninterrupted answer ("" if it would)."""
    for name in _NOT_EXACT_FIELDS:
        value = body.get(name)
        # ``logprobs: 0`` on /v1/completions asks for logprobs: only None, False and empties are "unset".
        if not (value is None or value is False or value in ([], "", {})):
            return f"{name} is set"
    if body.get("n", 1) != 1:
        return "n is not 1"
    if _number(body.get("frequency_penalty")) != 0 or _number(body.get("presence_penalty")) != 0:
        return "frequency or presence penalty"
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("continuous_usage_stats"):
        return "continuous usage stats"
    if path == COMPLETIONS:
        prompt = body.get("prompt")
        single = isinstance(prompt, str) or (
            isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        )
        if not single:
            return "prompt is a batch"
    elif path != CHAT:
        return f"no failover on {path}"
    for name in ("max_tokens", "max_completion_tokens", "min_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            return f"{name} is not an integer"  # the backend answers the 400
    return ""


def plan(path: str, body: dict[str, Any], header: str | None) -> Plan:
    """Decide failover for a client request and give the body its provider gets."""
    client_stream = body.get("stream") is True
    options = body.get("stream_options")
    client_usage = client_stream and isinstance(options, dict) and options.get("include_usage") is True
    reason = "x-garage-failover: off" if (header or "").strip().lower() == "off" else not_exact_reason(path, body)
    if reason:
        return Plan(False, reason, body, client_stream, client_usage)
    sent = dict(body)
    sent["stream"] = True
    sent["return_token_ids"] = True
    sent["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return Plan(True, "", sent, client_stream, client_usage)


def lost(info: ErrorInfo, truncated: bool) -> bool:
    """Whether a failure mid-answer means "the provider is lost" (fail over) rather than "the
    request failed" (tell the client): a cut connection, a broken protocol, a backend that failed
    or went away. A 4xx is the request's own problem and a 504 is its deadline: not lost."""
    return truncated or info.status in (500, 502, 503)


def continuation_seed(seed: int, generated: int) -> int:
    """The seed of a sampled continuation after ``generated`` tokens: a function of both, so a run
    that fails over at the same point is reproducible (the same seed would re-draw the answer's
    first draws, measured)."""
    return (seed * 1_000_003 + generated * 7_919) % 2**63


def _ids(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_TRACKED_IDS:
        raise PeerFault(f"{what} is not a list of token ids")
    for t in value:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= MAX_TOKEN_ID:
            raise PeerFault(f"{what} holds something that is not a token id")
    return value


@dataclass(frozen=True, slots=True)
class Shape:
    """What every chunk the client sees carries, taken from the first provider's first chunk."""

    id: str
    """The chunk ``id`` (``chatcmpl-…`` or ``cmpl-…``)."""
    created: int
    """The ``created`` time."""
    model: str
    """The ``model`` name."""


@dataclass(frozen=True, slots=True)
class Fed:
    """What ``Transcript.feed`` made of a provider's bytes."""

    out: bytes
    """Bytes for the client (empty for a non-streamed client)."""
    fault: str | None
    """Why the provider broke the rules, if it did: it is lost, its later events are dropped."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One provider chunk, validated, not yet recorded."""

    prompt_ids: list[int] | None
    """The prompt's ids, if the chunk carries them."""
    usage: Usage | None
    """The client's usage, if the chunk carries the attempt's own."""
    choice: dict[str, Any] | None
    """The chunk's one choice (None for the usage chunk)."""
    delta: dict[str, Any]
    """A chat chunk's delta (empty for completions)."""
    text: str
    """The choice's text ("" for none)."""
    ids: list[int] | None
    """The choice's token ids (None when it carries none)."""
    finish: str | None
    """Its finish reason."""


@dataclass
class Transcript:
    """One answer as the client sees it, across the attempts of the providers that wrote it.

    Feed each attempt's response bytes to ``feed``; it returns what to send the client (nothing
    for a non-streamed client, whose answer ``assemble`` builds at the end). Raises PeerFault for
    a provider that sends what vLLM does not (malformed chunks or ids): that provider is at fault.
    """

    path: str
    """The client's endpoint (``CHAT`` or ``COMPLETIONS``)."""
    plan: Plan
    """The request's plan."""
    prompt_ids: list[int] | None = None
    """The original prompt's ids, from the first provider's first chunk."""
    ids: list[int] = field(default_factory=list)
    """Generated ids up to the clean boundary, from every attempt, in order."""
    pending: list[int] = field(default_factory=list)
    """Ids of the current attempt after its clean boundary (held-back text)."""
    tracking: bool = True
    """False once a chunk came without ids (a backend that is not vLLM): no failover then."""
    shape: Shape | None = None
    """The client-visible chunk shape, once the first chunk arrived."""
    attempt_path: str = CHAT
    """The endpoint of the current attempt (continuations are ``COMPLETIONS``)."""
    attempt_prefix: int = 0
    """Generated ids that were in the current attempt's prompt."""
    attempt_prompt: int | None = None
    """Prompt ids sent with the current attempt (a continuation), to check the echo."""
    attempts: int = 0
    """Attempts begun."""
    moves: int = 0
    """Attempts begun because a relay cut the connection at its limit (core/relaying.py): the
    provider is fine, so they do not count against MAX_FAILOVERS."""
    fresh: bool = True
    """True while the current attempt is the client's own request (the first one, or a restart
    when its provider was lost before anything reached the client)."""
    finish_reason: str | None = None
    """The finishing provider's reason."""
    stop_reason: object = None
    """vLLM's ``stop_reason`` next to it (a stop token id, or None)."""
    usage: Usage | None = None
    """The client's usage, once the last attempt reported its own."""
    done: bool = False
    """True once an attempt ended the answer (its ``[DONE]``)."""
    text: list[str] = field(default_factory=list)
    """The text forwarded so far (kept for a non-streamed client)."""
    role_sent: bool = False
    """True once the chat role chunk went to the client."""
    backend_error: dict[str, Any] | None = None
    """The error object the backend sent in the stream (it failed the request itself)."""
    fingerprint: str | None = None
    """The backend's ``system_fingerprint``, from its usage chunk."""
    held: list[dict[str, Any]] = field(default_factory=list)
    """The client's finish chunks, held until the usage chunk: vLLM writes ``system_fingerprint``
    on them when the client did not ask for usage, and on the usage chunk we hide when it did
    not. They are in the provider's last frame with it (provider/service.py), so nothing waits."""
    _chars: int = 0
    _splitter: SseSplitter = field(default_factory=SseSplitter)

    def begin(self) -> None:
        """A new attempt starts: the first, or a continuation after ``continuation``."""
        self.attempts += 1
        self.pending = []
        self.finish_reason = None
        self._splitter = SseSplitter()
        if self.attempts == 1:
            self.attempt_path = self.path

    @property
    def generated(self) -> int:
        """Ids in the answer up to the clean boundary."""
        return len(self.ids)

    def feed(self, data: bytes) -> Fed:
        """Response bytes of the current attempt in; what the client gets out, and the provider's
        fault if an event broke the rules (the events before it still count, the rest do not)."""
        out: list[bytes] = []
        for event in self._splitter.feed(data):
            try:
                out.append(self._event(event))
            except PeerFault as exc:
                return Fed(b"".join(out), str(exc))
        return Fed(b"".join(out), None)

    def _event(self, event: bytes) -> bytes:
        """One SSE event in, the client's bytes out."""
        payload = event_data(event)
        if payload is None:
            return b""
        if payload.strip() == b"[DONE]":
            self.done = True
            return self._release() + b"data: [DONE]\n\n" if self.plan.client_stream else b""
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise PeerFault("a stream event is not JSON") from None
        if not isinstance(chunk, dict):
            raise PeerFault("a stream event is not a JSON object")
        if "error" in chunk:
            # The backend failed the request itself (e.g. out of context): the client's answer.
            self.done = True
            self.tracking = False
            error = chunk["error"]
            self.backend_error = error if isinstance(error, dict) else {"message": str(error)[:8192]}
            return b"data: " + payload + b"\n\n"
        chunks = self._chunk(chunk)
        if not self.plan.client_stream:
            return b""
        return b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks)

    def _release(self) -> bytes:
        """The held finish chunks, with the fingerprint if it came."""
        held, self.held = self.held, []
        if self.fingerprint is not None:
            held = [{**c, "system_fingerprint": self.fingerprint} for c in held]
        return b"".join(b"data: " + dumps(c) + b"\n\n" for c in held)

    def _chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """One provider chunk in, the client's chunks out (zero or one). The chunk is validated
        whole before anything is recorded: a bad one changes nothing."""
        parsed = self._parse(chunk)
        if self.shape is None:
            created = chunk.get("created")
            self.shape = Shape(
                str(chunk.get("id", ""))[:256],
                created if isinstance(created, int) and not isinstance(created, bool) else 0,
                str(chunk.get("model", ""))[:256],
            )
        if parsed.prompt_ids is not None and self.fresh and self.prompt_ids is None:
            self.prompt_ids = parsed.prompt_ids
        if parsed.usage is not None:
            self.usage = parsed.usage
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str) and len(fingerprint) <= 256:
            self.fingerprint = fingerprint
        if parsed.choice is None:
            if parsed.usage is not None and self.plan.client_usage:
                extra = {"system_fingerprint": self.fingerprint} if self.fingerprint is not None else {}
                return [self._client_chunk({"choices": [], "usage": _usage_json(parsed.usage), **extra})]
            return []
        self._record(parsed)
        if parsed.finish is not None:
            self.finish_reason = parsed.finish
            self.stop_reason = parsed.choice.get("stop_reason")
        out = self._forward(parsed)
        if parsed.finish is not None and self.plan.client_stream and not self.plan.client_usage:
            self.held.extend(out)
            return []
        return out

    def _parse(self, chunk: dict[str, Any]) -> _Parsed:
        """Validate a provider chunk (PeerFault if it is not what vLLM sends); records nothing."""
        chat_in = self.attempt_path == CHAT
        choices = chunk.get("choices")
        if not isinstance(choices, list) or len(choices) > 1:
            raise PeerFault("a stream chunk without one choice")
        choice = choices[0] if choices else None
        if choice is not None and not isinstance(choice, dict):
            raise PeerFault("a choice is not an object")
        raw_prompt = chunk.get("prompt_token_ids") if chat_in else (choice or {}).get("prompt_token_ids")
        prompt_ids = None if raw_prompt is None else list(_ids(raw_prompt, "prompt_token_ids"))
        if prompt_ids is not None and not self.fresh and len(prompt_ids) != self.attempt_prompt:
            raise PeerFault("the continuation's prompt ids are not the ones sent")
        usage = self._client_usage(chunk["usage"]) if isinstance(chunk.get("usage"), dict) else None
        if choice is None:
            return _Parsed(prompt_ids, usage, None, {}, "", None, None)
        if chat_in:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                raise PeerFault("a chat chunk without a delta")
            text = delta.get("content")
        else:
            delta, text = {}, choice.get("text")
        if text is not None and not isinstance(text, str):
            raise PeerFault("a chunk's text is not a string")
        if self._chars + len(text or "") > MAX_ANSWER_CHARS:
            raise PeerFault("the answer exceeds the response size limit")
        ids = None
        if choice.get("token_ids") is not None:
            ids = _ids(choice["token_ids"], "token_ids")
            if len(ids) > MAX_IDS_PER_CHUNK:
                raise PeerFault("a chunk carries too many token ids")
        finish = choice.get("finish_reason")
        if finish is not None and (not isinstance(finish, str) or len(finish) > 64):
            raise PeerFault("a finish_reason is not a short string")
        return _Parsed(prompt_ids, usage, choice, delta, text or "", ids, finish)

    def _record(self, parsed: _Parsed) -> None:
        """Note the chunk's ids; a chunk with text moves the clean boundary past them."""
        if not self.tracking:
            return
        if parsed.ids is None:
            if parsed.text:
                self.tracking = False  # a backend without token ids: served, but not failed over
            return
        self.pending.extend(parsed.ids)
        if parsed.text:
            self.ids.extend(self.pending)
            self.pending = []
        if len(self.ids) + len(self.pending) + len(self.prompt_ids or ()) > MAX_TRACKED_IDS:
            self.tracking = False

    def _forward(self, parsed: _Parsed) -> list[dict[str, Any]]:
        """The client's chunk for a provider chunk, in the client's shape, without the id fields."""
        text, finish = parsed.text, parsed.finish
        assert parsed.choice is not None
        if text:
            self._chars += len(text)
            if not self.plan.client_stream:
                self.text.append(text)
        if self.path == CHAT:
            out_delta = {k: v for k, v in parsed.delta.items() if k != "token_ids"} if self.attempt_path == CHAT else {}
            if self.attempt_path != CHAT and text:
                out_delta["content"] = text
            if "role" in out_delta:
                if self.role_sent:
                    del out_delta["role"]
                self.role_sent = True
            has_more = any(k != "content" for k in out_delta) or out_delta.get("content")
            if not has_more and finish is None:
                return []  # only held-back ids: the uninterrupted stream has no such chunk
            out_choice: dict[str, Any] = {"index": 0, "delta": out_delta, "logprobs": None, "finish_reason": finish}
        else:
            if not text and finish is None:
                return []
            out_choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if finish is not None and "stop_reason" in parsed.choice:
            out_choice["stop_reason"] = parsed.choice["stop_reason"]
        extra = {"usage": _usage_json(parsed.usage)} if parsed.usage is not None and self.plan.client_usage else {}
        return [self._client_chunk({"choices": [out_choice], **extra})]

    def _client_chunk(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self.shape is not None
        kind = "chat.completion.chunk" if self.path == CHAT else "text_completion"
        return {"id": self.shape.id, "object": kind, "created": self.shape.created, "model": self.shape.model, **body}

    def _client_usage(self, raw: dict[str, Any]) -> Usage:
        """The client's usage from the current attempt's own: original prompt, every generated token."""
        completion = raw.get("completion_tokens")
        if not isinstance(completion, int) or isinstance(completion, bool) or not 0 <= completion <= MAX_TRACKED_IDS:
            raise PeerFault("usage.completion_tokens is not a token count")
        if self.fresh:
            prompt = raw.get("prompt_tokens")
            if not isinstance(prompt, int) or isinstance(prompt, bool) or not 0 <= prompt <= MAX_TRACKED_IDS:
                raise PeerFault("usage.prompt_tokens is not a token count")
            return Usage(prompt_tokens=prompt, completion_tokens=completion)
        return Usage(prompt_tokens=len(self.prompt_ids or ()), completion_tokens=self.attempt_prefix + completion)

    # -- failing over -------------------------------------------------------------------

    def can_continue(self) -> str:
        """Why the answer cannot be continued elsewhere ("" if it can)."""
        if not self.plan.failover:
            return self.plan.reason
        if self.done:
            return "the answer had ended"
        if not self.tracking:
            return "the provider sent no token ids"
        if self.prompt_ids is None and self._chars:
            return "the provider sent no prompt ids"
        if self.attempts - self.moves > MAX_FAILOVERS:
            return f"{MAX_FAILOVERS} failovers already"
        return ""

    def continuation(self) -> dict[str, Any]:
        """The ``/v1/completions`` body that continues the answer from its clean boundary; call
        ``begin`` before feeding its response. Only when ``can_continue()`` is "".

        Lost before the prompt's ids arrived (so before any text): the client's request again."""
        assert self.plan.failover
        body = self.plan.body
        if self.prompt_ids is None:
            self.ids, self.attempt_path, self.fresh = [], self.path, True
            return dict(body)
        self.fresh = False
        k = len(self.ids)
        prompt = self.prompt_ids + self.ids
        sent: dict[str, Any] = {name: body[name] for name in _CONTINUED_FIELDS if name in body}
        sent.update(prompt=prompt, n=1, stream=True, return_token_ids=True, stream_options={"include_usage": True})
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int):
            sent["max_tokens"] = max(1, limit - k)
        minimum = body.get("min_tokens")
        if isinstance(minimum, int) and minimum > 0:
            sent["min_tokens"] = max(0, minimum - k)
        seed = body.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            sent["seed"] = continuation_seed(seed, k)
        self.attempt_path = COMPLETIONS
        self.attempt_prefix = k
        self.attempt_prompt = len(prompt)
        return sent

    def ended(self) -> bool:
        """True when the answer is whole though its provider was lost before ``[DONE]``: its
        finish chunk came, or the clean ids reach the client's ``max_tokens``."""
        body = self.plan.body
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return self.finish_reason is not None or (isinstance(limit, int) and len(self.ids) >= limit)

    def finish_here(self) -> bytes:
        """End an ``ended`` answer without another provider: what the client still lacks of the
        finish chunk, the usage chunk and ``[DONE]``."""
        chunks = []
        if self.finish_reason is None:
            self.finish_reason = "length"
            finish: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "length"}
            if self.path == CHAT:
                finish["delta"] = {}
            else:
                finish["text"] = ""
            chunks.append(self._client_chunk({"choices": [finish]}))
        if self.usage is None:
            generated = len(self.ids) + len(self.pending)
            self.usage = Usage(prompt_tokens=len(self.prompt_ids or ()), completion_tokens=generated)
            if self.plan.client_usage:
                chunks.append(self._client_chunk({"choices": [], "usage": _usage_json(self.usage)}))
        self.done = True
        if not self.plan.client_stream:
            return b""
        held = self._release()
        return held + b"".join(b"data: " + dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"

    # -- a non-streamed client ------------------------------------------------------------

    def backend_failure(self) -> ErrorInfo | None:
        """The backend's in-stream error as the error of a non-streamed answer, if it sent one."""
        if self.backend_error is None:
            return None
        code = self.backend_error.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        message = str(self.backend_error.get("message") or "the backend failed the request")
        kind = self.backend_error.get("type")
        return error_info(status, message, type=str(kind)[:128] if kind else None)

    def assemble(self) -> dict[str, Any]:
        """The non-streamed response body of the whole answer (after ``done``)."""
        shape = self.shape or Shape("", 0, "")
        text = "".join(self.text)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": self.finish_reason}
        if self.path == CHAT:
            choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            kind: Literal["chat.completion", "text_completion"] = "chat.completion"
        else:
            choice["text"] = text
            kind = "text_completion"
        if self.stop_reason is not None:
            choice["stop_reason"] = self.stop_reason
        body: dict[str, Any] = {
            "id": shape.id,
            "object": kind,
            "created": shape.created,
            "model": shape.model,
            "choices": [choice],
        }
        if self.fingerprint is not None:
            body["system_fingerprint"] = self.fingerprint
        if self.usage is not None:
            body["usage"] = _usage_json(self.usage)
        return body


def _usage_json(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
