"""What submitting a large batch file costs the daemon's memory: the CLI's raw upload against the JSON form.

A ``garage-peer`` process with ``--require-keys`` serves ``tiny`` from a stand-in backend. A batch file
of ``--mib`` MiB is submitted once by ``garage job submit`` (streamed as ``application/jsonl``) and, on a
fresh daemon, once as ``{"input": text}`` JSON with the operator's admin token (what the CLI sent
before). For each, the daemon's peak resident memory (VmHWM) before and after the submission; the job
is cancelled at once.

    python benchmarks/job_upload.py [--mib 38]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from garage_p2p.cli.peer_process import PeerProcess, peer_args  # noqa: E402
from garage_p2p.core.limits import Limits  # noqa: E402
from garage_p2p.store.admin_token import ADMIN_TOKEN_HEADER, read_admin_token  # noqa: E402
from garage_p2p.store.keys import KeyStore  # noqa: E402
from tools.testkit import free_port, standin_process, wait_until  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def batch_file(path: Path, mib: int) -> None:
    line = {"custom_id": "", "method": "POST", "url": "/v1/chat/completions"}
    with path.open("w") as f:
        i = 0
        while f.tell() < mib * 1024 * 1024:
            body = {"model": "tiny", "messages": [{"role": "user", "content": f"line {i} " + "x" * 120}]}
            f.write(json.dumps({**line, "custom_id": f"req-{i}", "body": body}) + "\n")
            i += 1


def measure(mode: str, root: Path, backend: str, batch: Path) -> tuple[float, float]:
    home = root / mode
    home.mkdir(parents=True)
    key = KeyStore(home / "keys.sqlite").create("bench", Limits())[1]
    peer = PeerProcess(home, peer_args(backends={"tiny": backend}, extra=["--require-keys"])).start()
    try:
        peer.wait_ready()
        base = peer.api_url.removesuffix("/v1")
        admin = {ADMIN_TOKEN_HEADER: read_admin_token(home) or ""}
        models = f"{base}/v1/models"
        auth = {"authorization": f"Bearer {key}"}
        wait_until(lambda: any(m["id"] == "tiny" for m in httpx.get(models, headers=auth).json()["data"]), 30, "tiny")
        before = peak_rss_mib(peer.process.pid)
        if mode == "cli":
            command = [sys.executable, "-m", "garage_p2p.cli.garage", "job", "submit", "-i", str(batch)]
            done = subprocess.run(
                [*command, "--shard-size", "1000", "--home", str(home)], capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, done.stderr
            job = done.stdout.strip()
        else:
            body = {"input": batch.read_text(), "shard_size": 1000}
            r = httpx.post(f"{base}/garage/v1/jobs", json=body, headers=admin, timeout=600)
            assert r.status_code == 201, r.text
            job = r.json()["id"]
        after = peak_rss_mib(peer.process.pid)
        httpx.post(f"{base}/garage/v1/jobs/{job}/cancel", headers=admin, timeout=60)
        return before, after
    finally:
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=38)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, standin_process(free_port()) as backend:
        root = Path(tmp)
        batch = root / "batch.jsonl"
        batch_file(batch, args.mib)
        size = batch.stat().st_size / 1024 / 1024
        for mode in ("cli", "json"):
            before, after = measure(mode, root, backend, batch)
            rise = after - before
            print(f"{mode:<5} {size:.1f} MiB file: daemon peak RSS {before:.0f} -> {after:.0f} MiB (+{rise:.0f})")


if __name__ == "__main__":
    main()
