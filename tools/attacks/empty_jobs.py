"""Empty jobs: a submitter announces jobs, then holds every provider slot that claims one.

The attacker announces ``jobs`` jobs for ``model`` (every second, as a submitter would) and answers
every claim with an empty lease only after ``delay`` seconds. A provider that works on at most four
jobs at once, whoever announced them, and waits for each claim as long as the submitter likes,
runs no honest batch work meanwhile (issue 16, item 6).
"""

from __future__ import annotations

import trio

from garage_p2p.core.jobs import PROTOCOL_JOBS, TOPIC_JOBS, JobAnnouncement, LeaseGrant
from garage_p2p.core.messages import encode_json
from garage_p2p.core.wire import FrameDecoder, FrameType, encode_frame
from garage_p2p.daemon import Peer
from garage_p2p.mesh.streams import StreamBroken, close_quietly, read_some, write_all

from . import Target

VICTIM = "provider"
"""The victim works on batch jobs (benchmarks/attacks.py: H)."""


async def attack(
    attacker: Peer, victim: Target, *, model: str = "tiny", jobs: int = 4, delay: float = 50.0, duration: float = 30.0
) -> dict[str, int | float | str]:
    """Announce ``jobs`` empty jobs for ``duration`` seconds; claims get an empty lease after ``delay`` seconds."""
    me = attacker.identity.peer_id
    claims = 0

    async def stall(stream) -> None:
        nonlocal claims
        decoder = FrameDecoder({FrameType.JOB_REQUEST: 1 << 20})
        try:
            with trio.move_on_after(duration):
                while data := await read_some(stream):
                    for _frame in decoder.feed(data):
                        claims += 1
                        await trio.sleep(delay)
                        await write_all(stream, encode_frame(FrameType.JOB_REPLY, encode_json(LeaseGrant())))
        except StreamBroken:
            pass
        finally:
            await close_quietly(stream)

    attacker.mesh.host.set_stream_handler(PROTOCOL_JOBS, stall)
    await attacker.mesh.connect(victim.peer_id, victim.addrs)
    announced = 0
    with trio.move_on_after(duration):
        while True:
            for i in range(jobs):
                await attacker.mesh.publish(
                    TOPIC_JOBS,
                    encode_json(JobAnnouncement(job_id=f"empty-{i}", model=model, submitter=me, shards_left=1)),
                )
                announced += 1
            await trio.sleep(1.0)
    return {"jobs": jobs, "announcements": announced, "claims_stalled": claims}
