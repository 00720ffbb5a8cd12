"""OpenAI's Batch API (``/v1/files``, ``/v1/batches``) on real peers in one process: the official
``openai`` client, real libp2p and HTTP, StandInBackends (stand-ins, not models) as the providers'
backends. Every object is checked against the official OpenAPI document's schemas."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import httpx
import openai
import pytest
import trio

from garage_p2p.core.limits import Limits
from garage_p2p.jobs import batches as batches_module
from garage_p2p.store.keys import KeyStore

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model


def batch_file(n: int, url: str = "/v1/chat/completions", model: str = "tiny") -> bytes:
    lines = []
    for i in range(n):
        body = {"model": model, "max_tokens": 2}
        body |= {"messages": [{"role": "user", "content": f"line {i}"}]} if "chat" in url else {"prompt": f"line {i}"}
        lines.append(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}))
    return ("\n".join(lines) + "\n").encode()


def client_of(peer, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=peer.api_url, api_key=key, max_retries=0)


async def raw(http: httpx.AsyncClient, peer, path: str, headers=None) -> dict:
    r = await http.get(peer.api_url + path, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def finished(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 60) -> openai.types.Batch:
    final = ("completed", "failed", "expired", "cancelled")
    try:
        await wait_for(lambda: _status(client, batch_id, final), timeout, interval=0.2)
    except trio.TooSlowError:
        # Where it stalled: the job behind the batch (lines done, leases, providers) says.
        async with httpx.AsyncClient(timeout=10) as http:
            job = (await http.get(str(client.base_url).removesuffix("/v1/") + f"/garage/v1/jobs/{batch_id}")).text
        raise AssertionError(f"batch {batch_id} not finished within {timeout} s; its job: {job}") from None
    return await client.batches.retrieve(batch_id)


async def _status(client, batch_id, wanted) -> bool:
    return (await client.batches.retrieve(batch_id)).status in wanted


async def test_the_openai_client_runs_chat_and_completion_batches(tmp_path, http, openai_schema):
    batch_schema, file_schema = openai_schema("Batch"), openai_schema("OpenAIFile")
    async with AsyncExitStack() as stack:
        consumer = await stack.enter_async_context(running_peer(tmp_path / "c"))
        url = await stack.enter_async_context(standin_backend(token_delay=0.001))
        await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(consumer))
        )
        await wait_for_model(consumer, "tiny")
        client = client_of(consumer)
        for endpoint in ("/v1/chat/completions", "/v1/completions"):
            uploaded = await client.files.create(file=("in.jsonl", batch_file(30, endpoint)), purpose="batch")
            assert uploaded.purpose == "batch" and uploaded.filename == "in.jsonl"
            file_schema.validate(await raw(http, consumer, f"/files/{uploaded.id}"))
            created = await client.batches.create(
                input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", metadata={"run": "t"}
            )
            assert created.status == "in_progress" and created.metadata == {"run": "t"}
            batch_schema.validate(await raw(http, consumer, f"/batches/{created.id}"))
            done = await finished(client, created.id)
            assert done.status == "completed", done
            assert done.request_counts.total == done.request_counts.completed == 30
            assert done.error_file_id is None and done.usage.output_tokens == 60
            body = await raw(http, consumer, f"/batches/{created.id}")
            batch_schema.validate(body)
            assert {"completed_at", "finalizing_at", "in_progress_at", "output_file_id"} <= set(body)
            output = (await client.files.content(done.output_file_id)).text
            records = [json.loads(line) for line in output.splitlines()]
            assert sorted(r["custom_id"] for r in records) == sorted(f"req-{i}" for i in range(30))
            assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in records)
            out_file = await raw(http, consumer, f"/files/{done.output_file_id}")
            file_schema.validate(out_file)
            assert out_file["purpose"] == "batch_output" and out_file["bytes"] == len(output.encode())
            # The CLI's view of the same work: the batch is a job of the same id.
            job = (await http.get(consumer.api_url.removesuffix("/v1") + f"/garage/v1/jobs/{created.id}")).json()
            assert job["status"] == "completed" and job["succeeded"] == 30
        listed = await raw(http, consumer, "/files")
        openai_schema("ListFilesResponse").validate(listed)
        assert len(listed["data"]) == 4  # two inputs, two outputs
        assert [f.id async for f in client.files.list(purpose="batch")] == [
            f["id"] for f in listed["data"] if f["purpose"] == "batch"
        ]
        batches = await raw(http, consumer, "/batches?limit=1")
        openai_schema("ListBatchesResponse").validate(batches)
        assert batches["has_more"] and len([b async for b in await client.batches.list(limit=1)]) == 2
        deleted = await client.files.delete(uploaded.id)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)


async def test_bad_input_is_an_openai_error_and_invalid_lines_fail_the_batch(tmp_path, http, monkeypatch):
    async with AsyncExitStack() as stack:
        consumer = await stack.enter_async_context(running_peer(tmp_path / "c"))
        url = await stack.enter_async_context(standin_backend(token_delay=0.001))
        await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(consumer))
        )
        await wait_for_model(consumer, "tiny")
        client = client_of(consumer)
        good = await client.files.create(file=("in.jsonl", batch_file(3)), purpose="batch")

        async def refused(call, param: str | None, status: type[openai.APIStatusError] = openai.BadRequestError):
            with pytest.raises(status) as caught:
                await call
            assert caught.value.body["type"] == "invalid_request_error", caught.value.body
            assert caught.value.body["param"] == param, caught.value.body
            return caught.value

        create = client.batches.create
        await refused(
            create(input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="1h"), "completion_window"
        )
        await refused(create(input_file_id=good.id, endpoint="/v1/moderations", completion_window="24h"), "endpoint")
        await refused(
            create(input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h"),
            None,
            openai.NotFoundError,
        )
        await refused(
            create(input_file_id=good.id, endpoint="/v1/completions", completion_window="24h", extra_body={"x": 1}), "x"
        )
        await refused(client.files.create(file=("in.jsonl", b"{}"), purpose="fine-tune"), "purpose")
        r = await http.post(consumer.api_url + "/files", data={"purpose": "batch"}, files={"other": ("a", b"x")})
        assert r.status_code == 400 and r.json()["error"]["param"] == "other"
        r = await http.post(consumer.api_url + "/files", json={"purpose": "batch"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_content_type"
        monkeypatch.setattr("garage_p2p.gateway.batch_api.MAX_FILE_LINES", 5)
        await refused(client.files.create(file=("in.jsonl", batch_file(6)), purpose="batch"), "file")
        monkeypatch.setattr(batches_module, "MAX_FILE_BYTES", 1000)
        too_big = await refused(
            client.files.create(file=("in.jsonl", batch_file(5)), purpose="batch"), "file", openai.APIStatusError
        )
        assert too_big.status_code == 413
        # Lines a batch cannot run fail it whole, each error naming its line (OpenAI validates first).
        other_url = batch_file(1, "/v1/completions").replace(b"req-0", b"other")
        mixed = batch_file(2) + b"not json\n" + other_url
        bad = await client.files.create(file=("bad.jsonl", mixed), purpose="batch")
        failed = await create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert failed.status == "failed" and failed.failed_at is not None
        assert [(e.line, e.code) for e in failed.errors.data] == [(3, "invalid_line"), (4, "invalid_line")]
        unknown = await client.files.create(file=("m.jsonl", batch_file(2, model="ghost")), purpose="batch")
        failed = await create(input_file_id=unknown.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert failed.status == "failed" and failed.errors.data[0].code == "model_not_found"
        # Nothing ran: no job of these failed batches exists.
        assert (await http.get(consumer.api_url.removesuffix("/v1") + "/garage/v1/jobs")).json()["jobs"] == []


async def test_a_key_sees_only_its_own_files_and_batches(tmp_path, http, openai_schema):
    store = KeyStore(tmp_path / "c" / "keys.sqlite")
    alice, mallory = (store.create(name, Limits())[1] for name in ("alice", "mallory"))
    async with AsyncExitStack() as stack:
        consumer = await stack.enter_async_context(running_peer(tmp_path / "c", require_keys=True))
        url = await stack.enter_async_context(standin_backend(token_delay=0.001))
        await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(consumer))
        )
        await wait_for_model(consumer, "tiny")
        mine, theirs = client_of(consumer, alice), client_of(consumer, mallory)
        with pytest.raises(openai.AuthenticationError):
            await client_of(consumer).files.list()
        uploaded = await mine.files.create(file=("in.jsonl", batch_file(5)), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            await theirs.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        batch = await mine.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = await finished(mine, batch.id)
        for call in (
            theirs.files.retrieve(uploaded.id),
            theirs.files.content(done.output_file_id),
            theirs.files.delete(uploaded.id),
            theirs.batches.retrieve(batch.id),
            theirs.batches.cancel(batch.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
        assert [f async for f in theirs.files.list()] == [] and [b async for b in theirs.batches.list()] == []
        assert {f.id async for f in mine.files.list()} == {uploaded.id, done.output_file_id}
        assert [b.id async for b in mine.batches.list()] == [batch.id]
        # The key's room for files is bounded: an upload past it is a 413.
        monkeypatch = pytest.MonkeyPatch()
        try:
            monkeypatch.setattr(batches_module, "KEY_FILES_BYTES", 100)
            with pytest.raises(openai.APIStatusError) as caught:
                await mine.files.create(file=("in.jsonl", batch_file(5)), purpose="batch")
            assert caught.value.status_code == 413
        finally:
            monkeypatch.undo()


async def test_a_cancelled_batch_ends_with_its_finished_lines_and_the_rest_as_errors(tmp_path, http):
    async with AsyncExitStack() as stack:
        consumer = await stack.enter_async_context(running_peer(tmp_path / "c"))
        url = await stack.enter_async_context(standin_backend(token_delay=0.02))
        await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(consumer))
        )
        await wait_for_model(consumer, "tiny")
        client = client_of(consumer)
        uploaded = await client.files.create(file=("in.jsonl", batch_file(200)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        async def some_done() -> bool:  # a shard's results handed in
            return (await client.batches.retrieve(batch.id)).request_counts.completed >= 5

        await wait_for(some_done, timeout=30, interval=0.1)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        done = await finished(client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at is not None
        results = (await client.files.content(done.output_file_id)).text.splitlines()
        errors = [json.loads(line) for line in (await client.files.content(done.error_file_id)).text.splitlines()]
        assert 5 <= len(results) < 200 and len(results) + len(errors) == 200 == done.request_counts.total
        assert {e["error"]["code"] for e in errors} == {"cancelled"}
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(batch.id)


async def test_batches_and_files_survive_a_daemon_restart(tmp_path, http):
    # The whole mesh stops and starts again (the restarted consumer meets a fresh provider): what
    # the consumer knows of its files and batches came from its home alone. The real-process test
    # (tests/integration/test_batch_api_processes.py) restarts the consumer alone, with SIGKILL.
    async with standin_backend(token_delay=0.02) as url:
        async with (
            running_peer(tmp_path / "p", backends={"tiny": url}) as provider,
            running_peer(tmp_path / "c", bootstrap=first_addr(provider)) as consumer,
        ):
            await wait_for_model(consumer, "tiny")
            client = client_of(consumer)
            uploaded = await client.files.create(file=("in.jsonl", batch_file(60)), purpose="batch")
            batch = await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            await wait_for(lambda: provider.job_worker.lines_done >= 5, timeout=30)
        async with (
            running_peer(tmp_path / "p2", backends={"tiny": url}) as provider,
            running_peer(tmp_path / "c", bootstrap=first_addr(provider)) as consumer,
        ):
            client = client_of(consumer)
            again = await client.batches.retrieve(batch.id)
            assert again.status == "in_progress" and again.input_file_id == uploaded.id
            await wait_for_model(consumer, "tiny")
            done = await finished(client, batch.id, timeout=60)
            assert done.status == "completed" and done.request_counts.completed == 60
            records = [json.loads(line) for line in (await client.files.content(done.output_file_id)).text.splitlines()]
            assert sorted(r["custom_id"] for r in records) == sorted(f"req-{i}" for i in range(60))
            assert (await client.files.retrieve(uploaded.id)).bytes == len(batch_file(60))
