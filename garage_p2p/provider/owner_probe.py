"""The owner-activity probes: what the machine's owner is doing, read from ``nvidia-smi`` and ``/proc``.

Each probe is pluggable (``OwnerProbe`` is a list of them) and any failure reads as "nothing seen"
(logged once): a missing or hung ``nvidia-smi`` must not stop a rig from serving. The decision
is the core's (core/owner_activity.py).

- GPU compute processes that are not ours (``nvidia-smi --query-compute-apps``). Ours: the daemon's
  own process tree and the processes of its model container (their cgroup names the container).
- The busiest GPU's utilisation (``--query-gpu=utilization.gpu``): a game draws through the
  graphics API and is no compute app; the core counts the utilisation only while we serve nothing.
- Processes on the owner's list (``owner_processes``), by name (``/proc/PID/comm``) or by the last
  part of their first argument (Proton/Wine games run as ``Z:\\...\\game.exe``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..core.owner_activity import OwnerSample

log = logging.getLogger(__name__)

SMI_TIMEOUT = 5.0
"""Seconds ``nvidia-smi`` may take to answer (it can hang on a wedged driver)."""
MAX_SMI_BYTES = 256 * 1024
"""The most of its output read: a few lines per GPU process."""
MAX_PROCESSES = 65_536
"""The most /proc entries one scan reads (a bound on a runaway machine)."""
QUERY_APPS = ("--query-compute-apps=pid,process_name", "--format=csv,noheader,nounits")
QUERY_UTIL = ("--query-gpu=utilization.gpu", "--format=csv,noheader,nounits")
PROC = Path("/proc")


async def _smi(nvidia_smi: str, args: tuple[str, ...]) -> str | None:
    """stdout of ``nvidia-smi args``, or None if it is missing, fails or hangs."""
    try:
        with trio.move_on_after(SMI_TIMEOUT):
            done = await trio.run_process([nvidia_smi, *args], capture_stdout=True, capture_stderr=True, check=False)
            if done.returncode == 0:
                return done.stdout[:MAX_SMI_BYTES].decode(errors="replace")
            log.debug("%s %s exited with %d", nvidia_smi, args[0], done.returncode)
    except OSError as exc:
        log.debug("cannot run %s: %s", nvidia_smi, exc)
    return None


def parse_compute_apps(text: str) -> list[tuple[int, str]]:
    """(pid, name) pairs from ``--query-compute-apps=pid,process_name``; lines that do not parse are skipped."""
    out = []
    for line in text.splitlines():
        pid, sep, name = line.partition(",")
        if sep and pid.strip().isdigit():
            out.append((int(pid.strip()), name.strip()[:128] or "?"))
    return out


def parse_utilisation(text: str) -> float | None:
    """The highest of the ``utilization.gpu`` lines (percent); None if none parses (``[N/A]``)."""
    values = [float(v) for v in (line.strip() for line in text.splitlines()) if v.isdigit()]
    return max(values) if values else None


def _read(path: Path, limit: int = 4096) -> str:
    try:
        with path.open("rb") as f:
            return f.read(limit).decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    stat = _read(PROC / str(pid) / "stat")
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def is_ours(pid: int, container_id: str | None, root: int | None = None) -> bool:
    """Whether ``pid`` is the daemon's (a descendant of ``root``, default this process) or in its container."""
    if container_id and container_id in _read(PROC / str(pid) / "cgroup"):
        return True
    root = os.getpid() if root is None else root
    for _ in range(64):  # a process tree is never this deep; a pid cycle cannot hold us
        if pid == root:
            return True
        parent = _parent(pid)
        if parent is None or parent <= 1:
            return False
        pid = parent
    return False


def _base(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower()


def named_processes(wanted: Iterable[str]) -> tuple[str, ...]:
    """The names from ``wanted`` (case-insensitive) of running processes, each once, sorted."""
    names = {w.lower(): w for w in wanted}
    if not names:
        return ()
    seen: set[str] = set()
    for n, entry in enumerate(PROC.iterdir()):
        if n >= MAX_PROCESSES:
            break
        if not entry.name.isdigit():
            continue
        comm = _read(entry / "comm").strip().lower()
        argv0 = _base(_read(entry / "cmdline").split("\0", 1)[0])
        # comm is cut at 15 characters: a long name is matched on its first 15 too.
        for key, name in names.items():
            if key in (comm, argv0) or (len(key) > 15 and comm and key[:15] == comm):
                seen.add(name)
    return tuple(sorted(seen))


@dataclass
class OwnerProbe:
    """The probes a rig runs; ``sample`` reads them all once."""

    gpu: bool
    """Read ``nvidia-smi`` (foreign GPU processes, utilisation)."""
    processes: tuple[str, ...] = ()
    """Process names that mean the owner is using the machine."""
    container_id: Callable[[], str | None] = field(default=lambda: None)
    """Our model container's id (its processes are ours), None when there is none."""
    nvidia_smi: str = "nvidia-smi"

    async def sample(self, ours_busy: bool) -> OwnerSample:
        gpu_processes: tuple[str, ...] = ()
        utilisation = None
        if self.gpu:
            apps = await _smi(self.nvidia_smi, QUERY_APPS)
            if apps is not None:
                container = self.container_id()
                # /proc reads of a few processes: microseconds, no thread needed.
                gpu_processes = tuple(
                    f"{name} (pid {pid})" for pid, name in parse_compute_apps(apps) if not is_ours(pid, container)
                )[:8]
            # A foreign process says enough: nvidia-smi costs tens of ms of CPU a call on a real driver.
            util = None if gpu_processes else await _smi(self.nvidia_smi, QUERY_UTIL)
            utilisation = parse_utilisation(util) if util is not None else None
        named = await trio.to_thread.run_sync(named_processes, self.processes) if self.processes else ()
        return OwnerSample(
            gpu_processes=gpu_processes, gpu_utilisation=utilisation, ours_busy=ours_busy, named_processes=named
        )
