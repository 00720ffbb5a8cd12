"""Owner first: when the rig's owner uses the machine, the peer steps aside (issue 21).

The policy, without I/O: the daemon's probes (provider/owner_probe.py) report what they saw
(GPU processes that are not ours, GPU utilisation, processes from the owner's list) as an
``OwnerSample``; the policy says whether the rig serves and, if not, why. Activity pauses at
once (the owner must not wait for us); serving resumes only after ``quiet`` seconds without any
(a game's loading screens and menus leave the GPU idle for a while: resuming at each would
start and stop the model container over and over). GPU utilisation has hysteresis: it takes
``util_high`` percent to count as activity and, once paused for it, only below ``util_low`` is
the GPU quiet. The schedule (hours of the day the rig never serves) is read from the local time
of day the daemon passes in.

Time: ``now`` is the daemon's monotonic clock (quiet periods), ``day_seconds`` the local wall
time since midnight (the schedule); ``get_timer`` says when a decision may change without a new
sample, ``handle_timer`` applies it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

DAY = 24 * 3600
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*[-–]\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class ScheduleWindow:
    """Hours of the day during which the rig does not serve; may cross midnight (22:00-06:00)."""

    start: int
    """Seconds after local midnight at which the window opens."""
    end: int
    """Seconds after local midnight at which it closes (before ``start``: the next day's)."""

    def covers(self, day_seconds: float) -> bool:
        if self.start <= self.end:
            return self.start <= day_seconds < self.end
        return day_seconds >= self.start or day_seconds < self.end

    def label(self) -> str:
        return f"{_clock(self.start)}–{_clock(self.end)}"


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def parse_window(text: str) -> ScheduleWindow:
    """``"18:00-23:00"`` → a window; ValueError for anything else (an empty window too)."""
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"expected HH:MM-HH:MM, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 == 24 and m1) or (h2 == 24 and m2):
        raise ValueError(f"not a time of day in {text!r}")
    start, end = (h1 * 3600 + m1 * 60) % DAY, (h2 * 3600 + m2 * 60) % DAY
    if start == end:
        raise ValueError(f"the window {text!r} is empty")
    return ScheduleWindow(start, end)


@dataclass(frozen=True)
class OwnerSample:
    """One look at the machine by the daemon's probes."""

    gpu_processes: tuple[str, ...] = ()
    """GPU processes that are not ours, as ``name (pid N)``."""
    gpu_utilisation: float | None = None
    """The busiest GPU's utilisation in percent; None when no GPU was read."""
    ours_busy: bool = False
    """Whether our backend had requests in flight during the sample: the utilisation may be ours then,
    so it says nothing about the owner."""
    named_processes: tuple[str, ...] = ()
    """Running processes whose name is on the owner's list (``owner_processes``)."""


@dataclass(frozen=True)
class OwnerDecision:
    """Whether the rig serves, and why not."""

    serving: bool
    """False while the owner comes first."""
    reason: str | None = None
    """Why it does not serve: ``owner activity: process game.exe``, ``schedule 18:00–23:00``."""
    resume_at: float | None = None
    """When it serves again if nothing more is seen (the ``now`` clock); None when unknown."""


class OwnerPolicy:
    """The owner-first decision: activity pauses at once, ``quiet`` seconds without it resume."""

    def __init__(
        self,
        quiet: float,
        windows: tuple[ScheduleWindow, ...] = (),
        util_high: float = 30.0,
        util_low: float = 10.0,
    ) -> None:
        if util_low > util_high:
            raise ValueError("util_low must not exceed util_high")
        self.quiet = quiet
        self.windows = windows
        self.util_high = util_high
        self.util_low = util_low
        self._activity: str | None = None
        """What the owner was last seen doing (kept through the quiet period, for the status line)."""
        self._last_active: float = -math.inf
        self._util_active = False
        """Whether the last counted utilisation was the owner's (the hysteresis' state)."""
        self._clock: tuple[float, float] | None = None
        """The last (now, day_seconds) pair: where the schedule's boundaries fall on the ``now`` clock."""
        self.decision = OwnerDecision(serving=True)

    # -- inputs ---------------------------------------------------------------------------------

    def observe(self, now: float, day_seconds: float, sample: OwnerSample) -> OwnerDecision | None:
        """A new sample; returns the decision if it changed."""
        activity = self._activity_of(sample)
        if activity is not None:
            self._activity = activity
            self._last_active = now
        return self._decide(now, day_seconds, seen=activity is not None)

    def handle_timer(self, now: float, day_seconds: float) -> OwnerDecision | None:
        """The quiet period ended or a schedule window opened or closed; the decision if it changed."""
        return self._decide(now, day_seconds)

    def get_timer(self) -> float | None:
        """When the decision may change without a new sample (``now`` clock); None: only on a sample."""
        times = []
        if self._activity is not None and math.isfinite(self._last_active):
            times.append(self._last_active + self.quiet)
        if self.windows and self._clock is not None:
            now, day = self._clock
            boundaries = [b for w in self.windows for b in (w.start, w.end)]
            times.append(now + min((b - day) % DAY or DAY for b in boundaries))
        return min(times) if times else None

    # -- the rules ------------------------------------------------------------------------------

    def _activity_of(self, sample: OwnerSample) -> str | None:
        if sample.named_processes:
            return "process " + ", ".join(sample.named_processes)
        if sample.gpu_processes:
            return "GPU process " + ", ".join(sample.gpu_processes)
        util = sample.gpu_utilisation
        if util is None or sample.ours_busy:
            # Unread, or possibly ours: no evidence either way, the hysteresis' state stays.
            return None
        self._util_active = util >= (self.util_low if self._util_active else self.util_high)
        return f"GPU {util:.0f} % busy, not by us" if self._util_active else None

    def _decide(self, now: float, day_seconds: float, seen: bool = False) -> OwnerDecision | None:
        self._clock = (now, day_seconds)
        window = next((w for w in self.windows if w.covers(day_seconds)), None)
        if not seen and self._activity is not None and now - self._last_active >= self.quiet:
            self._activity = None  # quiet long enough: forgotten
        if window is not None:
            end = now + (window.end - day_seconds) % DAY
            new = OwnerDecision(False, f"schedule {window.label()}", end)
        elif self._activity is not None:
            new = OwnerDecision(False, f"owner activity: {self._activity}", self._last_active + self.quiet)
        else:
            new = OwnerDecision(True)
        changed = (new.serving, new.reason) != (self.decision.serving, self.decision.reason)
        self.decision = new
        return new if changed else None
