"""Where Podman finds GPUs: the CDI spec (``nvidia-ctk cdi generate``), read without a YAML parser.

Podman resolves ``--device nvidia.com/gpu=all`` through a Container Device Interface spec in
``/etc/cdi`` or ``/var/run/cdi``. Without one, a GPU container fails to start with an error
that does not say how to fix it; ``garage doctor`` and benchmarks/gpu_path.py read the spec first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
"""Podman's default CDI spec directories (containers.conf ``cdi_spec_dirs``)."""
GPU_KIND = "nvidia.com/gpu"
GENERATE = "sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
"""The fix: the NVIDIA Container Toolkit writes the spec for the installed driver and GPUs."""
MAX_SPEC_BYTES = 1024 * 1024
_KIND = re.compile(r"""(?:^|[{,])\s*["']?kind["']?\s*:\s*["']?([^"'\s,}]+)""", re.MULTILINE)
_NAME = re.compile(r"""(?:^\s*-\s*|\{\s*)["']?name["']?\s*:\s*["']?([^"'\s,}]+)""", re.MULTILINE)


@dataclass(frozen=True)
class GpuSpec:
    """An NVIDIA GPU CDI spec found on this machine."""

    path: Path
    """The spec file."""
    devices: tuple[str, ...]
    """Its device names (``0``, ``1``, ``all``, GPU UUIDs)."""


def nvidia_cdi_specs(dirs: tuple[Path, ...] = CDI_DIRS) -> list[GpuSpec]:
    """The NVIDIA GPU specs in ``dirs`` (YAML or JSON); [] if there is none or none is readable."""
    found = []
    for directory in dirs:
        try:
            files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        except OSError:
            continue
        for path in files[:64]:
            try:
                with path.open("rb") as f:
                    text = f.read(MAX_SPEC_BYTES).decode(errors="replace")
            except OSError:
                continue
            kind = _KIND.search(text)
            if kind and kind.group(1) == GPU_KIND:
                found.append(GpuSpec(path, tuple(dict.fromkeys(_NAME.findall(text)))))
    return found
