"""A submitter killed with SIGKILL mid-job restarts and finishes the job without redoing finished work.

Real ``garage-peer`` processes on 127.0.0.1, StandInBackends (instruments, not models) that
count the requests they served.
"""

from __future__ import annotations

import json
import re
import sqlite3

import httpx

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from tools.testkit import wait_until

from .helpers import garage, models_of, standin_processes

LINES = 300
SHARD = 10


def served(url: str) -> int:
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
    return int(float(re.search(r"^vllm:request_success_total\S* (\S+)$", text, re.M).group(1)))


def results_stored(home, job_id: str) -> int:
    db = sqlite3.connect(f"file:{home / 'jobs.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM results WHERE job_id = ?", (job_id,)).fetchone()[0]
    finally:
        db.close()


def test_submitter_killed_mid_job_resumes_without_redoing_finished_lines(tmp_path, monkeypatch):
    with standin_processes([18730, 18731], token_delay=0.02) as urls:
        run_job(tmp_path, urls)


def run_job(tmp_path, urls: list[str]) -> None:
    # A fixed port, as a rig has: the providers find the restarted submitter at the same address.
    s = PeerProcess(tmp_path / "s", peer_args(listen="/ip4/127.0.0.1/tcp/18735")).start()
    providers = []
    try:
        s.wait_ready()
        for i, url in enumerate(urls):
            providers.append(
                PeerProcess(tmp_path / f"p{i}", peer_args(bootstrap=[s.addr], backends={"tiny": url})).start()
            )
        for p in providers:
            p.wait_ready()
        wait_until(lambda: len(models_of(s).get("tiny", [])) == 2, 30, "the submitter seeing both providers")
        lines = "\n".join(
            json.dumps(
                {
                    "custom_id": f"req-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "tiny", "messages": [{"role": "user", "content": str(i)}], "max_tokens": 4},
                }
            )
            for i in range(LINES)
        )
        batch = tmp_path / "batch.jsonl"
        batch.write_text(lines)
        submitted = garage("job", "submit", "--input", str(batch), "--shard-size", str(SHARD), "--api", s.api_url)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        wait_until(lambda: results_stored(s.home, job_id) >= LINES // 3, 60, "a third of the job done")
        s.kill()
        done_at_kill = results_stored(s.home, job_id)
        assert done_at_kill < LINES
        s.start()
        s.wait_ready()
        out = tmp_path / "out.jsonl"

        def finished() -> bool:
            status = garage("job", "status", job_id, "--json", "--api", s.api_url)
            return status.returncode == 0 and json.loads(status.stdout)["status"] == "completed"

        wait_until(finished, 120, "the resumed job completing")
        fetched = garage("job", "results", job_id, "-o", str(out), "--api", s.api_url)
        assert fetched.returncode == 0, fetched.stderr
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(LINES))
        assert out.with_name("out.errors.jsonl").read_text() == ""
        # Lines done before the kill were not run again: the backends served at most the job
        # plus what was in flight at the kill (two shards per provider: each claims its next
        # shard before its current one ends) and what tail stealing duplicated (the tail: 3 shards).
        total = sum(served(url) for url in urls)
        assert LINES <= total <= LINES + (2 * len(urls) + 3) * SHARD, (total, done_at_kill)
        print(f"{done_at_kill} lines done at the kill; backends served {total} for {LINES} lines")
    finally:
        for p in providers + [s]:
            p.stop()
