"""Batch jobs behind API keys (issue 16 item 9): a key sees only its own jobs; job input is spooled to
disk and bounded per key. Real HTTP against a real peer with ``--require-keys``."""

from __future__ import annotations

from garage_p2p.core.limits import Limits
from garage_p2p.store.keys import KeyStore

from .conftest import running_peer, standin_backend
from .test_jobs_hostile import ghost_job
from .test_jobs_inprocess import batch


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
        # The peer's own CLI (loopback, no key) sees every job.
        assert {j["id"] for j in (await http.get(base)).json()["jobs"]} == {ghost, job}


async def test_job_input_is_spooled_to_disk_and_bounded_per_key(tmp_path, http, monkeypatch):
    monkeypatch.setattr("garage_p2p.jobs.submitter.KEY_INPUT_QUOTA", 8 * 1024)
    (alice,) = keys(tmp_path / "p", "alice")
    async with (
        standin_backend() as backend,
        running_peer(tmp_path / "p", backends={"tiny": backend}, require_keys=True) as peer,
    ):
        base = peer.api_url.removesuffix("/v1") + "/garage/v1/jobs"
        await ghost_job(peer, 1, shard_size=1)
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
        # The peer's own CLI is bound by the per-job maximum only.
        assert (await http.post(base, json={"input": text})).status_code == 201
