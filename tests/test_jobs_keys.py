"""Batch jobs behind API keys (issue 16 item 9): a key sees only its own jobs; job input is spooled to
disk and bounded per key. Real HTTP against a real peer with ``--require-keys``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
from typer.testing import CliRunner

from garage_p2p.cli.garage import app
from garage_p2p.core.limits import Limits
from garage_p2p.store.admin_token import ADMIN_TOKEN_HEADER, read_admin_token, token_path
from garage_p2p.store.keys import KeyStore

from .conftest import running_peer, standin_backend, wait_for
from .test_jobs_hostile import ghost_job
from .test_jobs_inprocess import batch


def operator(home):
    """What the ``garage`` CLI of this HOME sends: the daemon's admin token."""
    return {ADMIN_TOKEN_HEADER: read_admin_token(home)}


def keys(home, *names):
    store = KeyStore(home / "keys.sqlite")
    return [{"authorization": f"Bearer {store.create(name, Limits())[1]}"} for name in names]


async def test_a_key_cannot_list_read_or_cancel_another_keys_jobs(tmp_path, http):
    alice, mallory = keys(tmp_path / "p", "alice", "mallory")
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}, require_keys=True) as peer,
    ):
        base = peer.api_url.removesuffix("/v1") + "/garage/v1/jobs"
        ghost = await ghost_job(peer, 1, shard_size=1)  # makes "ghost" a known model: the job below keeps running
        r = await http.post(base, json={"input": batch(10, "ghost")}, headers=alice)
        assert r.status_code == 201, r.text
        job = r.json()["id"]
        assert [j["id"] for j in (await http.get(base, headers=alice)).json()["jobs"]] == [job]
        assert (await http.get(base, headers=mallory)).json()["jobs"] == []
        for method, path in (("GET", ""), ("GET", "/output"), ("POST", "/cancel")):
            assert (await http.request(method, f"{base}/{job}{path}", headers=mallory)).status_code == 404, path
        assert (await http.get(f"{base}/{job}", headers=alice)).json()["status"] == "running"
        # Loopback is no pass: a local process that omits its key (or guesses a token) gets a 401.
        for headers in ({}, {ADMIN_TOKEN_HEADER: "guessed"}):
            for method, path in (
                ("GET", ""),
                ("GET", f"/{job}"),
                ("GET", f"/{job}/output"),
                ("POST", f"/{job}/cancel"),
            ):
                r = await http.request(method, base + path, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
        assert "admin.token" in r.json()["error"]["message"]
        r = await http.post(base, json={"input": batch(1, "ghost")})
        assert r.status_code == 401 and "garage keys create" in r.json()["error"]["message"]
        assert (await http.get(f"{base}/{job}", headers=alice)).json()["status"] == "running"
        # The operator's token, written 0600 at start, sees every job; the CLI sends it by itself.
        assert token_path(tmp_path / "p").stat().st_mode & 0o777 == 0o600
        assert {j["id"] for j in (await http.get(base, headers=operator(tmp_path / "p"))).json()["jobs"]} == {
            ghost,
            job,
        }
        listed = await trio.to_thread.run_sync(
            partial(CliRunner().invoke, app, ["job", "list", "--home", str(tmp_path / "p"), "--json"])
        )
        assert listed.exit_code == 0, listed.output
        assert {j["id"] for j in json.loads(listed.output)} == {ghost, job}
        # A URL alone does not make the CLI send a token (it never reads a HOME it was not given).
        anonymous = await trio.to_thread.run_sync(
            partial(CliRunner().invoke, app, ["job", "list", "--api", peer.api_url], env={"GARAGE_HOME": ""})
        )
        assert anonymous.exit_code == 1 and "401" in anonymous.output


@asynccontextmanager
async def quota_of_8_kib(tmp_path, monkeypatch) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A peer that asks for keys, with an 8 KiB input quota per key and a job running (one ghost line):
    yields its jobs URL and alice's auth header."""
    monkeypatch.setattr("garage_p2p.jobs.submitter.KEY_INPUT_QUOTA", 8 * 1024)
    (alice,) = keys(tmp_path / "p", "alice")
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}, require_keys=True) as peer,
    ):
        await ghost_job(peer, 1, shard_size=1)
        yield peer.api_url.removesuffix("/v1") + "/garage/v1/jobs", alice


async def test_job_input_is_spooled_to_disk_and_bounded_per_key(tmp_path, http, monkeypatch):
    async with quota_of_8_kib(tmp_path, monkeypatch) as (base, alice):
        raw = {**alice, "content-type": "application/jsonl"}
        text = batch(20, "ghost")  # about 3 KiB
        r = await http.post(base, params={"shard_size": 5}, content=text.encode(), headers=raw)
        assert r.status_code == 201, r.text
        assert r.json()["total"] == 20 and r.json()["shards"] == 4
        r = await http.post(base, content=text.encode(), headers=raw)
        assert r.status_code == 201, r.text
        # The quota counts the input of the key's running jobs: a third does not fit, streamed or as JSON.
        assert (await http.post(base, content=text.encode(), headers=raw)).status_code == 413

        async def chunks():
            for _ in range(5):  # no Content-Length: refused while it streams in
                yield text.encode()

        r = await http.post(base, content=chunks(), headers=raw)
        assert r.status_code == 413, r.text
        assert (await http.post(base, json={"input": text}, headers=alice)).status_code == 413
        assert not list((tmp_path / "p" / "jobs-input").iterdir())  # no upload left behind
        # The operator (the CLI's admin token) is bound by the per-job maximum only.
        assert (await http.post(base, json={"input": text}, headers=operator(tmp_path / "p"))).status_code == 201


async def test_concurrent_uploads_of_one_key_share_its_quota(tmp_path, http, monkeypatch):
    """Four uploads of 3.3 KiB under an 8 KiB quota, all begun before any ends: at most two fit, not four."""
    async with quota_of_8_kib(tmp_path, monkeypatch) as (base, alice):
        data = batch(20, "ghost").encode()
        assert 2 * len(data) <= 8 * 1024 < 3 * len(data), len(data)  # about 3.3 KiB: two fit
        spooled = tmp_path / "p" / "jobs-input"
        all_begun = trio.Event()
        statuses = []

        async def upload() -> None:
            async def body():
                yield data[:1024]
                await all_begun.wait()  # the rest once every upload has read the key's quota
                yield data[1024:]

            r = await http.post(base, content=body(), headers={**alice, "content-type": "application/jsonl"})
            statuses.append(r.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(upload)
            # An upload's spool file exists once its quota was read: then all four are under way.
            await wait_for(lambda: spooled.is_dir() and len(list(spooled.iterdir())) == 4)
            all_begun.set()
        # What was accepted fits the quota (one or two, as the chunks interleave; the other uploads'
        # partial bytes count while they last); each upload alone would have seen the whole quota.
        accepted = statuses.count(201)
        assert sorted(set(statuses)) == [201, 413] and accepted * len(data) <= 8 * 1024, statuses
        assert not list(spooled.iterdir())
        assert len((await http.get(base, headers=alice)).json()["jobs"]) == accepted


async def test_the_cli_streams_the_batch_file_as_it_is(tmp_path, http, monkeypatch):
    """``garage job submit`` posts the file raw (``application/jsonl``, options in the query string),
    which the daemon spools to disk: a file of exactly one job's maximum is accepted. Posted as a
    JSON string (its quotes escaped) it would be larger, and the daemon would hold and parse it whole."""
    text = batch(20, "ghost")
    monkeypatch.setattr("garage_p2p.jobs.submitter.MAX_INPUT_BYTES", len(text.encode()))
    keys(tmp_path / "p", "alice")
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}, require_keys=True) as peer,
    ):
        base = peer.api_url.removesuffix("/v1") + "/garage/v1/jobs"
        await ghost_job(peer, 1, shard_size=1)
        (tmp_path / "batch.jsonl").write_text(text)
        args = [
            "job",
            "submit",
            "-i",
            str(tmp_path / "batch.jsonl"),
            "--shard-size",
            "5",
            "--home",
            str(tmp_path / "p"),
        ]
        submitted = await trio.to_thread.run_sync(partial(CliRunner().invoke, app, args))
        assert submitted.exit_code == 0, submitted.output
        job = (await http.get(f"{base}/{submitted.output.strip()}", headers=operator(tmp_path / "p"))).json()
        assert job["total"] == 20 and job["shards"] == 4
