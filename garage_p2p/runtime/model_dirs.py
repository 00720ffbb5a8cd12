"""Where a model's files are: a directory, or a model id found in the Hugging Face cache.

The container mounts a directory read-only and never downloads (no hub is
reachable from it), so a model id must already be in the local cache
(``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``): its
newest snapshot is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..settings import SettingsError


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def resolve_model(spec: str, cache: Path | None = None) -> tuple[Path, str]:
    """(directory to mount, default model name) for a directory or a model id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name
    if "/" in spec and not spec.startswith(("/", ".", "~")):
        repo = (cache or hub_cache()) / f"models--{spec.replace('/', '--')}" / "snapshots"
        snapshots = (
            sorted((p for p in repo.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime) if repo.is_dir() else []
        )
        if snapshots:
            return snapshots[-1].resolve(), spec
        raise SettingsError(
            f"model {spec!r} is not in the local Hugging Face cache ({repo.parent}): download it there first, or pass "
            "a directory"
        )
    raise SettingsError(f"--model-dir {spec} is not a directory")
