"""The owner-first policy with injected clocks: pause at once, resume after the quiet period, hysteresis, schedule."""

from __future__ import annotations

import pytest

from garage_p2p.core.owner_activity import OwnerPolicy, OwnerSample, parse_window

NOON = 12 * 3600
GAME = OwnerSample(named_processes=("game.exe",))
IDLE = OwnerSample()


def test_activity_pauses_at_once_and_resumes_after_the_quiet_period() -> None:
    policy = OwnerPolicy(quiet=30)
    assert policy.observe(0, NOON, IDLE) is None
    paused = policy.observe(1, NOON, GAME)
    assert paused is not None and not paused.serving
    assert paused.reason == "owner activity: process game.exe"
    assert policy.observe(10, NOON, GAME) is None  # still playing: no change
    assert policy.get_timer() == 40  # 30 s after the last sighting
    assert policy.observe(20, NOON, IDLE) is None  # quiet, but not for long enough
    assert policy.handle_timer(39.9, NOON) is None
    resumed = policy.handle_timer(40, NOON)
    assert resumed is not None and resumed.serving and resumed.reason is None
    assert policy.get_timer() is None


def test_a_foreign_gpu_process_pauses() -> None:
    policy = OwnerPolicy(quiet=5)
    decision = policy.observe(0, NOON, OwnerSample(gpu_processes=("blender (pid 42)",)))
    assert decision is not None and decision.reason == "owner activity: GPU process blender (pid 42)"
    assert decision.resume_at == 5


def test_gpu_utilisation_counts_only_while_we_serve_nothing_and_has_hysteresis() -> None:
    policy = OwnerPolicy(quiet=0, util_high=30, util_low=10)
    assert policy.observe(0, NOON, OwnerSample(gpu_utilisation=95, ours_busy=True)) is None  # ours
    assert policy.observe(1, NOON, OwnerSample(gpu_utilisation=20)) is None  # below the high mark
    paused = policy.observe(2, NOON, OwnerSample(gpu_utilisation=60))
    assert paused is not None and paused.reason == "owner activity: GPU 60 % busy, not by us"
    # Between the marks: still the owner's (a game's menu), the pause goes on.
    assert policy.observe(3, NOON, OwnerSample(gpu_utilisation=20)) is not None  # reason now says 20 %
    assert not policy.decision.serving
    resumed = policy.observe(4, NOON, OwnerSample(gpu_utilisation=5))
    assert resumed is not None and resumed.serving


def test_schedule_windows_pause_and_end_on_time() -> None:
    policy = OwnerPolicy(quiet=60, windows=(parse_window("18:00-23:00"),))
    assert policy.observe(0, 17 * 3600 + 59 * 60, IDLE) is None
    assert policy.get_timer() == 60  # the window opens in a minute
    opened = policy.handle_timer(60, 18 * 3600)
    assert opened is not None and opened.reason == "schedule 18:00–23:00"
    assert opened.resume_at == 60 + 5 * 3600
    assert policy.get_timer() == 60 + 5 * 3600
    closed = policy.handle_timer(60 + 5 * 3600, 23 * 3600)
    assert closed is not None and closed.serving


def test_a_window_across_midnight() -> None:
    window = parse_window("22:30-06:00")
    assert window.covers(23 * 3600) and window.covers(3600) and not window.covers(12 * 3600)
    policy = OwnerPolicy(quiet=0, windows=(window,))
    decision = policy.observe(0, 3600, IDLE)
    assert decision is not None and not decision.serving and decision.resume_at == 5 * 3600


@pytest.mark.parametrize("text", ["18-23", "25:00-01:00", "10:00-10:00", "10:61-11:00", ""])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)
