"""Rootless vs rootful: the vLLM-CPU container's start to healthy, side by side in one run.

Both run through the daemon's own ``ModelRuntime`` with the same hardened, limited container
(tiny model): rootful in root's Podman (``open_podman``), rootless in the service user's Podman,
started as that user by ``systemd-run`` with ``Delegate=memory pids cpu`` (what the installed unit
does). After each start the container's memory and pids limits are read from inside it.

Needs root, the service user (``bootstrap/start.sh`` makes ``garage`` and its subordinate ids)
and the vLLM-CPU image (``garage runtime build-image``; it is loaded into the user's storage
here). On a host where rootless Podman cannot enforce limits (cgroup v1 / hybrid), it prints why
and exits 2: the runtime refuses such a container, so there is nothing honest to time.

    .venv/bin/python benchmarks/rootless.py [--user garage]
"""

from __future__ import annotations

import argparse
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.provider.backend import Backend  # noqa: E402
from garage_p2p.runtime.container_spec import RuntimeSpec  # noqa: E402
from garage_p2p.runtime.images import VLLM_CPU_IMAGE, copy_to_user  # noqa: E402
from garage_p2p.runtime.model_runtime import ModelRuntime  # noqa: E402
from garage_p2p.runtime.podman_service import open_podman, ping, podman_env  # noqa: E402
from garage_p2p.runtime.rootless import check_limits  # noqa: E402
from garage_p2p.runtime.vllm_cpu import default_tiny_model  # noqa: E402

PORT = 18861
UNIT = "garage-bench-rootless"
MEMORY = "3g"


async def start_to_healthy(url: str) -> tuple[float, str]:
    """Seconds from create to healthy, and the limits read inside the container."""
    spec = RuntimeSpec(VLLM_CPU_IMAGE, default_tiny_model(), "tiny", PORT, "12D3KooWbenchmarkrootless", memory=MEMORY)
    backend = Backend("tiny", spec.base_url, managed=True)
    runtime = ModelRuntime(spec, url, backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.serve)
        with trio.fail_after(600):
            while runtime.status.healthy_after_s is None:
                if runtime.status.state in ("failed", "refused"):
                    raise SystemExit(f"the container did not start: {runtime.status.last_exit}")
                await trio.sleep(0.1)
        _, limits = await runtime.exec("sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max")
        nursery.cancel_scope.cancel()  # serve() removes the container on the way out
    return runtime.status.healthy_after_s, " ".join(limits.split())


async def rootless_url(user: str, conf_dir: Path, socket: Path) -> str:
    entry = pwd.getpwnam(user)
    conf = podman_env(conf_dir)["CONTAINERS_CONF"]
    subprocess.run(
        ["systemd-run", f"--unit={UNIT}", "--collect", f"--uid={user}", f"--gid={entry.pw_gid}",
         "-p", "Delegate=memory pids cpu", "-E", f"HOME={entry.pw_dir}", "-E", f"XDG_RUNTIME_DIR={socket.parent}",
         "-E", f"CONTAINERS_CONF={conf}", "podman", "system", "service", "--time=0", f"unix://{socket}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with trio.fail_after(30):
        while not await ping(socket):
            await trio.sleep(0.1)
    return f"unix://{socket}"


async def side_by_side(user: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        home.chmod(0o755)  # the user reads the containers.conf written here
        async with open_podman(home) as url:
            rootful, rootful_limits = await start_to_healthy(url)
        print(f"rootful  start to healthy: {rootful:6.1f} s   limits inside: {rootful_limits}", flush=True)
        try:
            url = await rootless_url(user, home, Path("/run") / user / "bench.sock")
            rootless, rootless_limits = await start_to_healthy(url)
        finally:
            subprocess.run(["systemctl", "stop", UNIT], capture_output=True, timeout=60)
        print(f"rootless start to healthy: {rootless:6.1f} s   limits inside: {rootless_limits}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default="garage", help="the service user (made by bootstrap/start.sh)")
    args = parser.parse_args()
    setup_logging("WARNING")
    check = check_limits(rootless=True)
    if not check.ok:
        print(f"rootless not measured on this host: {check.line}")
        raise SystemExit(2)
    loaded = copy_to_user(VLLM_CPU_IMAGE, args.user)
    print(f"{VLLM_CPU_IMAGE} in {args.user}'s storage: {'already' if loaded.cached else f'{loaded.seconds:.0f} s'}")
    trio.run(side_by_side, args.user)


if __name__ == "__main__":
    main()
