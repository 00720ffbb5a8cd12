"""The GPU path end to end, for a machine with NVIDIA GPUs: image, container through CDI, a 2-peer mesh.

What it does, with real parts only:

1. checks the machine: ``nvidia-smi`` on PATH, at least one GPU, an ``nvidia.com/gpu`` CDI spec
   (runtime/cdi.py), ``podman``, and the model in the local Hugging Face cache (or a directory).
   Anything missing ends the run at once with one line naming it and its fix, exit code 2;
2. builds the GPU image (``garage runtime build-image --gpu``: images/vllm, from the upstream
   vLLM image, which needs docker.io) unless it exists, and times the build;
3. starts provider P (garage-peer ``--model-dir MODEL --gpus 0,…,N-1 --image`` the GPU image: the
   container gets every GPU through CDI and vLLM runs with tensor parallelism = the GPU count) and
   consumer C bootstrapped from P; container start to healthy is P's own figure (``garage runtime
   status``), and the time until C can route the model is printed too;
4. sends streamed chats through C: one at a time (time to first token, tokens/s of one answer),
   then CONCURRENCY at once (aggregate tokens/s).

    .venv/bin/python benchmarks/gpu_path.py [--model Qwen/Qwen2.5-0.5B-Instruct] [--chats 8] [--tokens 256]

On a machine without a GPU it prints why and exits 2 (tests/test_gpu_path.py checks that).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.client import get  # noqa: E402
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.runtime.cdi import CDI_DIRS, GENERATE, GPU_KIND, nvidia_cdi_specs  # noqa: E402
from garage_p2p.runtime.hardware import detect_hardware  # noqa: E402
from garage_p2p.runtime.images import VLLM_GPU_IMAGE, ImageBuildError, build_gpu  # noqa: E402
from garage_p2p.runtime.model_dirs import resolve_model  # noqa: E402
from garage_p2p.settings import SettingsError  # noqa: E402
from tools.testkit import free_port, wait_until  # noqa: E402

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
CONCURRENCY = 8
READY_TIMEOUT = 1800.0
"""Seconds for the container to load the model and for the consumer to see it (a first start compiles kernels)."""
PROMPT = "Write a short story about a garage full of GPUs that answer questions for their neighbours."


class Missing(Exception):
    """What this machine lacks for the GPU path; the message names it and its fix."""


def preflight(model: str, cdi_dirs: tuple[Path, ...] = CDI_DIRS) -> tuple[int, Path]:
    """(GPU count, model directory); Missing for the first thing that is not there."""
    if shutil.which("nvidia-smi") is None:
        raise Missing("no nvidia-smi on PATH: no NVIDIA driver here (install it; the GPU path needs a GPU)")
    gpus = sum(g.count for g in detect_hardware().gpus)
    if gpus == 0:
        raise Missing("nvidia-smi finds no GPU (check the driver: `nvidia-smi` must list one)")
    if not nvidia_cdi_specs(cdi_dirs):
        dirs = " or ".join(map(str, cdi_dirs))
        raise Missing(f"no {GPU_KIND} CDI spec in {dirs}: Podman cannot pass GPUs; run `{GENERATE}`")
    if shutil.which("podman") is None:
        raise Missing("no podman on PATH: install Podman (bootstrap/start.sh does)")
    try:
        model_dir, _ = resolve_model(model)
    except SettingsError as exc:
        raise Missing(f"{exc} (e.g. `huggingface-cli download {model}`)") from None
    return gpus, model_dir


def chat(api_url: str, tokens: int) -> tuple[float, int, float]:
    """One streamed chat: (time to first token, tokens, seconds from the first token to the last)."""
    body = {
        "model": "gpu-path",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "min_tokens": tokens,  # vLLM's: the same work per answer, whatever the model says
        "temperature": 0.7,
        "stream": True,
    }
    start = time.monotonic()
    first = None
    count = 0
    with httpx.stream("POST", api_url + "/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = first or time.monotonic()
                count += 1
    end = time.monotonic()
    if first is None:
        raise RuntimeError("the answer had no tokens")
    return first - start, count, end - first


def run(args: argparse.Namespace, gpus: int, model_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu-path-") as tmp:
        root = Path(tmp)
        provider_home = root / "p"
        provider_home.mkdir()
        started = time.monotonic()
        built = build_gpu(provider_home)
        print(f"image {built.image}: " + ("present" if built.cached else f"built in {built.seconds:.0f} s"))
        indices = ",".join(str(i) for i in range(gpus))
        extra = ["--model-dir", str(model_dir), "--model-name", "gpu-path", "--gpus", indices]
        extra += ["--image", VLLM_GPU_IMAGE, "--runtime-port", str(free_port())]
        p = PeerProcess(provider_home, peer_args(extra=extra)).start()
        c = None
        try:
            p.wait_ready()
            c = PeerProcess(root / "c", peer_args(bootstrap=[p.addr])).start()
            c.wait_ready()
            ready = wait_until(
                lambda: (get(p.api_url, p.home, "/garage/v1/status")["runtime"] or {}).get("state") == "healthy",
                READY_TIMEOUT,
                "the model container healthy",
                interval=1.0,
            )
            runtime = get(p.api_url, p.home, "/garage/v1/status")["runtime"]
            routed = wait_until(
                lambda: any(m["id"] == "gpu-path" for m in httpx.get(c.api_url + "/models", timeout=5).json()["data"]),
                120,
                "C seeing the model",
            )
            print(f"GPUs {gpus} (tensor parallel {gpus}), model {model_dir}")
            print(f"container start to healthy: {runtime['healthy_after_s']:.1f} s (P's figure; waited {ready:.1f} s)")
            print(f"consumer routes the model {routed:.1f} s later")
            single = [chat(c.api_url, args.tokens) for _ in range(args.chats)]
            ttfts = [t for t, _, _ in single]
            rates = [n / d for _, n, d in single if d > 0]
            print(
                f"one at a time ({args.chats} chats, {args.tokens} tokens): "
                f"TTFT p50 {statistics.median(ttfts) * 1000:.0f} ms, max {max(ttfts) * 1000:.0f} ms; "
                f"tokens/s per answer p50 {statistics.median(rates):.1f}"
            )
            wall = time.monotonic()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                together = list(pool.map(lambda _: chat(c.api_url, args.tokens), range(CONCURRENCY)))
            wall = time.monotonic() - wall
            print(
                f"{CONCURRENCY} at once: aggregate {sum(n for _, n, _ in together) / wall:.1f} tokens/s, "
                f"TTFT p50 {statistics.median(t for t, _, _ in together) * 1000:.0f} ms"
            )
            print(f"whole run {time.monotonic() - started:.0f} s")
        finally:
            for peer in (c, p):
                if peer is not None:
                    peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a directory, or a model id in the local HF cache")
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument(
        "--cdi-dir",
        type=Path,
        action="append",
        help="where CDI specs are (repeatable; default Podman's: /etc/cdi, /var/run/cdi)",
    )
    args = parser.parse_args()
    try:
        gpus, model_dir = preflight(args.model, tuple(args.cdi_dir or CDI_DIRS))
    except Missing as exc:
        print(f"gpu_path: cannot run here: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run(args, gpus, model_dir)
    except ImageBuildError as exc:
        raise SystemExit(f"gpu_path: {exc}") from None


if __name__ == "__main__":
    main()
