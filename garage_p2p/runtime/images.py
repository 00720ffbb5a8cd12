"""Building the server images locally (``garage runtime build-image``); no registry needed.

1. Base: ``localhost/garage-debian:bookworm``, a minimal Debian root filesystem
   made with debootstrap from the machine's own apt mirror and imported into
   Podman. Made once, then reused.
2. ``localhost/garage-vllm-cpu:<version>``: the base plus the vllm-cpu package
   from the venv bootstrap/dev-env.sh built (mounted into the build).
3. ``localhost/garage-standin:dev``: the base plus this project (the
   StandInBackend), for fast lifecycle tests.

The GPU image (images/vllm) builds from the upstream vLLM image and so needs
a registry; it is built only where one is reachable.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .podman_service import podman_env
from .vllm_cpu import VLLM_CPU_VERSION, default_vllm_python

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/garage-debian:bookworm"
VLLM_CPU_IMAGE = f"localhost/garage-vllm-cpu:{VLLM_CPU_VERSION}"
STANDIN_IMAGE = "localhost/garage-standin:dev"
VLLM_GPU_IMAGE = "localhost/garage-vllm:0.11.0"
BASE_PACKAGES = "python3,ca-certificates,libgomp1,libnuma1,libstdc++6"


class ImageBuildError(RuntimeError):
    """A build step failed; the message has the command's output."""


@dataclass(frozen=True)
class Built:
    image: str
    """The tag."""
    seconds: float
    """Build time."""
    cached: bool
    """True when the image existed and nothing was built."""


def _run(args: list[str], env: dict[str, str], timeout: float = 1800, input: bytes | None = None) -> str:
    result = subprocess.run(args, env=env, capture_output=True, timeout=timeout, input=input)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).decode(errors="replace")[-3000:]
        raise ImageBuildError(f"{' '.join(args[:4])} … failed:\n{tail}")
    return result.stdout.decode(errors="replace")


def image_exists(image: str, env: dict[str, str]) -> bool:
    return subprocess.run(["podman", "image", "exists", image], env=env, capture_output=True).returncode == 0


def debian_mirror() -> str:
    """The machine's own Debian mirror, from its apt sources (never a hard-coded host)."""
    sources = list(Path("/etc/apt").glob("sources.list.d/*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        match = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M
        )
        if match:
            return match.group(1)
    raise ImageBuildError("no Debian mirror in /etc/apt: pass one with --mirror")


def build_base(home: Path, mirror: str | None = None, *, rebuild: bool = False) -> Built:
    env = podman_env(home)
    if image_exists(BASE_IMAGE, env) and not rebuild:
        return Built(BASE_IMAGE, 0.0, True)
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (Debian: apt-get install debootstrap)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="garage-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                mirror or debian_mirror(),
            ],
            env,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            result = subprocess.run(
                ["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=env, capture_output=True, timeout=900
            )
        finally:
            tar.wait()
        if result.returncode != 0:
            raise ImageBuildError(f"podman import failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return Built(BASE_IMAGE, time.monotonic() - start, False)


def _build(home: Path, image: str, containerfile_dir: Path, volumes: dict[Path, str], *, rebuild: bool) -> Built:
    env = podman_env(home)
    if image_exists(image, env) and not rebuild:
        return Built(image, 0.0, True)
    start = time.monotonic()
    # --no-cache: the layer cache keys on the instructions, not on what the mounted venv holds.
    args = [
        "podman",
        "build",
        "--pull=never",
        "--no-cache",
        "-t",
        image,
        "-f",
        str(containerfile_dir / "Containerfile"),
    ]
    for source, target in volumes.items():
        args += ["--volume", f"{source}:{target}:ro"]
    _run([*args, str(containerfile_dir)], env)
    return Built(image, time.monotonic() - start, False)


def build_vllm_cpu(home: Path, vllm_venv: Path | None = None, *, rebuild: bool = False) -> Built:
    """The vLLM-CPU image from the vLLM venv (``$GARAGE_VLLM_VENV`` or dev-env.sh's default)."""
    venv = vllm_venv or default_vllm_python().parents[1]
    if not (venv / "lib" / "python3.11" / "site-packages" / "vllm").is_dir():
        raise ImageBuildError(f"no vLLM venv at {venv}: run bootstrap/dev-env.sh (or pass --vllm-venv)")
    return _build(home, VLLM_CPU_IMAGE, REPO / "images" / "vllm-cpu", {venv: "/src"}, rebuild=rebuild)


def build_standin(home: Path, *, rebuild: bool = False) -> Built:
    """The StandInBackend image from this project's own venv."""
    venv = Path(sys.prefix)
    return _build(home, STANDIN_IMAGE, REPO / "images" / "standin", {venv: "/src", REPO: "/repo"}, rebuild=rebuild)


def build_gpu(home: Path, *, rebuild: bool = False) -> Built:
    """The GPU image (needs a registry for the upstream base)."""
    env = podman_env(home)
    if image_exists(VLLM_GPU_IMAGE, env) and not rebuild:
        return Built(VLLM_GPU_IMAGE, 0.0, True)
    start = time.monotonic()
    _run(["podman", "build", "-t", VLLM_GPU_IMAGE, str(REPO / "images" / "vllm")], env)
    return Built(VLLM_GPU_IMAGE, time.monotonic() - start, False)


def user_podman(user: str) -> list[str]:
    """``podman`` as USER (root only) with the environment its systemd unit gives it: the home from
    passwd and XDG_RUNTIME_DIR=/run/USER (the unit's RuntimeDirectory=). Rootless Podman records its
    run directory in its database and refuses another one later, so both must match the unit's."""
    entry = pwd.getpwnam(user)
    run_dir = Path("/run") / user
    if not run_dir.is_dir():
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, entry.pw_uid, entry.pw_gid)
    return ["runuser", "-u", user, "--", "env", f"HOME={entry.pw_dir}", f"XDG_RUNTIME_DIR={run_dir}", "podman"]


def _image_id(args: list[str], image: str, env: dict[str, str]) -> str | None:
    result = subprocess.run(
        [*args, "image", "inspect", "--format", "{{.Id}}", image], env=env, capture_output=True, timeout=60, cwd="/"
    )
    if result.returncode != 0:
        return None
    return result.stdout.decode().strip() or None


def copy_to_user(image: str, user: str) -> Built:
    """Put root's IMAGE into USER's rootless storage (``podman save | podman load`` as USER), unless
    the same image id is there already. The service's rootless Podman sees only its own storage."""
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    source = _image_id(["podman"], image, env)
    if source is None:
        raise ImageBuildError(f"{image} is not in root's Podman storage: build it first (garage runtime build-image)")
    target = user_podman(user)
    if _image_id(target, image, env) == source:
        return Built(image, 0.0, True)
    start = time.monotonic()
    save = subprocess.Popen(["podman", "save", image], stdout=subprocess.PIPE, env=env, cwd="/")
    try:
        load = subprocess.run([*target, "load"], stdin=save.stdout, env=env, capture_output=True, timeout=1800, cwd="/")
    finally:
        if save.stdout is not None:
            save.stdout.close()
        save.wait()
    if save.returncode != 0 or load.returncode != 0:
        raise ImageBuildError(f"podman load as {user} failed: {load.stderr.decode(errors='replace')[-2000:]}")
    return Built(image, time.monotonic() - start, False)
