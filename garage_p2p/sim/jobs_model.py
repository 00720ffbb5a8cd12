"""Batch jobs in the simulator, with the core's own ``parse_batch`` and ``JobState``.

A consumer submits a JSONL batch; ``parse_batch`` reads it and ``JobState``
shards and leases it, as the daemon's submitter does. The submitter announces
the job on gossip at once and every 2 s; a provider of the model that hears
it claims a shard (a round trip to the submitter), runs its lines on its GPU
(at most 4 at a time, and only while interactive requests use less than half
its admission limit, as ``jobs/worker.py``), claims the next shard once every
line of the last has started (naming the leases it still works on, so the two
overlap), hands each shard's results in when its lines are done, and claims
again until the job has nothing left. Each line's receipt is counter-signed
by the submitter and logged like any other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.jobs import BatchLine, JobState, Lease, parse_batch
from . import calibration as cal
from .hardware import CONCURRENCY
from .metrics import JobRecord
from .workload import draw_ask

if TYPE_CHECKING:
    from .peers import SimPeer
    from .scenario import Event
    from .world import World

ANNOUNCE_S = 2.0
"""The submitter re-announces an unfinished job this often (jobs/submitter.py)."""
LEASE_S = 120.0
"""Seconds a provider has for a shard (jobs/submitter.py)."""
WORKER_LINES = 4
"""Lines a provider runs at once for a job (jobs/worker.py)."""
IDLE_CLAIMS = 5
"""Empty claims in a row before a provider's work loop stops (jobs/worker.py)."""
RETRY_S = 1.0
"""A provider waits this long after an empty claim or while interactive load is high."""


@dataclass(eq=False)
class SimJob:
    record: JobRecord
    submitter: SimPeer
    state: JobState
    lines: dict[str, BatchLine]
    workers: set[int] = field(default_factory=set)
    """Providers with a work loop on this job."""


@dataclass(eq=False)
class Shard:
    """A lease being worked on by one provider."""

    job: SimJob
    lease: Lease
    todo: list[BatchLine]
    running: int = 0
    done: list[str] = field(default_factory=list)
    receipts: list[tuple[str, int, float, float]] = field(default_factory=list)
    """(custom_id, tokens, started, gpu seconds) per finished line."""


@dataclass(eq=False)
class Work:
    """One provider's work loop on one job (``jobs/worker.py``'s ``_Work``)."""

    job: SimJob
    session: int
    shards: list[Shard] = field(default_factory=list)
    """Leases held, oldest first: the lines of two overlap (the next is claimed once every line of
    the last has a slot)."""
    running: int = 0
    """Lines running for this job, at most WORKER_LINES across its shards (the worker's limiter)."""
    claiming: bool = False
    """A claim is on its way."""
    waiting: bool = False
    """The last claim found nothing while shards were held: the next waits for one to end."""
    retrying: bool = False
    """Interactive load holds every line back: ``_work`` runs again in RETRY_S."""


class JobsNet:
    def __init__(self, world: World) -> None:
        self.world = world
        self.rng = world.rng("jobs")
        self.jobs: list[SimJob] = []

    # -- the submitter -------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        world = self.world
        if not world.online_consumers:
            return
        submitter = world.peers[self.rng.choice(world.online_consumers)]
        model = event.model or next(iter(world.scenario.models))
        rows = []
        for i in range(event.lines):
            ask = draw_ask(self.rng, world.scenario)
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"line {i}"}],
                "max_tokens": ask.max_tokens,
            }
            rows.append(
                json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
            )
        lines, errors, _ = parse_batch("\n".join(rows) + "\n", model)
        assert not errors, errors
        job_id = f"job-{len(self.jobs) + 1}"
        state = JobState.of(job_id, lines, event.shard_size, LEASE_S)
        record = JobRecord(job_id, model, len(lines), world.engine.now)
        job = SimJob(record, submitter, state, {line.custom_id: line for line in lines})
        self.jobs.append(job)
        world.obs.jobs.append(record)
        world.obs.events.append((world.engine.now, f"{job_id}: {len(lines)} lines of {model}"))
        self._announce(job)

    def running(self, peer: SimPeer) -> bool:
        """Whether ``peer`` submitted a job that is not finished (``JobManager.running``)."""
        return any(job.submitter is peer and not job.state.finished for job in self.jobs)

    def _announce(self, job: SimJob) -> None:
        world = self.world
        if job.state.finished or not job.submitter.online:
            return
        world.keep_alive(job.submitter)
        now = world.engine.now
        delay = world.topo.gossip_delay(job.submitter.idx)
        for p in world.providers_of.get(job.record.model, []):
            if p.online and p.idx not in job.workers and math.isfinite(delay[p.idx]):
                world.engine.at(now + delay[p.idx], self._heard, p, p.session, job)
        world.engine.after(ANNOUNCE_S, self._announce, job)

    # -- a provider's work loop --------------------------------------------------------------

    def _heard(self, p: SimPeer, session: int, job: SimJob) -> None:
        if p.online and p.session == session and not p.draining and p.idx not in job.workers and not job.state.finished:
            job.workers.add(p.idx)
            self._claim(p, Work(job, session), 0)

    def _reachable(self, p: SimPeer, job: SimJob) -> bool:
        return p.online and job.submitter.online and self.world.topo.same_side(p.idx, job.submitter.idx)

    def _live(self, p: SimPeer, work: Work) -> bool:
        return p.online and p.session == work.session

    def _claim(self, p: SimPeer, work: Work, idle: int) -> None:
        world = self.world
        job = work.job
        if not self._live(p, work) or p.draining or job.state.finished or idle >= IDLE_CLAIMS:
            work.claiming = False
            if not work.shards:
                job.workers.discard(p.idx)
            return
        work.claiming = True
        if not self._reachable(p, job):
            world.engine.after(cal.DIAL_TIMEOUT_S, self._claim, p, work, idle + 1)
            return
        rtt = world.topo.rtt(p.idx, job.submitter.idx)
        world.engine.after(rtt / 2, self._at_submitter, p, work, idle)

    def _at_submitter(self, p: SimPeer, work: Work, idle: int) -> None:
        world = self.world
        job = work.job
        working = [shard.lease.lease_id for shard in work.shards]
        lease = job.state.claim(p.peer_id, world.engine.now, working) if job.submitter.online else None
        back = world.topo.rtt(p.idx, job.submitter.idx) / 2
        if lease is None:
            if work.shards:
                work.claiming = False  # nothing more for now: ask again when one of ours ends
                work.waiting = True
            else:
                world.engine.after(back + RETRY_S, self._claim, p, work, idle + 1)
            return
        job.record.leases += 1
        job.record.duplicates += lease.duplicate
        job.record.early_claims += bool(working)
        shard = Shard(job, lease, list(job.state.shards[lease.shard]))
        world.engine.after(back, self._granted, p, work, shard)

    def _granted(self, p: SimPeer, work: Work, shard: Shard) -> None:
        work.claiming = False
        if not self._live(p, work):
            return  # its lease expires at the submitter
        work.shards.append(shard)
        self._work(p, work)

    def _work(self, p: SimPeer, work: Work) -> None:
        """Start lines, oldest shard first, while the GPU has room and interactive load allows; claim the
        next shard once every line of the newest has started."""
        world = self.world
        if not self._live(p, work):
            return
        interactive = len(p.flights)
        for shard in work.shards:
            while (
                shard.todo
                and work.running < WORKER_LINES
                and interactive < CONCURRENCY // 2
                and interactive + len(p.batch) < CONCURRENCY
            ):
                line = shard.todo.pop(0)
                world.start_batch_line(p, line.body["max_tokens"], (work, shard, line.custom_id))
                shard.running += 1
                work.running += 1
        if work.shards and not work.shards[-1].todo and not work.claiming and not work.waiting:
            self._claim(p, work, 0)
        elif any(shard.todo for shard in work.shards) and work.running == 0 and not work.retrying:
            work.retrying = True
            world.engine.after(RETRY_S, self._retry, p, work)

    def _retry(self, p: SimPeer, work: Work) -> None:
        work.retrying = False
        self._work(p, work)

    def line_done(self, p: SimPeer, token: tuple[Work, Shard, str], tokens: int, started: float, gpu_s: float) -> None:
        work, shard, custom_id = token
        shard.running -= 1
        work.running -= 1
        shard.done.append(custom_id)
        shard.receipts.append((custom_id, tokens, started, gpu_s))
        if not shard.todo and shard.running == 0:
            work.shards.remove(shard)
            self._hand_in(p, work, shard)
        self._work(p, work)

    def _hand_in(self, p: SimPeer, work: Work, shard: Shard) -> None:
        world = self.world
        job = shard.job
        if not self._reachable(p, job):
            if not work.shards:
                job.workers.discard(p.idx)
            return
        one_way = world.topo.rtt(p.idx, job.submitter.idx) / 2
        world.engine.after(one_way, self._results, p, work, shard)

    def _results(self, p: SimPeer, work: Work, shard: Shard) -> None:
        world = self.world
        job = shard.job
        new = job.state.complete(shard.lease.lease_id, shard.done, world.engine.now) or []
        now = world.engine.now
        job.record.lines_done = len(job.state.done_ids)
        if job.state.finished and job.record.finished is None:
            job.record.finished = now
        # The submitter counter-signs the receipts of the lines that were new; the provider logs them.
        fresh = set(new)
        for custom_id, tokens, started, gpu_s in shard.receipts:
            if custom_id in fresh:
                world.batch_receipt(
                    p,
                    work.session,
                    job.submitter,
                    f"{job.state.job_id}/{custom_id}",
                    job.record.model,
                    tokens,
                    started,
                    gpu_s,
                )
        if work.waiting or not (work.claiming or work.shards):  # a claim that found nothing waited for this
            work.waiting = False
            world.engine.after(world.topo.rtt(p.idx, job.submitter.idx) / 2, self._claim, p, work, 0)
