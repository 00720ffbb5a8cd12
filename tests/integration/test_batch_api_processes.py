"""OpenAI's Batch API on a mesh of real ``garage-peer`` processes, driven by the official ``openai``
client: a 200-line batch on a consumer and two providers, one provider killed midway and the consumer
killed (SIGKILL) and restarted midway; exactly one result per ``custom_id``, and the objects validate
against the official schemas.

The providers' backends are StandInBackends (stand-ins that answer like vLLM, not models): this
exercises the mesh's handling of a batch, not a model.
"""

from __future__ import annotations

import json

import httpx
import openai

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.testkit import free_port, wait_until

from .helpers import garage, models_of, standin_processes

LINES = 200


def batch_file() -> bytes:
    return "".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "tiny", "messages": [{"role": "user", "content": str(i)}], "max_tokens": 4},
            }
        )
        + "\n"
        for i in range(LINES)
    ).encode()


def test_a_batch_survives_a_lost_provider_and_a_consumer_restart(tmp_path, openai_schema):
    with standin_processes([free_port(), free_port()], token_delay=0.02) as urls:
        # Fixed ports, as a rig has: the providers find the restarted consumer at the same address.
        c = PeerProcess(
            tmp_path / "c", peer_args(listen=f"/ip4/127.0.0.1/tcp/{free_port()}", api=f"127.0.0.1:{free_port()}")
        ).start()
        peers = [c]
        try:
            c.wait_ready()
            for i, url in enumerate(urls):
                peers.append(PeerProcess(tmp_path / f"p{i}", peer_args(bootstrap=[c.addr], backends={"tiny": url})))
                peers[-1].start().wait_ready()
            wait_until(lambda: len(models_of(c).get("tiny", [])) == 2, 30, "the consumer seeing both providers")
            run_batch(c, peers[1], openai_schema)
        finally:
            for p in peers:
                p.stop()


def run_batch(c: PeerProcess, doomed: PeerProcess, openai_schema) -> None:
    client = openai.OpenAI(base_url=c.api_url, api_key="unused", max_retries=0)
    uploaded = client.files.create(file=("requests.jsonl", batch_file()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")

    def completed(at_least: int) -> bool:
        try:
            return client.batches.retrieve(batch.id).request_counts.completed >= at_least
        except openai.APIConnectionError:
            return False  # restarting

    wait_until(lambda: completed(40), 60, "a fifth of the batch done")
    doomed.kill()
    wait_until(lambda: completed(80), 60, "two fifths of the batch done")
    c.kill()
    c.start()
    c.wait_ready()
    wait_until(lambda: client.batches.retrieve(batch.id).status == "completed", 120, "the batch completing")
    done = client.batches.retrieve(batch.id)
    assert done.request_counts.completed == LINES and done.request_counts.failed == 0, done
    assert done.error_file_id is None
    records = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert len(records) == LINES and {r["custom_id"] for r in records} == {f"req-{i}" for i in range(LINES)}
    assert all(r["response"]["status_code"] == 200 for r in records)
    raw = httpx.get(f"{c.api_url}/batches/{batch.id}", timeout=10).json()
    openai_schema("Batch").validate(raw)
    for file_id in (uploaded.id, done.output_file_id):
        openai_schema("OpenAIFile").validate(httpx.get(f"{c.api_url}/files/{file_id}", timeout=10).json())
    # The CLI lists the same work as a job of the same id.
    listed = garage("job", "list", "--json", "--api", c.api_url)
    assert listed.returncode == 0, listed.stderr
    assert [j["status"] for j in json.loads(listed.stdout) if j["id"] == batch.id] == ["completed"]
