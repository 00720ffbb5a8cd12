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
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_fuzz_endpoint import fuzz_two_peers


async def run(scale: float, workdir: Path) -> int:
    fuzz_run = await fuzz_two_peers(workdir, scale)
    print(f"x{scale:g}: ", end="")
    fuzz_run.report()
    after = [r.status_code for r in fuzz_run.after]
    print(f"  chats afterwards: {after}; faults charged to the honest consumer: {fuzz_run.consumer_faults}")
    problems = list(fuzz_run.fuzz.failures)
    if after != [200, 200]:
        problems.append(f"a peer stopped serving: {after}")
    if fuzz_run.consumer_faults:
        problems.append(f"the provider counted {fuzz_run.consumer_faults} faults against the honest consumer")
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
