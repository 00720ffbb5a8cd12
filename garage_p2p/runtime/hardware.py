"""Which GPUs the rig has, from ``nvidia-smi`` (none found means the CPU serves).

Detection is a short synchronous subprocess call made once at start-up; any failure
(no binary, no driver, a hung tool) reads as a CPU-only rig rather than an error, since
a peer without GPUs is still a valid peer.
"""

from __future__ import annotations

import logging
import subprocess

from ..core.capabilities import MAX_AD_GPU_KINDS, GpuSpec, Hardware

log = logging.getLogger(__name__)

QUERY_GPUS = ("--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
QUERY_DRIVER = ("--query-gpu=driver_version", "--format=csv,noheader")
_MAX_NAME = 128  # GpuSpec.name's limit
_MAX_KINDS = MAX_AD_GPU_KINDS  # Hardware.gpus' limit
_MAX_COUNT = 1024  # GpuSpec.count's limit
_MAX_VRAM_MIB = 10_000_000  # GpuSpec.vram_mib's limit


def parse_nvidia_smi_csv(text: str) -> Hardware:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``.

    One line per card (``NVIDIA GeForce RTX 4090, 24564``); identical (name, MiB) pairs
    are grouped with a count, in first-seen order. Lines that do not parse (``[N/A]``
    memory, driver messages, garbage) are ignored.
    """
    counts: dict[tuple[str, int], int] = {}
    for line in text.splitlines():
        # rsplit: the memory is the last field; a name could in principle hold a comma.
        name, sep, mib = line.rpartition(",")
        name, mib = name.strip(), mib.strip()
        if not sep or not name or not mib.isdigit():
            continue
        vram = int(mib)
        if vram > _MAX_VRAM_MIB:
            continue
        key = (name[:_MAX_NAME], vram)
        if key not in counts and len(counts) >= _MAX_KINDS:
            continue
        counts[key] = min(counts.get(key, 0) + 1, _MAX_COUNT)
    return Hardware(gpus=tuple(GpuSpec(name=n, vram_mib=v, count=c) for (n, v), c in counts.items()))


def _run_smi(nvidia_smi: str, args: tuple[str, ...], timeout: float) -> str | None:
    """stdout of ``nvidia_smi args``, or None (logged) if it cannot run or fails."""
    try:
        done = subprocess.run(
            [nvidia_smi, *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        log.debug("%s not found: no NVIDIA GPUs", nvidia_smi)
        return None
    except subprocess.TimeoutExpired:
        log.warning("%s did not answer within %.0f s; treating the rig as CPU-only", nvidia_smi, timeout)
        return None
    except OSError as exc:
        log.warning("cannot run %s (%s); treating the rig as CPU-only", nvidia_smi, exc)
        return None
    if done.returncode != 0:
        # E.g. "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver".
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        log.warning("%s exited with %d%s", nvidia_smi, done.returncode, f": {first[0]}" if first else "")
        return None
    return done.stdout


def detect_hardware(nvidia_smi: str = "nvidia-smi", timeout: float = 5.0) -> Hardware:
    """The rig's GPUs per ``nvidia-smi``; ``Hardware()`` (CPU) if it is missing, fails or hangs."""
    out = _run_smi(nvidia_smi, QUERY_GPUS, timeout)
    return Hardware() if out is None else parse_nvidia_smi_csv(out)


def driver_version(nvidia_smi: str = "nvidia-smi", timeout: float = 5.0) -> str | None:
    """The NVIDIA driver version (first GPU's), or None when there is no working driver."""
    out = _run_smi(nvidia_smi, QUERY_DRIVER, timeout)
    if out is None:
        return None
    first = next((line.strip() for line in out.splitlines() if line.strip()), "")
    # A version is short and dotted (e.g. 550.54.15); anything else is not one.
    if not first or len(first) > 64 or not all(c.isdigit() or c == "." for c in first):
        return None
    return first
