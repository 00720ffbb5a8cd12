"""Batch jobs: the OpenAI Batch file format, shards, leases and tail stealing (sans-IO).

Input lines are the OpenAI Batch API's: ``{"custom_id", "method", "url", "body"}``.
A malformed line becomes an error entry and the rest of the job proceeds.

The submitter's ``JobState`` splits the lines into shards and leases them to
providers that ask (pull-based, so providers behind NAT take part). A lease
has a deadline; an expired lease, or one held by a provider that vanished,
returns its shard to the pool. A provider claims its next shard before the current
one ends (naming the leases it still works on). When no shard is left to lease, an
idle provider gets a duplicate lease on a shard still running elsewhere, but only at
the tail: few shards left, or a shard running twice as long as a typical one (tail
stealing); the first result per ``custom_id`` wins. Everything takes ``now``.

The submitter counter-signs a line's receipt only when ``JobState.cosign_refusal``
finds nothing wrong: a line of a lease granted to that provider, while the job
runs, once, with times inside the lease and no more GPU time than the lease's
wall time on the GPUs the provider advertises. A provider whose ad (so its GPUs) the submitter
does not know gets no counter-signature and no fault: an honest multi-GPU provider whose ad
expired must not be blamed for a receipt the submitter cannot check.

A provider's result record is checked by ``result_problem`` before it changes any state: a bad
one is refused (the line stays pending) and costs the provider a fault.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from .endpoints import GENERATION_PATHS
from .gossip_guard import TopicRule
from .limits import Limits
from .messages import WireModel
from .receipts import Receipt

TOPIC_JOBS = "garage/jobs/1"
ANNOUNCED_PER_ROUND = 4
"""Jobs a submitter announces in one round (the least recently announced first); rounds are at least
a second apart, so an honest submitter publishes at most 240 announcements a minute however many jobs
it runs."""
JOBS_GOSSIP = TopicRule("jobs", Limits(rpm=480))
"""Job announcements taken per publisher: twice the most an honest submitter publishes."""
PROTOCOL_JOBS = "/garage/jobs/1.0.0"
MAX_LINE_BYTES = 1024 * 1024
MAX_SHARD_SIZE = 1000
MAX_CUSTOM_ID = 512
RECEIPT_CLOCK_SKEW_S = 60.0
"""How far a provider's clock (receipt times) may be from the submitter's (lease times)."""
RECEIPT_SLACK_S = 1.0
"""GPU-seconds per GPU a lease may claim beyond its wall time (metering and rounding)."""
MAX_RESULT_TOKENS = 10**9
"""Most tokens one result's usage may report (the store keeps them as 64-bit integers)."""
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
TAIL_FRACTION = 0.1
"""A shard still running elsewhere is duplicated only once this fraction of the job's shards (at
least TAIL_MIN) is all that is left: earlier, an idle provider duplicating every running shard only
doubles the work (the simulated 2,000-line job on 250 providers ran 96 of its 100 shards twice)."""
TAIL_MIN = 2
STRAGGLER_FACTOR = 2.0
"""...or once it has run this many times as long as a typical shard of the job took (a straggler)."""
TYPICAL_OF = 20
"""Shards whose durations make the typical one (the latest; the median of them)."""


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One valid input line."""

    index: int
    """0-based line number in the input."""
    custom_id: str
    """The caller's id, unique in the job."""
    url: str
    """``/v1/chat/completions`` or ``/v1/completions``."""
    body: dict[str, Any]
    """The OpenAI request body (the job's model is set on it)."""


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that could not be run (malformed, or failed for good)."""

    index: int
    """0-based line number."""
    custom_id: str | None
    """Its custom_id, if it had a usable one."""
    code: str
    """Machine-readable reason."""
    message: str
    """Human-readable reason."""


def parse_batch(
    text: str | Iterable[str], model: str | None = None, *, bodies: bool = True, endpoint: str | None = None
) -> tuple[list[BatchLine], list[LineError], str | None]:
    """(valid lines, errors, the job's model). Every line must name the same model (or ``model`` overrides).

    ``endpoint``: the one ``url`` every line must have (a Batch API batch names it once for all).

    ``text``: the file's text, or its lines (without line ends) as they are read. ``bodies=False``
    keeps only each body's model (``{"model": ...}``): a big upload is checked without holding
    its bodies, which ``line_body`` reads again when they are stored.
    """
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    models: set[str] = set()
    for index, raw in enumerate(text.splitlines() if isinstance(text, str) else text):
        if not raw.strip():
            continue
        custom_id = None
        try:
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"line of {len(raw)} bytes exceeds {MAX_LINE_BYTES}")
            item = json.loads(raw)
            if not isinstance(item, dict):
                raise ValueError("a line must be a JSON object")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
                custom_id = None
                raise ValueError("custom_id must be a non-empty string")
            if custom_id in seen:
                raise ValueError(f"duplicate custom_id {custom_id!r}")
            if item.get("method", "POST") != "POST":
                raise ValueError("method must be POST")
            url = item.get("url")
            if url not in GENERATION_PATHS:
                raise ValueError(f"url must be one of {', '.join(GENERATION_PATHS)}")
            if endpoint is not None and url != endpoint:
                raise ValueError(f"url {url!r} is not the batch's endpoint {endpoint!r}")
            body = item.get("body")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            if body.get("stream"):
                raise ValueError("streaming is not supported in a batch")
            if model is not None:
                body = {**body, "model": model}
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise ValueError("body.model is missing")
            models.add(body["model"])
            seen.add(custom_id)
            lines.append(BatchLine(index, custom_id, url, body if bodies else {"model": body["model"]}))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            errors.append(LineError(index, custom_id, "invalid_line", str(exc)[:500]))
    if len(models) > 1:
        # One model per job (providers claim jobs by model): the one most lines ask for.
        counts: dict[str, int] = {}
        for line in lines:
            counts[line.body["model"]] = counts.get(line.body["model"], 0) + 1
        first = max(counts, key=lambda m: counts[m])  # ties: the first seen
        keep = []
        for line in lines:
            if line.body["model"] == first:
                keep.append(line)
            else:
                errors.append(
                    LineError(
                        line.index,
                        line.custom_id,
                        "model_mismatch",
                        f"the job's model is {first!r}; this line asks for {line.body['model']!r}",
                    )
                )
        lines = keep
    errors.sort(key=lambda e: e.index)
    job_model = lines[0].body["model"] if lines else (model or (sorted(models)[0] if models else None))
    return lines, errors, job_model


def line_body(raw: str, model: str | None = None) -> dict[str, Any]:
    """The request body of an input line that ``parse_batch`` accepted (``model`` as given to it)."""
    body = json.loads(raw)["body"]
    return {**body, "model": model} if model is not None else body


# -- messages -----------------------------------------------------------------------


class JobAnnouncement(WireModel):
    """Gossip on ``garage/jobs/1``: work is available at the submitter."""

    job_id: str = Field(min_length=1, max_length=64)
    """The job."""
    model: str = Field(min_length=1, max_length=256)
    """The model every line asks for."""
    submitter: str = Field(min_length=1, max_length=128)
    """Peer id to claim shards from."""
    shards_left: int = Field(ge=0)
    """Shards not yet done."""
    deadline: float | None = None
    """Unix time after which the submitter gives up."""


class JobRequest(WireModel):
    """A provider's request on ``/garage/jobs/1.0.0``."""

    op: Literal["claim", "results"]
    """``claim`` a shard, or hand in ``results`` of a lease."""
    job_id: str = Field(min_length=1, max_length=64)
    """The job."""
    lease_id: str | None = Field(default=None, max_length=64)
    """results: the lease they are for."""
    results: tuple[dict[str, Any], ...] = Field(default=(), max_length=MAX_SHARD_SIZE)
    """results: ``{custom_id, status_code, body, receipt}`` or ``{custom_id, error}`` per line."""
    working: tuple[str, ...] = Field(default=(), max_length=4)
    """claim: the leases the provider still works on (it claims the next shard before they end);
    its other leases are given up. A provider of before this field names none."""


class LeaseGrant(WireModel):
    """The reply to ``claim``."""

    lease_id: str | None = None
    """None when there is no work (the job is done, or everything is leased)."""
    deadline_s: float = Field(default=0.0, ge=0, le=86_400)
    """Seconds the provider has for the shard."""
    lines: tuple[dict[str, Any], ...] = Field(default=(), max_length=MAX_SHARD_SIZE)
    """``{custom_id, url, body, request_id}`` per line."""
    done: bool = False
    """The job needs nothing more from anyone."""

    @field_validator("lines")
    @classmethod
    def _lines(cls, lines: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        # The worker runs these lines and signs receipts for them: a line it cannot
        # run or name is the submitter's fault, caught here rather than mid-shard.
        for line in lines:
            request_id, custom_id = line.get("request_id"), line.get("custom_id")
            if not (isinstance(request_id, str) and 0 < len(request_id) <= 64):
                raise ValueError("a line needs a request_id of 1 to 64 characters")
            if not (isinstance(custom_id, str) and 0 < len(custom_id) <= MAX_CUSTOM_ID):
                raise ValueError("a line needs a custom_id")
            if line.get("url") not in GENERATION_PATHS or not isinstance(line.get("body"), dict):
                raise ValueError("a line needs a known url and an object body")
        return lines


class ResultsAck(WireModel):
    """The reply to ``results``."""

    accepted: int = 0
    """Results that were new."""
    cosigs: dict[str, str] = {}
    """request_id → the submitter's counter-signature (hex) of that line's receipt."""


def result_problem(result: dict[str, Any]) -> str | None:
    """Why a provider's result for one line is not one an honest provider sends, or None.

    A result is ``{custom_id, status_code, body[, receipt]}`` (an HTTP status and an object body whose
    ``usage`` counts are integers in 0..MAX_RESULT_TOKENS) or ``{custom_id, error}`` (an object whose
    ``code`` and ``message`` are strings). Checked before anything is stored: numbers from the
    network must fit the store's columns.
    """
    if "status_code" in result or "body" in result:
        status, body = result.get("status_code"), result.get("body")
        if type(status) is not int or not 100 <= status <= 599:
            return "a status_code that is not an HTTP status"
        if not isinstance(body, dict):
            return "a body that is not an object"
        usage = body.get("usage")
        if usage is None:
            return None
        if not isinstance(usage, dict):
            return "a usage that is not an object"
        for name in USAGE_FIELDS:
            count = usage.get(name)
            if count is not None and (type(count) is not int or not 0 <= count <= MAX_RESULT_TOKENS):
                return f"usage.{name} is not a token count"
        return None
    error = result.get("error")
    if not isinstance(error, dict):
        return "neither a response nor an error"
    if not all(isinstance(error.get(name, ""), str) for name in ("code", "message")):
        return "an error whose code or message is not a string"
    return None


# -- the submitter's state machine ---------------------------------------------------


@dataclass
class Lease:
    lease_id: str
    shard: int
    provider: str
    deadline: float
    duplicate: bool = False
    granted_at: float = 0.0
    """``now`` when it was granted: the provider's receipts cannot start before it."""
    gpu_us: int = 0
    """GPU time of the receipts counter-signed on this lease so far."""
    cosigned: set[str] = field(default_factory=set)
    """custom_ids whose receipt was counter-signed (once each)."""


@dataclass(frozen=True, slots=True)
class CosignRefusal:
    """Why a line's receipt is not counter-signed."""

    reason: str
    fault: bool
    """The provider's fault (a claim no honest provider makes), not just too late."""


@dataclass
class JobState:
    """One job's shards and leases, as its submitter tracks them."""

    job_id: str
    shards: list[list[BatchLine]]
    """Lines per shard."""
    lease_time: float = 300.0
    """Seconds a provider has for one shard."""
    done_ids: set[str] = field(default_factory=set)
    """custom_ids with a final result."""
    leases: dict[str, Lease] = field(default_factory=dict)
    """Open leases by id."""
    cancelled: bool = False
    granted: dict[str, Lease] = field(default_factory=dict)
    """Every lease ever granted by id (late results of an expired lease still count)."""
    durations: list[float] = field(default_factory=list)
    """How long the latest shards took, granted to results (the first lease of each; at most TYPICAL_OF)."""
    _next_lease: int = 0
    _unfinished: list[int] | None = field(default=None, repr=False)
    """The shards ``unfinished`` found, and the size of ``done_ids`` then."""
    _unfinished_at: int = field(default=-1, repr=False)

    @classmethod
    def of(cls, job_id: str, lines: list[BatchLine], shard_size: int, lease_time: float = 300.0) -> JobState:
        size = max(1, min(shard_size, MAX_SHARD_SIZE))
        return cls(job_id, [lines[i : i + size] for i in range(0, len(lines), size)], lease_time)

    def shard_done(self, shard: int) -> bool:
        return all(line.custom_id in self.done_ids for line in self.shards[shard])

    def unfinished(self) -> list[int]:
        """The shards with a line still without a result, in order.

        Counted again only when a result came, and only over the shards unfinished before:
        ``done_ids`` only grows, so a shard done stays done. (A claim asks for the shards left once per
        lease it might duplicate; counting every line of a 20,000-line job each time made a claim cost
        seconds.)
        """
        if self._unfinished is None or self._unfinished_at != len(self.done_ids):
            was = range(len(self.shards)) if self._unfinished is None else self._unfinished
            self._unfinished = [i for i in was if not self.shard_done(i)]
            self._unfinished_at = len(self.done_ids)
        return self._unfinished

    @property
    def finished(self) -> bool:
        return self.cancelled or not self.unfinished()

    def shards_left(self) -> int:
        return len(self.unfinished())

    def expire(self, now: float) -> list[Lease]:
        """Drop leases past their deadline (their shards can be leased again)."""
        gone = [lease for lease in self.leases.values() if lease.deadline <= now]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone

    def provider_gone(self, provider: str) -> list[Lease]:
        """Drop every lease of a provider that vanished."""
        gone = [lease for lease in self.leases.values() if lease.provider == provider]
        for lease in gone:
            del self.leases[lease.lease_id]
        return gone

    def claim(self, provider: str, now: float, working: Iterable[str] = ()) -> Lease | None:
        """A lease for ``provider``: a free shard first, else a duplicate of a shard at the tail.

        ``working``: the leases the provider still works on (it claims its next shard before the
        current one ends); any other lease it holds is given up.
        """
        if self.cancelled:
            return None
        self.expire(now)
        # Asking again without naming a lease means the provider gave it up (its stream broke, it
        # restarted). Waiting for that lease to expire would stall the job's tail for a whole lease time.
        keep = set(working)
        for lease in [held for held in self.leases.values() if held.provider == provider]:
            if lease.lease_id not in keep:
                del self.leases[lease.lease_id]
        leased = {lease.shard for lease in self.leases.values()}
        for shard in self.unfinished():
            if shard not in leased:
                return self._grant(shard, provider, now, duplicate=False)
        # Tail stealing: an idle provider duplicates a shard running elsewhere, once, at the tail only:
        # when few shards are left, or the shard runs long. Decided once per claim, not per lease: a
        # large job's claims come from every provider of its model, each over every open lease.
        unfinished = set(self.unfinished())
        few_left = len(unfinished) <= max(TAIL_MIN, math.ceil(TAIL_FRACTION * len(self.shards)))
        straggles_after = STRAGGLER_FACTOR * statistics.median(self.durations) if self.durations else math.inf
        if not few_left and not any(now - lease.granted_at > straggles_after for lease in self.leases.values()):
            return None
        duplicated = {lease.shard for lease in self.leases.values() if lease.duplicate}
        mine = {lease.shard for lease in self.leases.values() if lease.provider == provider}
        for lease in sorted(self.leases.values(), key=lambda held: held.granted_at):
            if (
                lease.shard not in duplicated
                and lease.shard not in mine
                and lease.shard in unfinished
                and (few_left or now - lease.granted_at > straggles_after)
            ):
                return self._grant(lease.shard, provider, now, duplicate=True)
        return None

    def _grant(self, shard: int, provider: str, now: float, duplicate: bool) -> Lease:
        self._next_lease += 1
        lease = Lease(
            f"{self.job_id[:16]}-{self._next_lease}", shard, provider, now + self.lease_time, duplicate, granted_at=now
        )
        self.leases[lease.lease_id] = lease
        self.granted[lease.lease_id] = lease
        return lease

    def complete(self, lease_id: str, custom_ids: list[str], now: float | None = None) -> list[str] | None:
        """Results for a lease arrived: the custom_ids that were new (first result wins).

        None for a lease we never granted. Results of an expired lease still
        count; ids outside the lease's shard are ignored. ``now`` times the shard (what makes a
        lease a straggler; None: not timed).
        """
        lease = self.granted.get(lease_id)
        if lease is None:
            return None
        if self.leases.pop(lease_id, None) is not None and now is not None and not lease.duplicate:
            self.durations = [*self.durations[-(TYPICAL_OF - 1) :], max(0.0, now - lease.granted_at)]
        allowed = {line.custom_id for line in self.shards[lease.shard]}
        new = [cid for cid in dict.fromkeys(custom_ids) if cid in allowed and cid not in self.done_ids]
        self.done_ids.update(new)
        return new

    def cosign_refusal(
        self, lease_id: str, provider: str, custom_id: str, receipt: Receipt, *, gpus: int | None, now: float
    ) -> CosignRefusal | None:
        """Why the submitter must not counter-sign this line's receipt, or None (the line then counts as signed).

        Call before ``complete`` for the same results (the job must be running when they arrive).
        ``gpus``: the GPUs the provider advertises, None if its ad is unknown (then nothing is signed, and it
        is not the provider's fault); ``now`` is on the clock of the leases (Unix time:
        receipts carry Unix times). A receipt is the provider's claim of GPU time that the submitter
        pays for in the ledger, so it must fit what the submitter saw: the lease it granted, the time
        since, the provider's GPUs.
        """
        lease = self.granted.get(lease_id)
        if lease is None or lease.provider != provider:
            return CosignRefusal("a receipt for a lease not granted to this peer", fault=True)
        if custom_id not in {line.custom_id for line in self.shards[lease.shard]}:
            return CosignRefusal("a receipt for a line outside its lease", fault=True)
        if custom_id in lease.cosigned:
            return CosignRefusal("a second receipt for a line of the lease", fault=True)
        if self.finished:
            return CosignRefusal("the job is no longer running", fault=False)
        if gpus is None:
            return CosignRefusal("the provider's ad (its GPUs) is unknown here", fault=False)
        if receipt.gpus > gpus:
            return CosignRefusal(f"a receipt for {receipt.gpus} GPUs from a peer that advertises {gpus}", fault=True)
        skew_ms = RECEIPT_CLOCK_SKEW_S * 1000
        if receipt.start_ms < lease.granted_at * 1000 - skew_ms or receipt.end_ms > now * 1000 + skew_ms:
            return CosignRefusal("a receipt whose time falls outside the lease", fault=True)
        budget_us = (max(0.0, now - lease.granted_at) + RECEIPT_SLACK_S) * gpus * 1e6
        if lease.gpu_us + receipt.gpu_us > budget_us:
            return CosignRefusal(
                f"receipts claim more GPU time than {gpus} GPUs had since the lease was granted", fault=True
            )
        lease.cosigned.add(custom_id)
        lease.gpu_us += receipt.gpu_us
        return None


# -- the provider's batch slots --------------------------------------------------------

MAX_JOBS = 4
"""Jobs a provider works on at once."""
MAX_JOBS_PER_SUBMITTER = 2
"""Of those, jobs of one submitter: one hostile submitter cannot hold every slot."""
PROGRESS_S = 20.0
"""A slot whose submitter gives no lines (nor says the job is done) for this long is dropped."""
STALL_MEMORY_S = 600.0
"""A submitter that stalls a slot again within this long is at fault (once may be a slow disk or a relay)."""
MAX_STALLED_SUBMITTERS = 1024
"""Submitters whose last stall is remembered (the oldest are forgotten first)."""


@dataclass
class WorkerSlots:
    """Which announced jobs a provider works on, and how long a job may give it nothing (sans-IO).

    A slot is taken on an announcement (a free slot, the submitter under its cap) and kept while
    the submitter gives work within ``progress_s``: the worker drops a slot past its deadline. A
    first stall is forgiven (an honest submitter's database may be busy storing a large job, or its
    link relayed); a second within ``stall_memory_s`` is the submitter's fault (it announces work,
    then holds slots without giving any). Everything takes ``now``.
    """

    max_jobs: int = MAX_JOBS
    per_submitter: int = MAX_JOBS_PER_SUBMITTER
    progress_s: float = PROGRESS_S
    submitters: dict[str, str] = field(default_factory=dict)
    """Job id → its submitter, for the jobs with a slot."""
    deadlines: dict[str, float] = field(default_factory=dict)
    """Job id → when its slot is dropped unless its submitter gives work first."""
    stall_memory_s: float = STALL_MEMORY_S
    stalled_at: dict[str, float] = field(default_factory=dict)
    """Submitter → when it last stalled a slot (insertion order: oldest first)."""

    def take(self, job_id: str, submitter: str, now: float) -> bool:
        """Take a slot for ``job_id``; False if there is none for it now."""
        if job_id in self.submitters or len(self.submitters) >= self.max_jobs:
            return False
        if sum(1 for s in self.submitters.values() if s == submitter) >= self.per_submitter:
            return False
        self.submitters[job_id] = submitter
        self.deadlines[job_id] = now + self.progress_s
        return True

    def progress(self, job_id: str, now: float) -> None:
        """The submitter gave work (lines, "done", an acknowledgement): its deadline moves on."""
        self.deadlines[job_id] = now + self.progress_s

    def release(self, job_id: str) -> None:
        """The job's work loop ended: its slot is free."""
        self.submitters.pop(job_id, None)
        self.deadlines.pop(job_id, None)

    def stalled(self, job_id: str, now: float) -> bool:
        """The job's submitter gave nothing before the deadline: True if that is its fault (a repeated stall).

        The caller releases the slot either way.
        """
        submitter = self.submitters.get(job_id)
        if submitter is None:
            return False
        last = self.stalled_at.pop(submitter, None)
        self.stalled_at[submitter] = now
        while len(self.stalled_at) > MAX_STALLED_SUBMITTERS:
            del self.stalled_at[next(iter(self.stalled_at))]
        return last is not None and now - last < self.stall_memory_s
