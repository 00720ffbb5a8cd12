"""Can Podman enforce the model container's limits here? Rootless needs cgroup v2 and delegation.

Rootful Podman sets memory, pids and CPU limits on cgroup v1 and v2 alike. Rootless Podman can
only write cgroups it owns: on cgroup v1 (or the hybrid layout, where v2 holds no controller) it
prints a warning and runs the container *without* its limits. On cgroup v2 it needs the memory,
pids and cpu controllers delegated to its user: a systemd unit with ``Delegate=memory pids cpu``
gives the service's cgroup to its ``User=`` (Podman then moves itself into a leaf below it).

The model runtime refuses to start a container whose limits would not hold (``ModelRuntime``),
and ``garage doctor`` and ``bootstrap/start.sh`` (``garage runtime check-limits``) print the same
one line naming the fix. Pure reads of a cgroup tree, so tests point it at stand-in trees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
REQUIRED = ("memory", "pids", "cpu")
"""The controllers behind the container's ``mem_limit``, ``pids_limit`` and CPU share."""
UNIFIED_FIX = (
    "boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line (cgroup v2), "
    "or run the peer as root (rootful Podman)"
)
DELEGATE_FIX = "run the peer from a unit with Delegate=memory pids cpu (bootstrap/garage-peer.service has it)"
MAX_FILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class LimitsCheck:
    """Whether the container's memory, pids and CPU limits would hold, and if not, the fix."""

    ok: bool
    """True: Podman enforces the limits for this process."""
    detail: str
    """What was found, in a few words."""
    fix: str = ""
    """What to do when not ok."""

    @property
    def line(self) -> str:
        """One line for logs, status and start.sh."""
        return self.detail + (f"; fix: {self.fix}" if self.fix else "")

    def view(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "fix": self.fix}


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE_BYTES).decode(errors="replace")
    except OSError:
        return None


def own_cgroup(proc_cgroup: Path = PROC_CGROUP) -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup), None without one."""
    for line in (_read(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _missing(controllers_file: Path) -> list[str] | None:
    text = _read(controllers_file)
    if text is None:
        return None
    present = set(text.split())
    return [c for c in REQUIRED if c not in present]


def check_limits(*, rootless: bool, cgroup_root: Path = CGROUP_ROOT, cgroup: str | None = None) -> LimitsCheck:
    """Would Podman enforce the limits? ``cgroup``: the cgroup Podman runs in (None: only ask
    whether the host can delegate, as start.sh does before the unit runs)."""
    if not rootless:
        return LimitsCheck(True, "rootful Podman: memory, pids and CPU limits hold")
    missing = _missing(cgroup_root / "cgroup.controllers")
    if missing is None:
        return LimitsCheck(
            False,
            "cgroup v1 (hybrid or legacy): rootless Podman would run the container without its limits",
            UNIFIED_FIX,
        )
    if missing:
        return LimitsCheck(
            False,
            f"cgroup v2 without the {' '.join(missing)} controller(s): rootless Podman cannot set those limits",
            "enable them in the kernel (cgroup_enable=...) and systemd",
        )
    if cgroup is None:
        return LimitsCheck(
            True, "cgroup v2 with memory, pids and cpu: a unit with Delegate=memory pids cpu can use them"
        )
    here = cgroup_root / cgroup.lstrip("/")
    missing = _missing(here / "cgroup.controllers")
    if missing is None or missing:
        what = " ".join(missing) if missing else " ".join(REQUIRED)
        return LimitsCheck(False, f"cgroup v2, but {what} not delegated to {cgroup}", DELEGATE_FIX)
    # Delegation also hands the directory to the unit's user: without it Podman cannot make sub-cgroups.
    if not (os.access(here, os.W_OK) and os.access(here / "cgroup.procs", os.W_OK)):
        return LimitsCheck(False, f"cgroup v2, but {cgroup} is not writable by this user (not delegated)", DELEGATE_FIX)
    return LimitsCheck(True, f"cgroup v2, memory pids cpu delegated to {cgroup}")


def check_this_process() -> LimitsCheck:
    """The check for the Podman this process starts (it runs in our cgroup, as our user)."""
    return check_limits(rootless=os.geteuid() != 0, cgroup=own_cgroup())
