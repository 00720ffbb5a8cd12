"""core/request_policy.py with an injected clock and random: whatever a provider does at whatever
frame, a request ends in one whole answer (failed over) or one explicit error, never a hang and
never duplicated or missing text; busy, unreachable and silent providers are passed over within
MAX_ATTEMPTS, and every way of failing maps to the OpenAI error the endpoint always gave.

The driver here is the gateway's loop without I/O: providers are scripts of response events
(the frames vLLM's stream makes, as tests/core/test_continuation.py builds them), and a silent
provider is the clock jumping to the policy's timer.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garage_p2p.core.capabilities import CapabilityAd
from garage_p2p.core.continuation import CHAT, COMPLETIONS, MAX_FAILOVERS, Transcript, plan
from garage_p2p.core.deadlines import FIRST_BYTE_MIN, STALL_FLOOR, FirstByteHistory
from garage_p2p.core.exchange import ResponseData, ResponseEnd, ResponseEvent, ResponseFailed, truncated_failure
from garage_p2p.core.messages import EndInfo, RequestHead, Usage, error_body, error_info
from garage_p2p.core.request_policy import (
    MAX_ATTEMPTS,
    MAX_BUSY_WAIT,
    MAX_ROUNDS,
    Answering,
    Ban,
    Close,
    Delivered,
    Emit,
    Finish,
    Moved,
    Open,
    RequestPolicy,
    Route,
)
from garage_p2p.core.routing import Candidate, RouteRequest

from .test_continuation import PROMPT_IDS, TOKENS, client_view, provider_stream

TIMEOUT = 600.0
FRAME_GAP = 0.05
"""Seconds between two frames of a live provider."""
LOSSES = ("cut", "stall", "backend")
"""How a provider is lost mid-answer: its stream cut (truncated), silence, its backend's 503."""


@dataclass
class Script:
    """What one provider does with any request it gets."""

    kind: str = "good"
    """``good``, ``unreachable``, ``busy`` (429), ``silent``, ``refuse`` (a 400), or a loss of LOSSES."""
    at: int = 0
    """For a loss: frames sent before it."""
    retry_after: float = 1.0
    busy_first: int = 0
    """Requests it answers busy (429) before it behaves as ``kind`` says."""


def frames(wire: bytes) -> list[bytes]:
    """A provider's stream as frames: one SSE event each (the provider coalesces; any split works)."""
    return [block + b"\n\n" for block in wire.split(b"\n\n") if block]


def answer_frames(head: RequestHead, tokens: list[bytes]) -> list[bytes]:
    """What a good provider streams for ``head``: the answer, or its continuation from the head's ids."""
    body = head.body
    if head.path == COMPLETIONS and isinstance(body.get("prompt"), list):
        start = len(body["prompt"]) - len(PROMPT_IDS)
        return frames(provider_stream(COMPLETIONS, tokens, start, usage_prompt=len(body["prompt"])))
    return frames(provider_stream(head.path, tokens, 0, usage_prompt=len(PROMPT_IDS)))


def events_of(script: Script, head: RequestHead, tokens: list[bytes], call: int = 1) -> list[ResponseEvent | None]:
    """The provider's events for its ``call``-th request; None is silence (nothing more comes)."""
    if script.kind == "busy" or call <= script.busy_first:
        info = error_info(429, "busy", type="rate_limit_error", code="provider_busy", retryable=True)
        return [ResponseFailed(info.model_copy(update={"retry_after": script.retry_after}))]
    if script.kind == "refuse":
        return [ResponseFailed(error_info(400, "bad request", type="invalid_request_error"))]
    if script.kind == "silent":
        return [None]
    sent: list[ResponseEvent | None] = [ResponseData(f) for f in answer_frames(head, tokens)]
    sent.append(ResponseEnd(EndInfo(usage=Usage(prompt_tokens=4, completion_tokens=len(tokens)))))
    if script.kind == "good":
        return sent
    loss: ResponseEvent | None = {
        "cut": truncated_failure("connection reset"),
        "stall": None,
        "backend": ResponseFailed(error_info(503, "backend gone", type="server_error", retryable=True)),
    }[script.kind]
    return sent[: script.at] + [loss]


@dataclass
class Run:
    finish: Finish
    out: bytes
    opened: list[str]
    banned: list[str]
    now: float
    policy: RequestPolicy
    moved: list[str]
    delivered: list[Delivered]


def drive(
    scripts: dict[str, Script],
    tokens: list[bytes],
    *,
    path: str = CHAT,
    stream: bool = True,
    failover: bool = True,
    rng: random.Random | None = None,
    relayed: bool = False,
    ban_s: float | None = None,
) -> Run:
    """The gateway's loop, without I/O: route to the providers not banned, play their scripts. A ban
    lasts ``ban_s`` (None: for good)."""
    body = {"model": "tiny", "max_tokens": len(tokens), "temperature": 0, "stream": stream}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"})
    sending = plan(path, body, None if failover else "off")
    head = RequestHead(request_id="req-1", path=path, body=sending.body, timeout=TIMEOUT)
    now = 1000.0
    policy = RequestPolicy(
        head,
        "tiny",
        now,
        transcript=Transcript(path, sending) if sending.failover else None,
        client_stream=stream,
        prompt_tokens=10,
        first_bytes=FirstByteHistory(),
    )
    order = list(scripts)
    (rng or random.Random(0)).shuffle(order)
    out: list[bytes] = []
    opened: list[str] = []
    banned: list[str] = []
    banned_until: dict[str, float] = {}
    calls: dict[str, int] = {}
    moved: list[str] = []
    delivered: list[Delivered] = []
    closed: set[int] = set()
    playing: list[ResponseEvent | None] = []
    attempt = 0
    for _ in range(100_000):
        while commands := policy.commands():
            for command in commands:
                if isinstance(command, Route):
                    candidates = [Candidate(p, 1.0, True) for p in order if banned_until.get(p, now) <= now]
                    known = [] if not scripts else [_ad(p) for p in scripts]
                    policy.routed(candidates, known, RouteRequest("tiny"), now)
                elif isinstance(command, Open):
                    assert command.attempt > attempt
                    attempt = command.attempt
                    opened.append(command.provider)
                    script = scripts[command.provider]
                    calls[command.provider] = calls.get(command.provider, 0) + 1
                    if script.kind == "unreachable":
                        policy.open_failed(attempt, "no route", now)
                    else:
                        playing = events_of(script, command.head, tokens, calls[command.provider])
                        # Relayed: the relay's limit is reached as the attempt opens (any loss is its cut).
                        policy.opened(attempt, now, now if relayed else None)
                elif isinstance(command, Close):
                    closed.add(command.attempt)
                elif isinstance(command, Ban):
                    banned.append(command.provider)
                    banned_until[command.provider] = float("inf") if ban_s is None else now + ban_s
                elif isinstance(command, Moved):
                    moved.append(command.provider)
                elif isinstance(command, Delivered):
                    delivered.append(command)
                elif isinstance(command, Emit):
                    out.append(command.data)
                elif isinstance(command, Finish):
                    assert policy.commands() == []
                    return Run(command, b"".join(out), opened, banned, now, policy, moved, delivered)
                else:
                    assert isinstance(command, Answering)
        if policy.finished is not None:
            continue
        if playing and playing[0] is not None:
            now += FRAME_GAP
            event = playing.pop(0)
            assert event is not None
            policy.received(attempt, event, now)
        else:
            timer = policy.get_timer()
            assert timer is not None and timer <= 1000.0 + TIMEOUT
            now = max(now, timer)
            policy.handle_timer(now)
    raise AssertionError("the request never ended")


def _ad(peer_id: str) -> CapabilityAd:
    return CapabilityAd.model_construct(peer_id=peer_id, region=None)


TEXT = [b"Hello", b",", b" w", b"orld", b" ", b"\xc3", b"\xa9", b"!"]
EXPECTED = b"".join(TEXT).decode()


def assert_whole(run: Run, tokens: list[bytes] = TEXT) -> None:
    text, chunks, done = client_view(run.out)
    assert run.finish.error is None, run.finish.error
    assert text == b"".join(tokens).decode("utf-8", "replace")
    assert done == 1
    usage = run.policy.usage
    assert usage is not None and usage.completion_tokens == len(tokens)


def assert_explicit_error(run: Run, tokens: list[bytes] = TEXT) -> None:
    text, _, done = client_view(run.out)
    assert run.finish.error is not None
    assert done == 0
    assert b"".join(tokens).decode("utf-8", "replace").startswith(text)  # no duplicated or invented text


# -- a provider lost at every frame -----------------------------------------------------------------


N_FRAMES = len(frames(provider_stream(CHAT, TEXT, 0, usage_prompt=4))) + 1  # the SSE events and END


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("at", range(N_FRAMES))
def test_a_provider_lost_at_any_frame_is_continued_into_the_whole_answer(path, loss, at):
    run = drive({"lost": Script(loss, at), "good": Script()}, TEXT, path=path, rng=_first("lost"))
    assert_whole(run)
    assert run.opened[0] == "lost"
    assert "lost" in run.banned
    if loss == "stall" and at > 0:
        assert run.now - 1000.0 < FIRST_BYTE_MIN + STALL_FLOOR + 5  # seconds, not the request's 600


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("at", range(N_FRAMES))
def test_a_provider_lost_at_any_frame_with_nobody_to_continue_ends_in_an_explicit_error(loss, at):
    run = drive({"lost": Script(loss, at)}, TEXT)
    if at > len(TEXT):  # its last token (with its finish reason) came: the answer is whole
        assert_whole(run)
        return
    assert_explicit_error(run)
    assert run.finish.error is not None
    if at > 0:
        assert "no provider could continue the answer" in run.finish.error.error.message
    assert run.now - 1000.0 < TIMEOUT


@pytest.mark.parametrize("at", range(1, len(TEXT) + 1))
def test_without_failover_a_lost_provider_ends_the_stream_with_its_error(at):
    run = drive({"lost": Script("cut", at), "good": Script()}, TEXT, failover=False, rng=_first("lost"))
    assert run.opened == ["lost"]
    assert run.banned == ["lost"]
    assert run.finish.error is not None and run.finish.error.error.code == "provider_disconnected"
    assert run.out == b"".join(frames(provider_stream(CHAT, TEXT, 0, usage_prompt=4))[:at])  # passed through


@settings(max_examples=200, deadline=None)
@given(
    tokens=TOKENS,
    path=st.sampled_from([CHAT, COMPLETIONS]),
    stream=st.booleans(),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_any_mix_of_providers_ends_in_one_whole_answer_or_one_error(tokens, path, stream, seed, data):
    n = len(frames(provider_stream(path, tokens, 0, usage_prompt=4))) + 1
    kinds = st.sampled_from(("good", "unreachable", "busy", "silent", *LOSSES))
    scripts = {
        f"p{i}": Script(data.draw(kinds), data.draw(st.integers(0, n - 1)))
        for i in range(data.draw(st.integers(0, MAX_ATTEMPTS + MAX_FAILOVERS)))
    }
    run = drive(scripts, tokens, path=path, stream=stream, rng=random.Random(seed))
    assert run.now <= 1000.0 + TIMEOUT
    if run.finish.error is None:
        if stream:
            assert_whole(run, tokens)
        else:
            answer = json.loads(run.finish.body or b"")
            choice = answer["choices"][0]
            text = choice["message"]["content"] if path == CHAT else choice["text"]
            assert text == b"".join(tokens).decode("utf-8", "replace")
    else:
        assert_explicit_error(run, tokens)
        assert stream or run.out == b""
    assert len(run.opened) <= (MAX_FAILOVERS + 1) * MAX_ATTEMPTS


# -- before the first byte -----------------------------------------------------------------------------


def _first(name: str) -> random.Random:
    """A random whose shuffle puts ``name`` first among two providers."""
    for seed in range(100):
        order = [name, "other"]
        random.Random(seed).shuffle(order)
        if order[0] == name:
            return random.Random(seed)
    raise AssertionError


def test_busy_unreachable_and_silent_providers_are_banned_and_passed_over():
    scripts = {"busy": Script("busy"), "down": Script("unreachable"), "silent": Script("silent"), "good": Script()}
    order = ["busy", "down", "silent", "good"]
    for seed in range(1000):
        shuffled = list(scripts)
        random.Random(seed).shuffle(shuffled)
        if shuffled[:3] == order[:3]:
            break
    run = drive(scripts, TEXT, rng=random.Random(seed))
    # MAX_ATTEMPTS providers per round: the good one, fourth, answers in a fresh round, after the
    # busy one's retry_after (1 s).
    assert run.opened == order and MAX_ATTEMPTS == 3
    assert run.banned == order[:3]
    assert_whole(run)
    # The silent one cost its first-byte deadline, not the request's 600 s.
    assert FIRST_BYTE_MIN + 1.0 <= run.now - 1000.0 < 2 * FIRST_BYTE_MIN + 1.0


def test_a_silent_provider_loses_the_request_at_its_first_byte_deadline_and_the_next_answers():
    run = drive({"silent": Script("silent"), "other": Script()}, TEXT, rng=_first("silent"))
    assert_whole(run)
    assert run.opened == ["silent", "other"] and run.banned == ["silent"]
    assert FIRST_BYTE_MIN <= run.now - 1000.0 < 2 * FIRST_BYTE_MIN


def test_every_provider_busy_is_a_429_with_the_shortest_retry_after():
    scripts = {
        "a": Script("busy", retry_after=7.0),
        "b": Script("busy", retry_after=9.0),
        "c": Script("busy", retry_after=3.0),
    }
    run = drive(scripts, TEXT, rng=random.Random(0))
    assert run.opened[-1] != "c"  # the shortest is not merely the last
    assert run.finish.error is not None
    assert (run.finish.error.status, run.finish.error.error.code) == (429, "providers_busy")
    assert run.finish.error.retry_after == 3.0


def _order(first: list[str], names: list[str]) -> random.Random:
    """A random whose shuffle of ``names`` puts ``first`` first, in that order."""
    for seed in range(10_000):
        shuffled = list(names)
        random.Random(seed).shuffle(shuffled)
        if shuffled[: len(first)] == first:
            return random.Random(seed)
    raise AssertionError


def test_busy_providers_are_waited_for_their_retry_after_then_a_fresh_round_answers():
    """Every provider of the first round busy (429, retry after 2 s): the client gets the answer a
    moment later, not the 429 it would have retried itself."""
    scripts = {name: Script(busy_first=1, retry_after=2.0) for name in ("a", "b", "c")}
    run = drive(scripts, TEXT, ban_s=1.0)
    assert_whole(run)
    assert len(run.opened) == MAX_ATTEMPTS + 1 and set(run.opened[:3]) == {"a", "b", "c"}
    assert 2.0 <= run.now - 1000.0 < 2.0 + 1.0  # the wait, and the answer's frames


def test_a_busy_wait_longer_than_the_cap_or_past_the_deadline_is_the_clients_429():
    scripts = {name: Script(busy_first=1, retry_after=MAX_BUSY_WAIT + 1.0) for name in ("a", "b", "c")}
    run = drive(scripts, TEXT, ban_s=1.0)
    assert len(run.opened) == MAX_ATTEMPTS
    assert run.finish.error is not None and run.finish.error.status == 429
    assert run.finish.error.retry_after == MAX_BUSY_WAIT + 1.0 and run.now - 1000.0 < 1.0
    head = RequestHead(request_id="r", path=CHAT, body={"model": "tiny"}, timeout=1.5)
    policy = RequestPolicy(
        head, "tiny", 0.0, transcript=None, client_stream=False, prompt_tokens=0, first_bytes=FirstByteHistory()
    )
    policy.commands()
    policy.routed([Candidate("a", 1.0, True)], [], RouteRequest("tiny"), 0.0)
    [open_] = policy.commands()
    assert isinstance(open_, Open)
    policy.opened(open_.attempt, 0.0)
    busy = error_info(429, "busy", type="rate_limit_error", code="provider_busy", retryable=True, retry_after=2.0)
    policy.received(open_.attempt, ResponseFailed(busy), 0.1)
    finish = policy.commands()[-1]
    assert isinstance(finish, Finish) and finish.error is not None and finish.error.status == 429
    assert not policy.pausing  # 0.1 + 2 s is past the request's 1.5 s


def test_a_round_of_unreachable_providers_is_followed_at_once_by_a_fresh_one():
    names = ["d1", "d2", "d3", "good"]
    scripts = {name: Script("unreachable") for name in names[:3]} | {"good": Script()}
    run = drive(scripts, TEXT, rng=_order(names[:3], names))
    assert run.opened == names and run.banned == names[:3]
    assert_whole(run)
    assert run.now - 1000.0 < 1.0  # no wait: nobody asked for one


def test_fresh_rounds_are_bounded_and_the_last_one_says_what_happened():
    """Providers busy whatever happens: MAX_ROUNDS rounds, then the 429; a fresh round with nobody
    eligible left answers the round before it (not "every provider failed recently")."""
    scripts = {name: Script("busy", retry_after=1.0) for name in ("a", "b", "c")}
    run = drive(scripts, TEXT, ban_s=0.5)
    assert len(run.opened) == MAX_ROUNDS * MAX_ATTEMPTS
    assert run.finish.error is not None and (run.finish.error.status, run.finish.error.error.code) == (
        429,
        "providers_busy",
    )
    assert run.now - 1000.0 < MAX_ROUNDS * 1.0
    forever = drive(scripts, TEXT)  # banned for good: the second round finds nobody
    assert len(forever.opened) == MAX_ATTEMPTS
    assert forever.finish.error is not None and forever.finish.error.error.code == "providers_busy"


def test_a_continuation_whose_round_is_busy_waits_and_finishes_the_answer():
    """The answer's provider lost mid-answer, every other one busy for a moment: the stream goes on
    after the wait instead of ending in an error."""
    names = ["lost", "b1", "b2", "b3"]
    scripts = {"lost": Script("cut", 3)} | {name: Script(busy_first=1) for name in names[1:]}
    run = drive(scripts, TEXT, rng=_order(names, names), ban_s=1.0)
    assert_whole(run)
    assert run.opened[:4] == names and run.opened[-1] in names[1:]
    assert run.policy.failovers >= 1


def test_every_provider_unreachable_is_a_503_naming_the_last_failure():
    run = drive({"a": Script("unreachable"), "b": Script("unreachable")}, TEXT)
    error = run.finish.error
    assert error is not None and (error.status, error.error.code) == (503, "no_provider_available")
    assert "provider unreachable: no route" in error.error.message


def test_a_request_the_provider_refuses_is_not_tried_elsewhere():
    run = drive({"a": Script("refuse"), "b": Script("refuse")}, TEXT)
    assert len(run.opened) == 1 and run.banned == []
    assert run.finish.error is not None and run.finish.error.status == 400


def test_nobody_serving_the_model_is_a_404():
    run = drive({}, TEXT)
    error = run.finish.error
    assert error is not None and (error.status, error.error.type, error.error.param) == (404, "NotFoundError", "model")
    # As vLLM answers a model it does not serve: its integer code in the body the client gets.
    assert error_body(error)["error"]["code"] == 404


def test_known_providers_none_eligible_in_the_region_is_a_503_naming_the_regions():
    policy = RequestPolicy(
        RequestHead(request_id="r", path=CHAT, body={"model": "tiny"}, timeout=TIMEOUT),
        "tiny",
        0.0,
        transcript=None,
        client_stream=False,
        prompt_tokens=0,
        first_bytes=FirstByteHistory(),
    )
    assert policy.commands() == [Route(None)]
    ad = CapabilityAd.model_construct(peer_id="p", region="se-sto")
    policy.routed([], [ad], RouteRequest("tiny", region="no-osl"), 0.0)
    [finish] = policy.commands()
    assert isinstance(finish, Finish) and finish.error is not None
    assert (finish.error.status, finish.error.error.code) == (503, "no_provider_in_region")
    assert "se-sto" in finish.error.error.message


def test_the_requests_deadline_is_a_504_and_stale_events_change_nothing():
    head = RequestHead(request_id="r", path=CHAT, body={"model": "tiny", "stream": True}, timeout=30.0)
    policy = RequestPolicy(
        head, "tiny", 0.0, transcript=None, client_stream=True, prompt_tokens=0, first_bytes=FirstByteHistory()
    )
    policy.commands()
    policy.routed([Candidate("a", 1.0, True, parts={"ttft": 20.0})], [], RouteRequest("tiny"), 0.0)
    [open_] = policy.commands()
    assert isinstance(open_, Open)
    policy.opened(open_.attempt, 0.0)
    assert policy.get_timer() == 30.0  # 4 × 20 s + 3 s is past the request's own end
    policy.received(open_.attempt + 1, ResponseData(b"data: x\n\n"), 1.0)  # not this attempt's
    assert policy.commands() == [] and not policy.answered
    policy.handle_timer(29.0)  # early: nothing
    assert policy.commands() == []
    policy.handle_timer(30.0)
    commands = policy.commands()
    assert isinstance(commands[-1], Finish) and commands[-1].error is not None
    assert (commands[-1].error.status, commands[-1].error.error.code) == (504, "deadline_exceeded")
    assert policy.get_timer() is None


def test_a_non_streamed_answer_passes_through_whole_without_failover():
    run = drive({"a": Script()}, TEXT, stream=False, failover=False)
    assert run.finish.error is None and run.out == b""
    assert run.finish.body == provider_stream(CHAT, TEXT, 0, usage_prompt=4)  # the provider's bytes, unchanged


def test_a_relay_s_cut_moves_the_answer_to_the_same_provider_unbanned_and_uncounted():
    """A relay cuts its circuits at its limit (core/relaying.py): the only provider is not banned, its
    connection is dropped (Moved) and the answer goes on there, as often as the relay cuts it: moves
    are no failovers (MAX_FAILOVERS would end the answer)."""
    cuts = MAX_FAILOVERS + 2
    run = drive({"p": Script("cut", at=3)}, TEXT, relayed=True)
    assert_whole(run)
    assert run.banned == [] and run.moved == ["p"] * len(run.moved) and len(run.moved) >= cuts
    assert set(run.opened) == {"p"}
    # The same cuts on a direct connection are failovers: the answer ends in an error past MAX_FAILOVERS.
    direct = drive({"p": Script("cut", at=3)}, TEXT)
    assert direct.finish.error is not None and direct.moved == []
    # A relay that cuts before a token came through is no move (it would loop): the provider is banned.
    stuck = drive({"p": Script("cut", at=2)}, TEXT, relayed=True)
    assert stuck.finish.error is not None and stuck.banned == ["p"] and len(stuck.moved) < 10


def test_a_streamed_answer_reports_what_its_provider_delivered():
    run = drive({"a": Script()}, TEXT)
    assert_whole(run)
    [delivered] = run.delivered
    d = delivered.delivery
    assert delivered.provider == "a" and d.tokens == len(TEXT)  # counted in the transcript
    assert d.ttft == pytest.approx(FRAME_GAP)  # the first frame came one gap after the head
    assert d.decode == pytest.approx(run.now - 1000.0 - FRAME_GAP)  # first frame to END


def test_a_continued_answer_reports_only_the_provider_that_finished_with_its_own_tokens():
    run = drive({"lost": Script("cut", at=4), "other": Script()}, TEXT, rng=_first("lost"))
    assert_whole(run)
    [delivered] = run.delivered
    assert delivered.provider == "other" and 0 < delivered.delivery.tokens < len(TEXT)


def test_a_non_streamed_answer_reports_no_delivery():
    """Its first byte is its last: neither a TTFT nor a pace can be read from it."""
    run = drive({"a": Script()}, TEXT, stream=False, failover=False)
    assert run.finish.error is None and run.delivered == []
