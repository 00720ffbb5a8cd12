"""The Podman runtime: image build time, cold and warm start to healthy, restart after a crash.

Side by side in one run, for the vLLM-CPU server on the project's tiny model:

- the same server started as a bare process (runtime/vllm_cpu.py): the baseline;
- the container: cold (first start after the image was built), warm (started
  again), and the restart after the server process was SIGKILLed (the
  runtime's own detection, backoff and start, until healthy again).

Image builds use ``garage runtime build-image`` (``--rebuild``: the layers are
redone; the Debian base, made once with debootstrap, is timed only if missing).
Root and Podman needed (bootstrap/dev-env.sh installs them).

    .venv/bin/python benchmarks/runtime.py [--skip-build]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.common import setup_logging  # noqa: E402
from garage_p2p.provider.backend import Backend  # noqa: E402
from garage_p2p.runtime.container_spec import RuntimeSpec  # noqa: E402
from garage_p2p.runtime.images import VLLM_CPU_IMAGE, build_base, build_standin, build_vllm_cpu  # noqa: E402
from garage_p2p.runtime.model_runtime import ModelRuntime  # noqa: E402
from garage_p2p.runtime.podman_service import open_podman  # noqa: E402
from garage_p2p.runtime.vllm_cpu import default_tiny_model, default_vllm_python, run_vllm_cpu  # noqa: E402

PORT = 18851


async def wait_healthy(backend: Backend, limit: float = 600) -> float:
    start = time.monotonic()
    with trio.fail_after(limit):
        while not backend.healthy:
            await trio.sleep(0.05)
    return time.monotonic() - start


async def container_starts(home: Path) -> dict[str, float]:
    spec = RuntimeSpec(
        image=VLLM_CPU_IMAGE,
        model_dir=default_tiny_model(),
        served_name="tiny",
        host_port=PORT,
        peer_id="12D3KooWbenchmarkpeer00",
    )
    out: dict[str, float] = {}
    async with open_podman(home) as url:
        backend = Backend("tiny", spec.base_url, managed=True)
        runtime = ModelRuntime(spec, url, backend)
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.serve)
            out["cold"] = await wait_healthy(backend)
            await runtime.stop()
            runtime.start()
            out["warm"] = await wait_healthy(backend)
            state = await runtime.inspect()
            killed = time.monotonic()
            os.kill(state["Pid"], signal.SIGKILL)
            while backend.healthy:
                await trio.sleep(0.05)
            await wait_healthy(backend)
            out["restart"] = time.monotonic() - killed
            nursery.cancel_scope.cancel()
    return out


def bare_process_start() -> float:
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        with run_vllm_cpu(
            python=default_vllm_python(),
            model_dir=default_tiny_model(),
            served_name="tiny",
            log_path=Path(tmp) / "vllm.log",
        ):
            return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-build", action="store_true", help="use the images as they are")
    args = parser.parse_args()
    setup_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        if not args.skip_build:
            base = build_base(home)
            print(
                f"Debian base (debootstrap + import): {'already built' if base.cached else f'{base.seconds:.0f} s'}",
                flush=True,
            )
            standin = build_standin(home, rebuild=True)
            print(f"standin image build:                {standin.seconds:6.1f} s", flush=True)
            vllm = build_vllm_cpu(home, rebuild=True)
            print(f"vLLM-CPU image build:               {vllm.seconds:6.1f} s", flush=True)
        bare = bare_process_start()
        print(f"vLLM-CPU as a bare process, start to healthy: {bare:6.1f} s  (baseline)", flush=True)
        figures = trio.run(container_starts, home)
        print(f"vLLM-CPU container, cold start to healthy:    {figures['cold']:6.1f} s")
        print(f"vLLM-CPU container, warm start to healthy:    {figures['warm']:6.1f} s")
        print(f"vLLM-CPU container, SIGKILL to healthy again: {figures['restart']:6.1f} s")


if __name__ == "__main__":
    main()
