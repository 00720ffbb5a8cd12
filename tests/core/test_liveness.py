from garage_p2p.core.liveness import FOLLOWER_LAG, PONG_TIMEOUT, QUIET, RELAXED, STALL, Close, Liveness, Penalise, Ping

T0 = 1000.0


def drive(live: Liveness, until: float, answer: bool = True) -> tuple[list, float]:
    """Run the timer up to ``until``, answering every ping at once if ``answer``; the commands seen."""
    seen: list = []
    for _ in range(10_000):
        due = live.get_timer()
        if due is None or due > until:
            return seen, until
        for command in live.handle_timer(due):
            seen.append((due, command))
            if answer and isinstance(command, Ping):
                assert live.pong(command.conn, command.nonce, due + 0.001) == []
    raise AssertionError("the timer did not advance")


def test_a_silent_connection_is_pinged_when_quiet_then_closed_within_ten_seconds():
    live = Liveness()
    live.opened(1, "peer-a", T0)
    live.heard(1, T0 + 2)  # its last frame
    seen, _ = drive(live, T0 + 60, answer=False)
    [(pinged_at, ping), (closed_at, close)] = seen
    assert ping == Ping(1, 1) and pinged_at == T0 + 2 + QUIET
    assert close == Close(1, "peer-a", QUIET + PONG_TIMEOUT, last=True)
    assert closed_at - (T0 + 2) <= 10
    assert live.get_timer() is None and not live.watching(1)


def test_a_connection_that_answers_is_never_closed_and_traffic_is_never_pinged():
    live = Liveness()
    live.opened(1, "idle", T0)
    live.opened(2, "busy", T0)
    now = T0
    for _ in range(100):  # the busy one receives a frame every second
        now += 1
        live.heard(2, now)
        for command in live.handle_timer(now):
            assert isinstance(command, Ping) and command.conn == 1
            live.pong(1, command.nonce, now + 0.3)
    assert live.watching(1) and live.watching(2)
    # about one per QUIET seconds (this loop ticks each second), all on the idle one
    assert 100 / (QUIET + 2) <= live.pings <= 100 / QUIET


def test_any_frame_after_the_ping_counts_as_the_answer():
    live = Liveness()
    live.opened(1, "p", T0)
    [ping] = live.handle_timer(T0 + QUIET)
    live.heard(1, T0 + QUIET + PONG_TIMEOUT - 0.5)  # a data frame, not the pong
    assert live.handle_timer(T0 + QUIET + PONG_TIMEOUT) == []
    assert live.watching(1)


def test_a_peer_with_two_connections_is_gone_only_with_the_last():
    live = Liveness()
    live.opened(1, "p", T0)
    live.opened(2, "p", T0)
    live.heard(2, T0 + 3)
    seen, _ = drive(live, T0 + 60, answer=False)
    closes = [c for _, c in seen if isinstance(c, Close)]
    assert [(c.conn, c.last) for c in closes] == [(1, False), (2, True)]


def test_our_own_stall_is_not_the_peers_silence():
    """The loop was blocked past the pong's deadline: the pong may be unread in the socket, so the ping gets a grace."""
    live = Liveness()
    live.opened(1, "p", T0)
    [ping] = live.handle_timer(T0 + QUIET)
    late = T0 + QUIET + PONG_TIMEOUT + STALL + 2
    assert live.handle_timer(late) == []
    live.pong(1, ping.nonce, late + 0.01)  # the reader caught up
    assert live.handle_timer(late + 1) == [] and live.watching(1)


def test_a_pong_for_no_ping_of_ours_is_penalised_not_fatal():
    live = Liveness()
    live.opened(1, "liar", T0)
    assert live.pong(1, 7, T0 + 1) == [Penalise("liar", "a pong for no ping of ours (nonce 7, last sent 0)")]
    [ping] = live.handle_timer(T0 + 1 + QUIET)
    assert live.pong(1, ping.nonce, T0 + 7) == []
    [replayed] = live.pong(1, ping.nonce, T0 + 7.1)  # the same pong twice
    assert isinstance(replayed, Penalise)
    assert live.watching(1)  # alive, just misbehaving: the penalty box decides about bans
    assert live.pong(99, 1, T0) == []  # a connection we do not watch (closed a moment ago)


def test_the_two_ends_of_an_idle_connection_ping_once_per_quiet_period_between_them():
    """Both ends last heard a frame at the same moment (an exchange): with one clock they pinged in
    step, crossing, twice per QUIET seconds for ever. The follower waits FOLLOWER_LAG longer, so the
    leader's ping always arrives first and resets its clock."""
    leader, follower = Liveness(), Liveness()
    leader.opened(1, "follower", T0, leads=True)
    follower.opened(1, "leader", T0, leads=False)
    ends = {"leader": (leader, follower), "follower": (follower, leader)}
    now = T0
    for _ in range(1000):
        due, name = min((live.get_timer(), name) for name, (live, _) in ends.items())
        if due > T0 + 100:
            break
        now = due
        live, other = ends[name]
        for command in live.handle_timer(now):
            assert isinstance(command, Ping)
            other.heard(1, now + 0.001)  # the ping arrives: a frame for the other end
            live.pong(1, command.nonce, now + 0.002)
    assert follower.pings == 0
    assert 100 / QUIET - 1 <= leader.pings <= 100 / QUIET


def test_a_silent_peer_is_closed_within_ten_seconds_by_the_following_end_too():
    live = Liveness()
    live.opened(1, "leader", T0, leads=False)
    seen, _ = drive(live, T0 + 60, answer=False)
    [(pinged_at, _), (closed_at, close)] = seen
    assert pinged_at == T0 + QUIET + FOLLOWER_LAG and isinstance(close, Close)
    assert closed_at - T0 <= 10


def test_a_connection_nothing_waits_on_is_pinged_after_relaxed_and_one_that_matters_again_at_once():
    live = Liveness()
    live.opened(1, "consumer", T0)
    live.opened(2, "provider", T0)
    asked: list[str] = []

    def closely(peer_id: str) -> bool:
        asked.append(peer_id)
        return peer_id == "provider"

    assert live.handle_timer(T0 + QUIET, closely) == [Ping(2, 1)]  # the consumer's waits
    assert sorted(asked) == ["consumer", "provider"]
    pings: dict[int, list[float]] = {1: [], 2: [T0 + QUIET]}
    live.pong(2, 1, T0 + QUIET)
    for step in range(1, 2 * int(RELAXED) + 2):  # 30.5 s more, each ping answered at once
        now = T0 + QUIET + step / 2
        for command in live.handle_timer(now, closely):
            pings[command.conn].append(now)
            live.pong(command.conn, command.nonce, now)
    assert pings[1] == [T0 + RELAXED]
    assert pings[2] == [T0 + QUIET * k for k in range(1, int((QUIET + RELAXED) / QUIET) + 1)]

    # A consumer that goes silent is closed RELAXED + PONG_TIMEOUT after its last frame.
    seen, _ = drive(live, T0 + 2 * RELAXED + PONG_TIMEOUT - 0.1, answer=False)
    assert not any(isinstance(c, Close) and c.conn == 1 for _, c in seen) and live.watching(1)

    # One that starts to matter (a request came from it) is back to QUIET at once.
    live.opened(3, "later", T0 + 100)
    assert live.handle_timer(T0 + 100 + QUIET, closely) == []
    live.closer("later")
    assert live.get_timer() <= T0 + 100 + QUIET
    assert [type(c) for c in live.handle_timer(T0 + 100 + QUIET, lambda peer_id: True)] == [Ping]
