"""Fuzz the OpenAI-compatible endpoint with schemathesis, longer than the test suite does.

The same run as ``tests/test_fuzz_endpoint.py::test_schemathesis_against_the_endpoint``
(the official OpenAPI document cut down to the peer's operations; positive and negative
generation; two in-process peers on 127.0.0.1, A serving "tiny" from a StandInBackend and C
reaching it over the mesh), with the example counts multiplied by ``--scale``. Prints
requests per operation, statuses and throughput; lists the failures and exits 1 if any.

    .venv/bin/python benchmarks/fuzz_endpoint.py [--scale 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import first_addr, running_peer, standin_backend, wait_for_model
from tests.test_fuzz_endpoint import CHAT, Fuzz


async def run(scale: float, workdir: Path) -> int:
    async with standin_backend() as backend:
        async with running_peer(workdir / "a", backends={"tiny": backend}) as a:
            async with running_peer(workdir / "c", bootstrap=first_addr(a)) as c:
                await wait_for_model(c, "tiny")
                fuzz = Fuzz([a.api_url, c.api_url], scale=scale)
                started = time.monotonic()
                await trio.to_thread.run_sync(fuzz.run)
                elapsed = time.monotonic() - started
                async with httpx.AsyncClient(timeout=30) as http:
                    after = [(await http.post(url + "/chat/completions", json=CHAT)).status_code for url in (a.api_url, c.api_url)]
                consumer_faults = a.provider.faults.get(c.identity.peer_id, 0)
    total = sum(fuzz.tried.values())
    print(f"schemathesis x{scale:g}: {total} requests in {elapsed:.1f} s ({total / elapsed:.1f}/s), {fuzz.to_backend} for model tiny")
    for label, count in sorted(fuzz.tried.items()):
        print(f"  {label}: {count} in {fuzz.seconds[label]:.1f} s")
    print("  statuses:", dict(sorted(fuzz.statuses.items())))
    print(f"  chats afterwards: {after}; faults charged to the honest consumer: {consumer_faults}")
    problems = list(fuzz.failures)
    if after != [200, 200]:
        problems.append(f"a peer stopped serving: {after}")
    if consumer_faults:
        problems.append(f"the provider counted {consumer_faults} faults against the honest consumer")
    for problem in problems:
        print("FAIL", problem)
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="multiplies the test's example counts (default 10)")
    parser.add_argument("--workdir", type=Path, default=None, help="peer homes (default: a new temporary directory)")
    args = parser.parse_args()
    if not 0 < args.scale <= 1000:
        parser.error("--scale must be in (0, 1000]")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="garage-fuzz-"))
    sys.exit(trio.run(run, args.scale, workdir))


if __name__ == "__main__":
    main()
