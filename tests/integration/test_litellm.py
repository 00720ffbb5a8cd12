"""A real LiteLLM proxy and Router in front of a garage peer, from ``garage litellm-config``.

P serves ``tiny`` from a StandInBackend (an instrument, not a model); C bootstraps from P and asks
for API keys. ``garage litellm-config`` writes the config from C's model list; the LiteLLM proxy
(its own venv, made by bootstrap/dev-env.sh) runs on it, and the real ``openai`` client asks the
proxy. The answers must come from P through C (C's /metrics counts them, P's ledger signs them).
The same config drives LiteLLM's ``Router`` in LiteLLM's own Python.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tools.testkit import free_port, wait_until

from .helpers import garage, provider_and_keyed_consumer

LITELLM_VENV = Path(os.environ.get("GARAGE_LITELLM_VENV", Path.home() / ".cache" / "garage" / "litellm-venv"))
MASTER_KEY = "sk-garage-litellm-test"

ROUTER_SCRIPT = """
import json, sys, yaml
from litellm import Router
config = yaml.safe_load(open(sys.argv[1]))
router = Router(model_list=config["model_list"], num_retries=0)
answer = router.completion(model="tiny", messages=[{"role": "user", "content": "via the router"}], max_tokens=3)
print(json.dumps({
    "model": answer.model,
    "content": answer.choices[0].message.content,
    "completion_tokens": answer.usage.completion_tokens,
}))
"""


def mesh_requests(origin: str, key: str, provider: str) -> float:
    """Answered requests C sent to ``provider`` (from C's /metrics)."""
    text = httpx.get(f"{origin}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "garage_requests_total" and s.labels == {"model": "tiny", "status": "200", "provider": provider}
    )


def test_litellm_proxy_and_router_answer_through_the_mesh(tmp_path):
    litellm = LITELLM_VENV / "bin" / "litellm"
    assert litellm.exists(), f"{litellm} is missing: run bootstrap/dev-env.sh (it builds the LiteLLM venv)"
    proxy = None
    with provider_and_keyed_consumer(tmp_path, "litellm") as (p, c, key):
        try:
            origin = c.api_url.removesuffix("/v1")

            # The config: from C's model list, with the key read from the environment.
            config = tmp_path / "litellm.yaml"
            refused = garage("litellm-config", "--api", origin, "--out", str(config))
            assert refused.returncode == 1 and "--key-env" in refused.stderr and "Traceback" not in refused.stderr
            env = {**os.environ, "GARAGE_KEY": key}
            written = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "garage_p2p.cli.garage",
                    "litellm-config",
                    "--api",
                    origin,
                    "--out",
                    str(config),
                    "--key-env",
                    "GARAGE_KEY",
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert written.returncode == 0, written.stderr
            text = config.read_text()
            assert (
                '"openai/tiny"' in text
                and f'"{origin}/v1"' in text
                and '"os.environ/GARAGE_KEY"' in text
                and key not in text
            )

            # The proxy, as a team runs it: its own master key, the garage key from the environment.
            port = free_port()
            log = open(tmp_path / "litellm.log", "wb")
            proxy = subprocess.Popen(
                [
                    str(litellm),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={
                    **env,
                    "LITELLM_MASTER_KEY": MASTER_KEY,
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                    "NO_DOCS": "True",
                },
            )
            wait_until(lambda: proxy_up(port), 180, "the LiteLLM proxy starting")
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=MASTER_KEY, max_retries=0, timeout=60
            )
            before = mesh_requests(origin, key, p.peer_id)
            answer = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5
            )
            assert answer.choices[0].message.content and answer.usage.completion_tokens == 5
            streamed = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True
            )
            pieces = [
                chunk.choices[0].delta.content for chunk in streamed if chunk.choices and chunk.choices[0].delta.content
            ]
            assert len(pieces) == 4
            # A model nobody serves: the wildcard sends it to the mesh, whose 404 comes back as an error.
            with pytest.raises(openai.APIStatusError) as missing:
                client.chat.completions.create(
                    model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
            assert missing.value.status_code in (400, 404) and "no-such-model" in str(missing.value)
            # LiteLLM's own keys still apply (without a database it answers 400 "No connected db" to
            # any key but the master key), and nothing reaches the mesh.
            with pytest.raises(openai.APIStatusError) as wrong:
                openai.OpenAI(
                    base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-wrong", max_retries=0
                ).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            assert wrong.value.status_code in (400, 401)
            # Both answers went through the mesh: C sent them to P.
            wait_until(lambda: mesh_requests(origin, key, p.peer_id) == before + 2, 10, "C counting the two answers")

            # LiteLLM's Router (the library, in LiteLLM's own Python) on the same config.
            routed = subprocess.run(
                [str(LITELLM_VENV / "bin" / "python"), "-c", ROUTER_SCRIPT, str(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert routed.returncode == 0, routed.stderr[-2000:]
            result = json.loads(routed.stdout.strip().splitlines()[-1])
            assert result["content"] and result["completion_tokens"] == 3
            wait_until(
                lambda: mesh_requests(origin, key, p.peer_id) == before + 3, 10, "C counting the router's answer"
            )
        finally:
            if proxy is not None:
                os.killpg(proxy.pid, signal.SIGTERM)
                try:
                    proxy.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proxy.pid, signal.SIGKILL)
                    proxy.wait(5)


def proxy_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
