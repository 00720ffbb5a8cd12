"""What the model server's container looks like: image, command, mounts, limits, hardening.

Pure: builds the arguments of podman-py's ``containers.create`` from settings.
Every hardening choice is explained in docs/runtime.md; in short, the server
can read its model and nothing else of the host, is reachable only from the
host's loopback, holds no capabilities, cannot gain privileges, cannot write
its own image, and is capped in memory and processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTAINER_PORT = 8000
MODEL_MOUNT = "/model"
LABEL_PEER = "garage.peer"
LABEL_MODEL = "garage.model"
NOBODY = "65534:65534"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    # A read-only root: caches go to the tmpfs.
    "HOME": "/tmp",
    "XDG_CACHE_HOME": "/tmp/.cache",
}

CPU_ARGS = (
    "--dtype", "float32",
    "--enforce-eager",
    "--max-model-len", "512",
    "--max-num-seqs", "32",
    "--kv-cache-memory-bytes", "64M",
)  # fmt: skip
"""vLLM-CPU flags measured on this project's tiny model (see runtime/vllm_cpu.py)."""


@dataclass(frozen=True)
class RuntimeSpec:
    """One model served from one container."""

    image: str
    """The image, e.g. ``localhost/garage-vllm-cpu:0.32.0`` (built by ``garage runtime build-image``)."""
    model_dir: Path
    """The model on the host, mounted read-only at /model."""
    served_name: str
    """The model name in the mesh (vLLM's ``--served-model-name``)."""
    host_port: int
    """Published on 127.0.0.1 only: the daemon is the server's only client."""
    peer_id: str
    """Our peer id (a label, and part of the container name)."""
    gpus: tuple[str, ...] = ()
    """``()`` for the CPU, ``("all",)`` or device indices: passed as CDI ``nvidia.com/gpu=…``."""
    gpu_memory_fraction: float = 0.85
    """vLLM's ``--gpu-memory-utilization``: the rest stays for the desktop."""
    memory: str = "16g"
    """Container memory limit."""
    pids_limit: int = 4096
    """Most processes and threads the container may have."""
    tmpfs_size: str = "2g"
    """Size of the writable /tmp (caches, compiled kernels)."""
    vllm_args: tuple[str, ...] = ()
    """Extra arguments for the vLLM server."""
    command: tuple[str, ...] | None = None
    """Arguments for the image's entrypoint instead of vLLM's (a stand-in server image in tests)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment."""

    @property
    def name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.served_name)
        return f"garage-{self.peer_id[-8:].lower()}-{safe}"[:63]

    @property
    def gpu_count(self) -> int:
        """Devices the model occupies; the CPU counts as one (receipts bill by it)."""
        if not self.gpus:
            return 1
        if self.gpus == ("all",):
            return 1  # unknown until nvidia-smi tells; the daemon passes indices when it knows
        return len(self.gpus)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}/v1"


def server_args(spec: RuntimeSpec) -> list[str]:
    """Arguments for the image's entrypoint (the images run the vLLM OpenAI server)."""
    if spec.command is not None:
        return list(spec.command)
    command = [
        "--model", MODEL_MOUNT,
        "--served-model-name", spec.served_name,
        "--host", "0.0.0.0",
        "--port", str(CONTAINER_PORT),
    ]  # fmt: skip
    if spec.gpus:
        command += [
            "--tensor-parallel-size",
            str(spec.gpu_count),
            "--gpu-memory-utilization",
            str(spec.gpu_memory_fraction),
        ]
    else:
        command += list(CPU_ARGS)
    return command + list(spec.vllm_args)


def create_kwargs(spec: RuntimeSpec) -> dict[str, Any]:
    """Arguments for podman-py's ``containers.create``."""
    devices = []
    if spec.gpus:
        devices = [f"nvidia.com/gpu={g}" for g in spec.gpus]
    return {
        "image": spec.image,
        "command": server_args(spec),
        "name": spec.name,
        "labels": {LABEL_PEER: spec.peer_id, LABEL_MODEL: spec.served_name},
        "environment": {**OFFLINE_ENV, **spec.env},
        # Loopback only, never all interfaces: the server has no authentication.
        "ports": {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", spec.host_port)},
        "mounts": [
            {"type": "bind", "source": str(spec.model_dir), "target": MODEL_MOUNT, "read_only": True},
            {"type": "tmpfs", "source": "tmpfs", "target": "/tmp", "size": spec.tmpfs_size},
        ],
        # A tiny init as PID 1 (catatonit): it forwards SIGTERM, which a server running as
        # PID 1 would never receive unless it installed a handler, and reaps zombies.
        "init": True,
        "read_only": True,
        "cap_drop": ["ALL"],
        "no_new_privileges": True,
        "user": NOBODY,
        "mem_limit": spec.memory,
        # vLLM's processes share tensors through /dev/shm (64 MB by default).
        "shm_size": "1g",
        "pids_limit": spec.pids_limit,
        "devices": devices,
        # The daemon restarts it (with backoff, withdrawing the ad meanwhile); podman must not.
        "restart_policy": {"Name": "no"},
    }
