"""Batch jobs between real peers in one process (libp2p on 127.0.0.1, StandInBackends)."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import AsyncExitStack

import trio

from .conftest import first_addr, running_peer, standin_backend, wait_for, wait_for_model


def batch(n: int, model: str = "tiny") -> str:
    return "\n".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 2},
            }
        )
        for i in range(n)
    )


async def job_status(http, peer, job_id):
    return (await http.get(f"{peer.api_url.removesuffix('/v1')}/garage/v1/jobs/{job_id}")).json()


async def output(http, peer, job_id, kind="results"):
    r = await http.get(f"{peer.api_url.removesuffix('/v1')}/garage/v1/jobs/{job_id}/output", params={"kind": kind})
    return [json.loads(line) for line in r.text.splitlines()]


async def test_a_thousand_lines_over_three_providers_one_result_each(tmp_path, http):
    async with AsyncExitStack() as stack:
        submitter = await stack.enter_async_context(running_peer(tmp_path / "s"))
        providers = []
        for i in range(3):
            url = await stack.enter_async_context(standin_backend(token_delay=0.001))
            providers.append(
                await stack.enter_async_context(
                    running_peer(tmp_path / f"p{i}", backends={"tiny": url}, bootstrap=first_addr(submitter))
                )
            )
        await wait_for_model(submitter, "tiny", providers=3)
        r = await http.post(
            submitter.api_url.removesuffix("/v1") + "/garage/v1/jobs", json={"input": batch(1000), "shard_size": 25}
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]

        async def finished():
            return (await job_status(http, submitter, job_id))["status"] == "completed"

        await wait_for(finished, timeout=120, interval=0.2)
        results = await output(http, submitter, job_id)
        assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(1000))
        assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)
        assert results[0]["response"]["body"]["choices"][0]["message"]["content"] == "tok tok"
        assert await output(http, submitter, job_id, "errors") == []
        # Every provider took part; tail stealing may run a line twice, never record it twice.
        assert all(p.job_worker.lines_done > 0 for p in providers)
        assert sum(p.job_worker.lines_done for p in providers) >= 1000
        # Each line's receipt was counter-signed by the submitter and logged by its provider.
        await wait_for(lambda: sum(p.ledger.state.head(p.identity.peer_id).seq for p in providers) >= 1000, timeout=30)

        def consumed() -> int:
            mine = submitter.ledger.state.balances().get(submitter.identity.peer_id)
            return mine.consumed.requests if mine else 0

        await wait_for(lambda: consumed() >= 1000, timeout=60)


async def test_a_vanished_provider_loses_its_shards_and_the_job_completes(tmp_path, http):
    async with AsyncExitStack() as stack:
        submitter = await stack.enter_async_context(running_peer(tmp_path / "s"))
        slow = await stack.enter_async_context(standin_backend(token_delay=0.05))
        fast = await stack.enter_async_context(standin_backend(token_delay=0.001))
        keeper = await stack.enter_async_context(
            running_peer(tmp_path / "keep", backends={"tiny": fast}, bootstrap=first_addr(submitter))
        )
        async with running_peer(tmp_path / "gone", backends={"tiny": slow}, bootstrap=first_addr(submitter)) as doomed:
            await wait_for_model(submitter, "tiny", providers=2)
            r = await http.post(
                submitter.api_url.removesuffix("/v1") + "/garage/v1/jobs", json={"input": batch(200), "shard_size": 20}
            )
            job_id = r.json()["id"]
            await wait_for(lambda: doomed.job_worker.batch_in_flight > 0, timeout=30)
            # The provider leaves mid-shard (its context ends: connections close).

        async def finished():
            return (await job_status(http, submitter, job_id))["status"] == "completed"

        await wait_for(finished, timeout=60, interval=0.2)
        results = await output(http, submitter, job_id)
        assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(200))
        assert keeper.job_worker.lines_done > 0


async def test_malformed_lines_unknown_model_and_cancel_each_end_clearly(tmp_path, http):
    async with AsyncExitStack() as stack:
        submitter = await stack.enter_async_context(running_peer(tmp_path / "s"))
        url = await stack.enter_async_context(standin_backend(token_delay=0.05))
        await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(submitter))
        )
        await wait_for_model(submitter, "tiny")
        base = submitter.api_url.removesuffix("/v1")
        # Malformed lines become error entries; the rest runs.
        text = (
            batch(5)
            + "\nnot json\n"
            + json.dumps({"custom_id": "x", "url": "/v1/embeddings", "body": {"model": "tiny"}})
        )
        job_id = (await http.post(base + "/garage/v1/jobs", json={"input": text})).json()["id"]

        async def finished(job=job_id, status="completed"):
            return (await job_status(http, submitter, job))["status"] == status

        await wait_for(finished, timeout=60, interval=0.2)
        assert len(await output(http, submitter, job_id)) == 5
        errors = await output(http, submitter, job_id, "errors")
        assert [e["error"]["code"] for e in errors] == ["invalid_line", "invalid_line"]
        assert errors[1]["custom_id"] == "x" and errors[0]["custom_id"] is None
        # The same through the CLI: --wait shows progress and writes both files at the end.
        batch_file = tmp_path / "batch.jsonl"
        batch_file.write_text(text)
        out = tmp_path / "out.jsonl"
        cli = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "garage_p2p.cli.garage",
                    "job",
                    "submit",
                    "--input",
                    str(batch_file),
                    "--wait",
                    "-o",
                    str(out),
                    "--api",
                    base,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip().startswith("job-") and "completed: 5 succeeded, 2 failed" in cli.stderr
        assert len(out.read_text().splitlines()) == 5
        assert len((tmp_path / "out.errors.jsonl").read_text().splitlines()) == 2
        # An unknown model is refused at once (a one-line error from the CLI).
        (tmp_path / "unknown.jsonl").write_text(batch(2, model="nobody-serves-this"))
        cli = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "garage_p2p.cli.garage",
                    "job",
                    "submit",
                    "--input",
                    str(tmp_path / "unknown.jsonl"),
                    "--api",
                    base,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert (
            cli.returncode == 1
            and cli.stderr.startswith("error: the peer answered 404: no peer in the mesh serves")
            and "Traceback" not in cli.stderr
        )
        r = await http.post(base + "/garage/v1/jobs", json={"input": batch(3, model="nobody-serves-this")})
        assert r.status_code == 404 and "nobody-serves-this" in r.json()["error"]["message"]
        # A cancelled job ends with the undone lines as errors.
        job_id = (await http.post(base + "/garage/v1/jobs", json={"input": batch(200), "shard_size": 10})).json()["id"]

        async def started(job=job_id):
            return (await job_status(http, submitter, job))["done"] > 0

        await wait_for(started, timeout=60, interval=0.05)
        cancelled = (await http.post(f"{base}/garage/v1/jobs/{job_id}/cancel")).json()
        assert cancelled["status"] == "cancelled" and cancelled["done"] == 200
        errors = await output(http, submitter, job_id, "errors")
        assert errors and all(e["error"]["code"] == "cancelled" for e in errors)
        assert len(errors) + len(await output(http, submitter, job_id)) == 200


async def test_a_submitter_without_models_has_heartbeats_while_its_job_runs(tmp_path, http):
    """A consumer's ad has no heartbeat (core.ad_schedule), yet providers dial a submitter for its shards
    and need its addresses: announcing a job publishes its ad again, with heartbeats while the job runs."""
    async with AsyncExitStack() as stack:
        submitter = await stack.enter_async_context(running_peer(tmp_path / "s"))
        url = await stack.enter_async_context(standin_backend(token_delay=2.0))  # the job outlasts the test
        await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(submitter))
        )
        await wait_for_model(submitter, "tiny")
        caps = submitter.caps
        await wait_for(lambda: caps.published >= 1 and not caps.schedule.pending, 10)
        assert not caps.schedule.heartbeat  # a consumer's ad: on change only
        published = caps.published
        r = await http.post(
            submitter.api_url.removesuffix("/v1") + "/garage/v1/jobs", json={"input": batch(4), "shard_size": 2}
        )
        assert r.status_code == 201, r.text
        await wait_for(lambda: caps.published > published, 10)
        assert caps.schedule.heartbeat and submitter.jobs.running()


async def test_a_provider_claims_its_next_shard_before_the_current_one_ends(tmp_path, http):
    async with AsyncExitStack() as stack:
        submitter = await stack.enter_async_context(running_peer(tmp_path / "s"))
        url = await stack.enter_async_context(standin_backend(token_delay=0.05))
        provider = await stack.enter_async_context(
            running_peer(tmp_path / "p", backends={"tiny": url}, bootstrap=first_addr(submitter))
        )
        await wait_for_model(submitter, "tiny")
        r = await http.post(
            submitter.api_url.removesuffix("/v1") + "/garage/v1/jobs", json={"input": batch(40), "shard_size": 6}
        )
        job = submitter.jobs.jobs[r.json()["id"]]
        mine = provider.identity.peer_id

        def two_leases() -> bool:  # the current shard's tail and the next shard, at once
            return sum(lease.provider == mine for lease in job.state.leases.values()) == 2

        await wait_for(two_leases, timeout=30, interval=0.01)

        async def finished():
            return (await job_status(http, submitter, job.row.id))["status"] == "completed"

        await wait_for(finished, timeout=60, interval=0.2)
        assert sorted(r["custom_id"] for r in await output(http, submitter, job.row.id)) == sorted(
            f"req-{i}" for i in range(40)
        )
