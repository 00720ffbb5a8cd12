"""Soak: mixed load against a 5-peer mesh of real processes while providers die and come back.

A measuring harness, not part of the daemon. On 127.0.0.1 only:

- five ``garage-peer`` processes in a bootstrap tree: consumers C0 (the root) and C1 (from
  C0), providers P0 and P1 (from C0) and P2 (from C1); each provider fronts its own
  StandInBackend process (model ``tiny``, a modest delay per token);
- load from the consumers' endpoints with httpx: ``concurrency`` workers (half on each
  consumer) sending chat completions, JSON or streamed (SSE), one after the other; each
  request is bounded by the peers' request deadline plus a margin, and one that neither
  answers nor errors within that bound is a HANG;
- every ``job_every`` seconds a small batch job (``garage job submit``) through a consumer,
  followed to its end;
- chaos: at seeded random intervals one provider gets SIGKILL or SIGTERM and is started
  again a few seconds later with the same home (identity, ledger and listen port persist);
  never more than one is down;
- RSS of every peer process from ``/proc/PID/status`` every ``sample_every`` seconds.

At the end (a bounded settling wait with the daemons running, so consumers can push
receipts again) every completed request's receipt is looked up in its provider's log, the
peers are stopped, ``garage ledger export`` gives the final count and ``garage ledger
verify`` must pass for every peer. Every process is killed on the way out, also on failure.

    from tools.soak import run_soak
    report = run_soak(120, seed=1, workdir=Path("/tmp/soak"), log=print)
    print(report.render())
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from garage_p2p.cli.peer_process import PeerProcess, peer_args
from garage_p2p.core.ledger import LedgerState, decode_entry
from garage_p2p.store.ledger_store import LedgerStore
from tools.testkit import REPO, free_port, percentile, standin_command

MODEL = "tiny"
BANNED_GAUGE = "garage_banned_peers"
"""The gauge of peers a penalty box holds banned now (``gateway/metrics.py``); read from each peer's /metrics."""
PUSHED = re.compile(r"pushed \d+ receipts to \S+: (\d+) accepted")
"""The consumer's log line when it pushed receipts again (``ledger/sync.py``)."""
EXPLICIT_ERRORS = ("http_", "sse_error")
"""Outcome prefixes that are explicit errors (an OpenAI error response, an SSE error event)."""
VIOLATIONS = ("hang", "truncated", "bad_body", "transport")
"""Outcomes the daemon promises never to produce."""


# -- records -------------------------------------------------------------------------------


@dataclass
class SoakRequest:
    kind: str
    """``chat`` (JSON) or ``stream`` (SSE)."""
    consumer: str
    """c0 or c1."""
    start: float
    """Seconds since the load began."""
    latency: float
    outcome: str
    """ok, http_NNN, sse_error, truncated (a stream that stopped with neither [DONE] nor an
    error event), bad_body (a 200 whose body is not an answer), transport (the consumer's
    connection failed), hang (nothing within the deadline plus the margin)."""
    request_id: str | None = None
    provider: str | None = None
    error_code: str | None = None
    late: bool = False
    """It ended after the peer's deadline (yet within the margin)."""
    retry_after: float | None = None
    """An error's Retry-After header, in seconds."""


@dataclass
class ChaosEvent:
    peer: str
    signal: str
    at: float
    """Seconds since the load began when the signal was sent."""
    exit_code: int | None
    stop_s: float
    """Signal to exit."""
    down_s: float
    """Signal to ready again."""
    ready_s: float
    """Start to ready."""


@dataclass
class JobRecord:
    job_id: str | None
    consumer: str
    at: float
    lines: int
    status: str
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0
    error: str | None = None
    request_ids: list[str] = field(default_factory=list)
    """Request ids of the lines that succeeded (the receipts the submitter counter-signed)."""


@dataclass
class MemorySample:
    t: float
    peer: str
    incarnation: int
    rss_kib: int


@dataclass
class PeerMemory:
    peer: str
    restarted: bool
    start_mib: float
    end_mib: float
    max_mib: float
    slope_mib_min: float | None
    """Least-squares slope over the second half of the run (peers never restarted)."""
    entries_per_min: float | None = None
    """Ledger entries this peer gained per minute over the same window."""
    beyond_ledger_mib_min: float | None = None
    """The slope less what the ledger entries gained explain."""
    bound_mib_min: float | None = None


@dataclass
class SoakReport:
    duration_s: float
    seed: int
    workdir: str
    peers: dict[str, str] = field(default_factory=dict)
    """Label → peer id."""
    started: int = 0
    """Requests sent; each one ends in a record (``requests``)."""
    requests: list[SoakRequest] = field(default_factory=list)
    chaos: list[ChaosEvent] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    memory_summary: list[PeerMemory] = field(default_factory=list)
    memory_bound: str = ""
    fresh_reference: dict = field(default_factory=dict)
    """The provider restarted last: {peer, restarted_at, end_mib}. It holds the same ledger as a
    peer that ran all along, in a fresh process: the difference is what running accumulated."""
    receipts_checked: int = 0
    receipts_lost: list[dict] = field(default_factory=list)
    receipts_settle_s: float | None = None
    consumers_settle_s: float | None = None
    """Seconds until each consumer's own ledger held its receipts and none stayed pending."""
    receipts_missing_at_consumers: int = 0
    pending_at_consumers: dict[str, int] = field(default_factory=dict)
    """Counter-signed receipts a consumer still keeps to push again, at the end (0 when settled)."""
    receipts_pushed_again: int = 0
    """Receipts consumers had to push again because the provider's log lacked them (a provider
    killed between END and writing the receipt), accepted by the provider; from their logs."""
    batch_receipts_checked: int = 0
    batch_receipts_lost: list[str] = field(default_factory=list)
    bans: list[dict] = field(default_factory=list)
    """Bans a peer's penalty box issued, seen as its ``garage_banned_peers`` gauge rising:
    {at (soak seconds), by, banned (how many more)}. Every peer here is honest, so each one is a
    false positive."""
    verify: dict[str, dict] = field(default_factory=dict)
    """Label → {ok, output}."""
    leaked: list[int] = field(default_factory=list)
    """Pids of our processes still alive after the end (must be empty)."""
    errors: list[str] = field(default_factory=list)
    """What went wrong in the harness itself (a peer that would not restart…)."""
    load_seconds: float = 0.0

    # -- figures -----------------------------------------------------------------

    def outcomes(self, kind: str | None = None) -> Counter:
        return Counter(r.outcome for r in self.requests if kind is None or r.kind == kind)

    @property
    def total(self) -> int:
        return len(self.requests)

    @property
    def ok(self) -> int:
        return sum(1 for r in self.requests if r.outcome == "ok")

    @property
    def hangs(self) -> int:
        return sum(1 for r in self.requests if r.outcome == "hang")

    @property
    def violations(self) -> Counter:
        """Outcomes that are neither an answer nor an explicit error."""
        return Counter(r.outcome for r in self.requests if r.outcome in VIOLATIONS)

    @property
    def success_rate(self) -> float:
        return self.ok / self.total if self.total else 0.0

    @property
    def kills(self) -> int:
        return len(self.chaos)

    @property
    def jobs_completed(self) -> int:
        return sum(1 for j in self.jobs if j.status == "completed")

    @property
    def verify_ok(self) -> bool:
        return bool(self.verify) and all(v["ok"] for v in self.verify.values())

    @property
    def memory_ok(self) -> bool:
        checked = [m for m in self.memory_summary if m.slope_mib_min is not None]
        return bool(checked) and all(m.slope_mib_min <= m.bound_mib_min for m in checked)

    def latency(self, kind: str | None = None, q: float = 0.5) -> float | None:
        values = sorted(r.latency for r in self.requests if r.outcome == "ok" and (kind is None or r.kind == kind))
        return percentile(values, q * 100)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self, memory_rows: int = 21) -> str:
        """The report as text: outcomes, latencies, chaos, jobs, receipts, verification, memory."""
        out: list[str] = []
        out.append(
            f"soak: {self.load_seconds:.0f} s of load (asked {self.duration_s:.0f} s), seed {self.seed}, "
            f"workdir {self.workdir}"
        )
        out.append("")
        out.append(
            f"requests: {self.started} sent, {self.total} ended ({self.ok} ok, success rate {self.success_rate:.3f}), "
            f"hangs {self.hangs}"
        )
        kinds = ["chat", "stream"]
        names = sorted(self.outcomes(), key=lambda o: (o != "ok", o))
        rows = [[name] + [str(self.outcomes(k)[name]) for k in kinds] + [str(self.outcomes()[name])] for name in names]
        out += table(["OUTCOME", "CHAT", "STREAM", "ALL"], rows)
        codes = Counter(f"{r.outcome} {r.error_code}" for r in self.requests if r.outcome != "ok")
        if codes:
            out.append("errors by code: " + ", ".join(f"{k} ×{v}" for k, v in codes.most_common()))
        late = sum(1 for r in self.requests if r.late)
        out.append(f"ended after the deadline (explicitly, within the margin): {late}")
        out.append("")
        rows = []
        for kind in kinds + [None]:
            p50, p99 = self.latency(kind, 0.5), self.latency(kind, 0.99)
            mx = max(
                (r.latency for r in self.requests if r.outcome == "ok" and (kind is None or r.kind == kind)),
                default=None,
            )
            rows.append([kind or "all", fmt_ms(p50), fmt_ms(p99), fmt_ms(mx)])
        out.append("latency of ok requests:")
        out += table(["KIND", "P50", "P99", "MAX"], rows)
        errs = sorted(r.latency for r in self.requests if r.outcome != "ok")
        if errs:
            out.append(
                f"latency of errors: p50 {fmt_ms(percentile(errs, 50))}, p99 {fmt_ms(percentile(errs, 99))}, "
                f"max {fmt_ms(errs[-1])}"
            )
        out.append("")
        out.append(f"chaos: {self.kills} kills/restarts")
        out += table(
            ["AT", "PEER", "SIGNAL", "EXIT", "STOP", "DOWN", "READY"],
            [
                [
                    f"{c.at:.0f}s",
                    c.peer,
                    c.signal,
                    str(c.exit_code),
                    f"{c.stop_s:.1f}s",
                    f"{c.down_s:.1f}s",
                    f"{c.ready_s:.1f}s",
                ]
                for c in self.chaos
            ],
        )
        out.append("")
        out.append(f"batch jobs: {self.jobs_completed}/{len(self.jobs)} completed")
        out += table(
            ["AT", "VIA", "JOB", "STATUS", "OK", "FAILED", "LINES", "TIME"],
            [
                [
                    f"{j.at:.0f}s",
                    j.consumer,
                    (j.job_id or "-")[:12],
                    j.status,
                    str(j.succeeded),
                    str(j.failed),
                    str(j.lines),
                    f"{j.seconds:.1f}s",
                ]
                for j in self.jobs
            ],
        )
        out.append("")
        out.append(
            f"receipts: {self.receipts_checked} completed requests checked, {len(self.receipts_lost)} lost "
            "(ledger export of each provider)"
        )
        out.append(f"  in the providers' logs {_fmt_s(self.receipts_settle_s)} after the load")
        out.append(
            f"  in the consumers' ledgers too, none pending: {_fmt_s(self.consumers_settle_s)} after that "
            f"({self.receipts_missing_at_consumers} missing there at the end)"
        )
        for lost in self.receipts_lost[:10]:
            out.append(f"  lost: {lost}")
        out.append(
            "  pushed again by the consumers (the provider's log lacked them) and accepted: "
            f"{self.receipts_pushed_again}"
        )
        out.append(
            f"batch receipts: {self.batch_receipts_checked} succeeded lines checked, "
            f"{len(self.batch_receipts_lost)} lost"
        )
        out.append(
            "receipts still pending at the consumers: "
            + ", ".join(f"{k} {v}" for k, v in self.pending_at_consumers.items())
        )
        out.append(f"honest peers banned by a penalty box: {len(self.bans)}")
        for ban in self.bans[:12]:
            out.append(f"  at {ban['at']} s {ban['by']} banned {ban['banned']} more peer(s) (its /metrics)")
        out.append(
            "ledger verify: " + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in self.verify.items())
        )
        out.append(f"leaked processes: {len(self.leaked)}")
        out.append("")
        out.append(f"memory (RSS, MiB); growth bound: {self.memory_bound}")
        out += table(
            ["PEER", "RESTARTED", "START", "END", "MAX", "SLOPE 2ND HALF", "ENTRIES/MIN", "BEYOND LEDGER", "BOUND"],
            [
                [
                    m.peer,
                    "yes" if m.restarted else "no",
                    f"{m.start_mib:.1f}",
                    f"{m.end_mib:.1f}",
                    f"{m.max_mib:.1f}",
                    "-" if m.slope_mib_min is None else f"{m.slope_mib_min:+.2f}/min",
                    "-" if m.entries_per_min is None else f"{m.entries_per_min:.0f}",
                    "-" if m.beyond_ledger_mib_min is None else f"{m.beyond_ledger_mib_min:+.2f}/min",
                    "-" if m.bound_mib_min is None else f"{m.bound_mib_min:.2f}/min",
                ]
                for m in self.memory_summary
            ],
        )
        if self.fresh_reference:
            ref = self.fresh_reference
            diffs = ", ".join(
                f"{m.peer} {m.end_mib - ref['end_mib']:+.1f}" for m in self.memory_summary if not m.restarted
            )
            out.append(
                f"against a fresh process: {ref['peer']} (restarted at {ref['restarted_at']:.0f} s, same ledger) "
                f"ends at {ref['end_mib']:.1f} MiB; "
                f"peers that ran all along, at the end, differ by (MiB): {diffs}"
            )
        out.append("")
        out.append("memory curve (RSS MiB; * = restarted since the previous row):")
        out += table(["T"] + [m.peer for m in self.memory_summary], self.memory_curve(memory_rows))
        if self.errors:
            out.append("")
            out.append("harness errors:")
            out += [f"  {e}" for e in self.errors]
        return "\n".join(out)

    def memory_curve(self, rows: int) -> list[list[str]]:
        peers = [m.peer for m in self.memory_summary]
        times = sorted({s.t for s in self.memory})
        if not times:
            return []
        step = max(1, math.ceil(len(times) / max(1, rows - 1)))
        chosen = times[::step]
        if chosen[-1] != times[-1]:
            chosen.append(times[-1])
        at: dict[tuple[float, str], MemorySample] = {(s.t, s.peer): s for s in self.memory}
        out, last_inc = [], {}
        for t in chosen:
            row = [f"{t:.0f}s"]
            for p in peers:
                s = at.get((t, p))
                if s is None:
                    row.append("down")
                    continue
                mark = "*" if last_inc.get(p, s.incarnation) != s.incarnation else ""
                last_inc[p] = s.incarnation
                row.append(f"{s.rss_kib / 1024:.1f}{mark}")
            out.append(row)
        return out


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return ["  " + line.rstrip() for line in lines]


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var


# -- processes -----------------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _ancestors() -> set[int]:
    """This process and its ancestors (their command lines may name the work directory)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def garage_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "garage_p2p.cli.garage", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_ledger(home: Path) -> LedgerState:
    """A peer's ledger as its file holds it (read-only, beside a running daemon)."""
    state = LedgerState()
    try:
        store = LedgerStore(home / "ledger.sqlite", readonly=True)
    except FileNotFoundError:
        return state
    try:
        for blob in store.entries():
            state.add(decode_entry(blob, check_signatures=False))
    finally:
        store.close()
    return state


def pending_count(home: Path) -> int:
    try:
        store = LedgerStore(home / "ledger.sqlite", readonly=True)
    except FileNotFoundError:
        return 0
    try:
        return len(store.pending())
    finally:
        store.close()


@dataclass
class SoakPeer:
    label: str
    process: PeerProcess
    backend_port: int | None = None
    incarnation: int = 0
    restarted: bool = False
    down: bool = False


class SoakMesh:
    """The five peers and three backends; ``close`` kills whatever is left."""

    def __init__(self, root: Path, *, request_timeout: float, token_delay: float, log: Callable[[str], None]) -> None:
        self.root = root
        self.request_timeout = request_timeout
        self.token_delay = token_delay
        self.log = log
        self.backends: list[subprocess.Popen] = []
        self.peers: dict[str, SoakPeer] = {}
        self.started: list[subprocess.Popen] = []
        """Every process we started, restarts included (for the leak check)."""

    def _config(self, home: Path) -> None:
        # A short request deadline: what a hang is measured against. (A restarted provider is
        # seen again by its new ad, published as it joins; a killed one is routed around on failure.)
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(f"request_timeout = {self.request_timeout}\n")

    def _backend(self, port: int) -> None:
        with open(self.root / f"backend-{port}.log", "ab") as log:
            proc = subprocess.Popen(
                standin_command(port, model=MODEL, token_delay=self.token_delay),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.backends.append(proc)
        self.started.append(proc)

    def _start(self, peer: SoakPeer) -> None:
        peer.process.start()
        self.started.append(peer.process.process)

    def start(self) -> None:
        backend_ports = [free_port() for _ in range(3)]
        for port in backend_ports:
            self._backend(port)
        deadline = time.monotonic() + 30
        for port in backend_ports:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the stand-in backend on port {port} did not come up")
                time.sleep(0.1)

        def make(label: str, bootstrap: list[str], backend_port: int | None = None) -> SoakPeer:
            home = self.root / label
            self._config(home)
            backends = {MODEL: f"http://127.0.0.1:{backend_port}/v1"} if backend_port else None
            # A fixed listen port, as a rig has: the others find a restarted provider again.
            args = peer_args(listen=f"/ip4/127.0.0.1/tcp/{free_port()}", bootstrap=bootstrap, backends=backends)
            peer = SoakPeer(label, PeerProcess(home, args), backend_port)
            self.peers[label] = peer
            return peer

        c0 = make("c0", [])
        self._start(c0)
        c0.process.wait_ready()
        c1 = make("c1", [c0.process.addr])
        p0 = make("p0", [c0.process.addr], backend_ports[0])
        p1 = make("p1", [c0.process.addr], backend_ports[1])
        self._start(c1)
        self._start(p0)
        self._start(p1)
        c1.process.wait_ready()
        p2 = make("p2", [c1.process.addr], backend_ports[2])
        self._start(p2)
        for peer in (p0, p1, p2):
            peer.process.wait_ready()
        providers = {p.process.peer_id for p in self.providers}
        deadline = time.monotonic() + 60
        while not all(self._sees(c, providers) for c in self.consumers):
            if time.monotonic() > deadline:
                raise RuntimeError("the consumers did not see the three providers within 60 s")
            time.sleep(0.2)
        self.log("mesh up: " + ", ".join(f"{p.label}={p.process.peer_id[-8:]}" for p in self.peers.values()))

    @staticmethod
    def _sees(consumer: SoakPeer, providers: set[str]) -> bool:
        try:
            data = httpx.get(consumer.process.api_url + "/models", timeout=5).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return any(m["id"] == MODEL and providers <= set(m["providers"]) for m in data)

    @property
    def consumers(self) -> list[SoakPeer]:
        return [self.peers["c0"], self.peers["c1"]]

    @property
    def providers(self) -> list[SoakPeer]:
        return [self.peers["p0"], self.peers["p1"], self.peers["p2"]]

    def restart(self, peer: SoakPeer, timeout: float = 60) -> float:
        start = time.monotonic()
        self._start(peer)
        peer.process.wait_ready(timeout)
        peer.incarnation += 1
        peer.restarted = True
        peer.down = False
        return time.monotonic() - start

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every peer (drain), providers first; their exit codes."""
        codes = {}
        for peer in self.providers + self.consumers:
            codes[peer.label] = peer.process.stop(signal.SIGTERM, timeout=40)
        return codes

    def close(self) -> list[int]:
        """Kill every process group we started; the pids still alive afterwards."""
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        return self.leaked()

    def leaked(self) -> list[int]:
        """Our processes that still run, and any other garage process naming our root."""
        alive = [proc.pid for proc in self.started if proc.poll() is None]
        root = str(self.root)
        ours = _ancestors()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":
                continue
            if pid not in alive and pid not in ours and root in cmd and "garage_p2p" in cmd:
                alive.append(pid)
        return alive


# -- the run ------------------------------------------------------------------------------


@dataclass
class _Settings:
    duration: float
    seed: int
    concurrency: int
    request_timeout: float
    margin: float
    token_delay: float
    job_every: float
    job_lines: int
    job_timeout: float
    sample_every: float
    settle_timeout: float
    kill_gap: tuple[float, float]
    down_time: tuple[float, float]


class _Run:
    def __init__(self, mesh: SoakMesh, s: _Settings, report: SoakReport, log: Callable[[str], None]) -> None:
        self.mesh = mesh
        self.s = s
        self.report = report
        self.log = log
        self.t0 = 0.0
        self.end = 0.0
        self.rng_chaos = random.Random(f"{s.seed}-chaos")
        self._logged: dict[tuple[str, str | None], tuple[float, int]] = {}
        self.bans = BanWatch(report)

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def main(self) -> None:
        self.t0 = trio.current_time()
        self.end = self.t0 + self.s.duration
        limits = httpx.Limits(max_connections=self.s.concurrency * 2, max_keepalive_connections=self.s.concurrency * 2)
        bound = self.s.request_timeout + self.s.margin
        async with httpx.AsyncClient(timeout=httpx.Timeout(bound), limits=limits) as client:
            async with trio.open_nursery() as outer:
                outer.start_soon(self.sample_memory)
                outer.start_soon(self.watch_bans, client)
                async with trio.open_nursery() as nursery:
                    for i in range(self.s.concurrency):
                        nursery.start_soon(self.worker, client, self.mesh.consumers[i % 2], i)
                    nursery.start_soon(self.chaos)
                    nursery.start_soon(self.jobs, client)
                self.report.load_seconds = self.now()
                outer.cancel_scope.cancel()

    # -- load --------------------------------------------------------------------

    async def worker(self, client: httpx.AsyncClient, consumer: SoakPeer, index: int) -> None:
        rng = random.Random(f"{self.s.seed}-worker-{index}")
        while trio.current_time() < self.end:
            kind = "stream" if rng.random() < 0.5 else "chat"
            tokens = rng.randint(4, 24)
            self.report.started += 1
            record = await self.one(client, consumer, kind, tokens)
            self.report.requests.append(record)
            # As a client would: after an error, back off (Retry-After when given, up to 5 s)
            # rather than hammer a mesh that just said no.
            pause = (
                rng.uniform(0.0, 0.3)
                if record.outcome == "ok"
                else max(rng.uniform(0.5, 1.0), min(5.0, record.retry_after or 0.0))
            )
            await trio.sleep(pause)

    async def one(self, client: httpx.AsyncClient, consumer: SoakPeer, kind: str, tokens: int) -> SoakRequest:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "soak"}], "max_tokens": tokens}
        if kind == "stream":
            body["stream"] = True
        url = consumer.process.api_url + "/chat/completions"
        start = trio.current_time()
        record = SoakRequest(kind, consumer.label, start - self.t0, 0.0, "hang")
        with trio.move_on_after(self.s.request_timeout + self.s.margin):
            try:
                if kind == "chat":
                    await self._chat(client, url, body, record)
                else:
                    await self._stream(client, url, body, record)
            except httpx.HTTPError as exc:
                record.outcome = "transport"
                record.error_code = type(exc).__name__
        record.latency = trio.current_time() - start
        record.late = record.outcome != "hang" and record.latency > self.s.request_timeout
        if record.outcome != "ok":
            self._log_error(record)
        return record

    def _log_error(self, record: SoakRequest) -> None:
        """One line per kind of error every 5 s at most, with the count of those not shown."""
        key = (record.outcome, record.error_code)
        now = trio.current_time()
        last, quiet = self._logged.get(key, (-math.inf, 0))
        if now - last < 5.0:
            self._logged[key] = (last, quiet + 1)
            return
        more = f" (+{quiet} more like it)" if quiet else ""
        self._logged[key] = (now, 0)
        self.log(
            f"{record.start:7.1f}s {record.consumer} {record.kind}: {record.outcome} {record.error_code or ''} after "
            f"{record.latency:.2f} s{more}"
        )

    @staticmethod
    def _error_code(payload: object) -> str | None:
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return str(payload["error"].get("code"))
        return None

    async def _chat(self, client: httpx.AsyncClient, url: str, body: dict, record: SoakRequest) -> None:
        r = await client.post(url, json=body)
        record.request_id = r.headers.get("x-request-id")
        record.provider = r.headers.get("x-garage-provider")
        try:
            payload = r.json()
        except ValueError:
            payload = None
        if r.status_code != 200:
            record.outcome = f"http_{r.status_code}"
            record.error_code = self._error_code(payload) or "not_an_openai_error"
            record.retry_after = _retry_after(r)
            return
        try:
            content = payload["choices"][0]["message"]["content"]
        except (TypeError, KeyError, IndexError):
            content = None
        record.outcome = "ok" if content else "bad_body"

    async def _stream(self, client: httpx.AsyncClient, url: str, body: dict, record: SoakRequest) -> None:
        async with client.stream("POST", url, json=body) as r:
            record.request_id = r.headers.get("x-request-id")
            record.provider = r.headers.get("x-garage-provider")
            if r.status_code != 200:
                raw = await r.aread()
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = None
                record.outcome = f"http_{r.status_code}"
                record.error_code = self._error_code(payload) or "not_an_openai_error"
                record.retry_after = _retry_after(r)
                return
            done, error, pieces = False, None, 0
            # Read to the end of the stream: an error event may follow even [DONE].
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    error = error or "bad_json_event"
                    continue
                if isinstance(chunk, dict) and "error" in chunk:
                    error = self._error_code(chunk) or "error_event"
                elif isinstance(chunk, dict) and chunk.get("choices"):
                    pieces += 1
        if error == "bad_json_event":
            record.outcome, record.error_code = "bad_body", error
        elif error is not None:
            record.outcome, record.error_code = "sse_error", error
        elif done and pieces:
            record.outcome = "ok"
        else:
            record.outcome = "truncated"

    # -- chaos -------------------------------------------------------------------

    async def chaos(self) -> None:
        rng = self.rng_chaos
        signals: list[signal.Signals] = []
        await trio.sleep_until(min(self.end, trio.current_time() + rng.uniform(8, 15)))
        while trio.current_time() < self.end - 10:
            peer = rng.choice(self.mesh.providers)
            if not signals:
                # Each pair of events has one of each, in a random order: any run with two
                # events or more has both a crash and a graceful stop.
                signals = rng.sample([signal.SIGKILL, signal.SIGTERM], 2)
            sig = signals.pop()
            down_for = rng.uniform(*self.s.down_time)
            at = self.now()
            started = trio.current_time()
            peer.down = True
            self.log(f"{at:7.1f}s chaos: {sig.name} {peer.label}")
            if sig == signal.SIGKILL:
                await trio.to_thread.run_sync(peer.process.kill)
                code = peer.process.process.returncode
            else:
                code = await trio.to_thread.run_sync(peer.process.stop, signal.SIGTERM, 40.0)
            stop_s = trio.current_time() - started
            await trio.sleep(down_for)
            try:
                ready_s = await trio.to_thread.run_sync(self.mesh.restart, peer)
            except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on without it
                self.report.errors.append(f"{peer.label} did not restart at {self.now():.0f} s: {exc}")
                self.log(f"{self.now():7.1f}s chaos: {peer.label} did not restart: {exc}")
                return
            down_s = trio.current_time() - started
            self.report.chaos.append(ChaosEvent(peer.label, sig.name, at, code, stop_s, down_s, ready_s))
            self.log(f"{self.now():7.1f}s chaos: {peer.label} back (exit {code}, down {down_s:.1f} s)")
            await trio.sleep_until(min(self.end, trio.current_time() + rng.uniform(*self.s.kill_gap)))

    # -- batch jobs --------------------------------------------------------------

    async def jobs(self, client: httpx.AsyncClient) -> None:
        async with trio.open_nursery() as nursery:
            at, n = min(12.0, self.s.duration / 4), 0
            while at < self.s.duration - 10:
                await trio.sleep_until(self.t0 + at)
                consumer = self.mesh.consumers[n % 2]
                record = JobRecord(None, consumer.label, self.now(), self.s.job_lines, "submitting")
                self.report.jobs.append(record)
                nursery.start_soon(self.job, client, consumer, record, n)
                at += self.s.job_every
                n += 1

    async def job(self, client: httpx.AsyncClient, consumer: SoakPeer, record: JobRecord, n: int) -> None:
        workdir = Path(self.report.workdir)
        batch = workdir / f"batch-{n}.jsonl"
        batch.write_text(
            "\n".join(
                json.dumps(
                    {
                        "custom_id": f"job{n}-line{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "messages": [{"role": "user", "content": str(i)}], "max_tokens": 8},
                    }
                )
                for i in range(self.s.job_lines)
            )
            + "\n"
        )
        api = consumer.process.api_url
        start = trio.current_time()
        submitted = None
        with trio.move_on_after(120):
            submitted = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "garage_p2p.cli.garage",
                    "job",
                    "submit",
                    "--input",
                    str(batch),
                    "--shard-size",
                    "4",
                    "--api",
                    api,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if submitted is None or submitted.returncode != 0:
            record.status = "submit_failed"
            record.error = (
                "no answer within 120 s" if submitted is None else submitted.stderr.decode(errors="replace")[-500:]
            )
            self.log(f"{self.now():7.1f}s job {n}: submit failed: {record.error}")
            return
        record.job_id = submitted.stdout.decode().strip()
        record.status = "running"
        base = api.removesuffix("/v1")
        with trio.move_on_after(self.s.job_timeout):
            while True:
                await trio.sleep(1.0)
                try:
                    progress = (await client.get(f"{base}/garage/v1/jobs/{record.job_id}", timeout=10)).json()
                except (httpx.HTTPError, ValueError) as exc:
                    record.error = f"status: {exc!r}"
                    continue
                record.succeeded, record.failed = progress.get("succeeded", 0), progress.get("failed", 0)
                if progress.get("status") != "running":
                    record.status = progress.get("status", "unknown")
                    break
        record.seconds = trio.current_time() - start
        if record.status == "running":
            record.status = "timed_out"
        self.log(
            f"{self.now():7.1f}s job {n} ({record.job_id}): {record.status}, {record.succeeded} ok, {record.failed} "
            f"failed in {record.seconds:.1f} s"
        )
        out = workdir / f"batch-{n}.out.jsonl"
        fetched = None
        with trio.move_on_after(120):
            fetched = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "garage_p2p.cli.garage",
                    "job",
                    "results",
                    record.job_id,
                    "-o",
                    str(out),
                    "--api",
                    api,
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if fetched is not None and fetched.returncode == 0:
            for line in out.read_text().splitlines():
                try:
                    rid = json.loads(line)["response"]["request_id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if rid:
                    record.request_ids.append(rid)
        else:
            record.error = "results: " + (
                "no answer within 120 s" if fetched is None else fetched.stderr.decode(errors="replace")[-300:]
            )

    # -- memory ------------------------------------------------------------------

    async def sample_memory(self) -> None:
        while True:
            t = self.now()
            for peer in self.mesh.peers.values():
                proc = peer.process.process
                if peer.down or proc is None or proc.poll() is not None:
                    continue
                kib = rss_kib(proc.pid)
                if kib is not None:
                    self.report.memory.append(MemorySample(round(t, 1), peer.label, peer.incarnation, kib))
            await trio.sleep(self.s.sample_every)

    # -- bans --------------------------------------------------------------------

    async def watch_bans(self, client: httpx.AsyncClient) -> None:
        """Every ``sample_every`` s, each running peer's count of banned peers: a rise is a ban.

        Sampled rather than read once at the end: a provider killed by the chaos forgets its
        penalty box, and a ban lasts long enough (core/penalties.py) that no sample misses it.
        """
        while True:
            for peer in list(self.mesh.peers.values()):
                if peer.down or not peer.process.info:
                    continue
                try:
                    with trio.fail_after(5):
                        response = await client.get(metrics_url(peer.process))
                except (httpx.HTTPError, trio.TooSlowError):
                    continue
                self.bans.note(peer, response.text, self.now())
            await trio.sleep(self.s.sample_every)


class BanWatch:
    """Bans each peer's penalty box issued, from its ``garage_banned_peers`` gauge."""

    def __init__(self, report: SoakReport) -> None:
        self.report = report
        self.last: dict[tuple[str, int], int] = {}
        """(label, incarnation) → the gauge at the last read (a restarted peer starts from 0)."""

    def note(self, peer: SoakPeer, metrics_text: str, at: float) -> None:
        banned = banned_peers(metrics_text)
        if banned is None:
            return
        key = (peer.label, peer.incarnation)
        before = self.last.get(key, 0)
        if banned > before:
            self.report.bans.append({"at": round(at, 1), "by": peer.label, "banned": banned - before})
        self.last[key] = banned


def metrics_url(process: PeerProcess) -> str:
    return process.api_url.removesuffix("/v1") + "/metrics"


def banned_peers(metrics_text: str) -> int | None:
    """The ``garage_banned_peers`` gauge of a /metrics page; None if the page lacks it."""
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name == BANNED_GAUGE and family.samples:
                return int(family.samples[0].value)
    except ValueError:
        return None
    return None


def _entry_counts(mesh: SoakMesh) -> dict[str, int]:
    counts = {}
    for peer in mesh.peers.values():
        try:
            store = LedgerStore(peer.process.home / "ledger.sqlite", readonly=True)
        except FileNotFoundError:
            counts[peer.label] = 0
            continue
        try:
            counts[peer.label] = store.count()
        finally:
            store.close()
    return counts


LEDGER_KIB_PER_ENTRY = 2.5
"""What one ledger entry costs every peer in memory, by design: the daemon holds the whole
ledger in a ``LedgerState`` (the entry's bytes, its decoded receipt, the seen-set key). Measured:
2.2 KiB per entry (a soak's ledger of 886 entries loaded ten times over in one process)."""
WARM_UP_S = 180.0
"""Until this many seconds into the run, the allocators are still warming up."""
MEMORY_SLACK_MIB_MIN = (6.0, 3.0)
"""RSS growth per minute allowed beyond the ledger: while warming up (the measured window
starts before ``WARM_UP_S``), and after. A peer's RSS climbs while its allocators warm up:
CPython's arenas, glibc's per-thread arenas (``trio.to_thread`` workers verify signatures and
write SQLite), SQLite's page cache (capped at 2 MiB per connection). That warm-up decays.
Measured, beyond the ledger: in one process (consumer + provider, 8 clients) RSS per 500
requests grew 3.8, 4.5, 4.0, 4.0, 3.3, 3.0, then 1.5 MiB (the last step the ledger alone);
in the soak, over the second half, 2.4–3.4 MiB/min in 100 s runs (eleven peer-runs), 1.5 in
a 300 s run, 0.35 in a 600 s run. So: 6 MiB/min in a short run (about twice what warm-up
gives), 3 after; a leak of a few KiB per request (≥ 3 MiB/min at this load) fails a long run."""


def memory_slack_mib_min(window_start_s: float) -> float:
    return MEMORY_SLACK_MIB_MIN[0] if window_start_s < WARM_UP_S else MEMORY_SLACK_MIB_MIN[1]


def memory_bound_mib_min(entries_per_min: float, window_start_s: float) -> float:
    return memory_slack_mib_min(window_start_s) + LEDGER_KIB_PER_ENTRY * entries_per_min / 1024


def memory_summary(
    report: SoakReport,
    mesh: SoakMesh,
    entries_half: dict[str, int],
    entries_end: dict[str, int],
    half_t: float,
    end_t: float,
) -> None:
    minutes = max(1e-9, (end_t - half_t) / 60)
    report.memory_bound = (
        f"least-squares slope of RSS over the second half ≤ {memory_slack_mib_min(half_t):.0f} MiB/min "
        f"(allocator warm-up; {MEMORY_SLACK_MIB_MIN[0]:.0f} if the half starts before {WARM_UP_S:.0f} s, else "
        f"{MEMORY_SLACK_MIB_MIN[1]:.0f}) + "
        f"{LEDGER_KIB_PER_ENTRY} KiB × ledger entries gained per minute (the ledger lives in memory by design); "
        "peers never restarted"
    )
    for peer in mesh.peers.values():
        samples = [s for s in report.memory if s.peer == peer.label]
        if not samples:
            continue
        mib = [s.rss_kib / 1024 for s in samples]
        m = PeerMemory(peer.label, peer.restarted, mib[0], mib[-1], max(mib), None)
        if not peer.restarted:
            points = [(s.t, s.rss_kib / 1024) for s in samples if half_t <= s.t <= end_t]
            m.slope_mib_min = slope_per_min(points)
            gained = entries_end.get(peer.label, 0) - entries_half.get(peer.label, 0)
            m.entries_per_min = gained / minutes
            m.bound_mib_min = memory_bound_mib_min(m.entries_per_min, half_t)
            if m.slope_mib_min is not None:
                m.beyond_ledger_mib_min = m.slope_mib_min - LEDGER_KIB_PER_ENTRY * m.entries_per_min / 1024
        report.memory_summary.append(m)
    restarts = [
        c
        for c in report.chaos
        if mesh.peers[c.peer].process.process is not None and mesh.peers[c.peer].process.process.poll() is None
    ]
    if restarts:
        last = max(restarts, key=lambda c: c.at + c.down_s)
        ends = [s for s in report.memory if s.peer == last.peer]
        if ends:
            report.fresh_reference = {
                "peer": last.peer,
                "restarted_at": last.at + last.down_s,
                "end_mib": ends[-1].rss_kib / 1024,
            }


def _served(mesh: SoakMesh) -> dict[str, tuple[str, LedgerState]]:
    return {p.process.peer_id: (p.label, read_ledger(p.process.home)) for p in mesh.providers}


ATTEMPT_IDS = 8
"""Continuations looked for per request: ``<id>.1`` … (two failovers, and the relay moves)."""


def _attempt_ids(request_id: str) -> list[str]:
    """A request's receipt ids: its own, and its continuations' (a failed-over answer's receipts are
    at the providers that continued it, each for the tokens it made; a provider killed before its
    END signed nothing, by design)."""
    return [request_id, *(f"{request_id}.{n}" for n in range(1, ATTEMPT_IDS))]


def _missing(report: SoakReport, mesh: SoakMesh, consumer_ids: dict[str, str]) -> tuple[list[SoakRequest], list[str]]:
    served = _served(mesh)
    missing = []
    for r in report.requests:
        if r.outcome != "ok":
            continue
        consumer, ids = consumer_ids[r.consumer], _attempt_ids(r.request_id or "")
        if not any(state.has_receipt(pid, consumer, rid) for pid, (_, state) in served.items() for rid in ids):
            missing.append(r)
    batch_missing = []
    for job in report.jobs:
        submitter = consumer_ids[job.consumer]
        for rid in job.request_ids:
            if not any(state.has_receipt(pid, submitter, rid) for pid, (_, state) in served.items()):
                batch_missing.append(rid)
    return missing, batch_missing


@contextlib.contextmanager
def _sigterm_as_exit():
    """While it lasts, SIGTERM raises SystemExit (if nobody else handles it), so that the
    cleanup below runs: the peers and backends live in sessions of their own and would
    outlive us otherwise."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _settle(predicate: Callable[[], bool], timeout: float, interval: float = 2.0) -> float | None:
    """Seconds until ``predicate()`` held, or None after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def _fmt_s(seconds: float | None) -> str:
    return "never (timed out)" if seconds is None else f"{seconds:.1f} s"


def _consumers_missing(report: SoakReport, mesh: SoakMesh, consumer_ids: dict[str, str]) -> int:
    """Receipts of completed requests (and batch lines) their consumer's own ledger does not hold."""
    states = {c.label: read_ledger(c.process.home) for c in mesh.consumers}
    providers = [p.process.peer_id for p in mesh.providers]
    missing = 0
    for r in report.requests:
        if r.outcome != "ok":
            continue
        state, ids = states[r.consumer], _attempt_ids(r.request_id or "")
        if not any(state.has_receipt(pid, consumer_ids[r.consumer], rid) for pid in providers for rid in ids):
            missing += 1
    for job in report.jobs:
        state, me = states[job.consumer], consumer_ids[job.consumer]
        missing += sum(1 for rid in job.request_ids if not any(state.has_receipt(p, me, rid) for p in providers))
    return missing


def run_soak(
    duration_s: float,
    seed: int = 0,
    workdir: Path | str | None = None,
    log: Callable[[str], None] | None = None,
    *,
    concurrency: int = 8,
    request_timeout: float = 15.0,
    margin: float = 10.0,
    token_delay: float = 0.02,
    job_every: float = 60.0,
    job_lines: int = 24,
    job_timeout: float = 150.0,
    sample_every: float = 3.0,
    settle_timeout: float = 90.0,
    kill_gap: tuple[float, float] = (8.0, 25.0),
    down_time: tuple[float, float] = (2.0, 6.0),
) -> SoakReport:
    """Run the soak for ``duration_s`` seconds of load; the report (nothing is asserted here)."""
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="garage-soak-")
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    logfile = open(root / "soak.log", "a")

    def say(msg: str) -> None:
        logfile.write(msg + "\n")
        logfile.flush()
        if log is not None:
            log(msg)

    settings = _Settings(
        duration_s,
        seed,
        concurrency,
        request_timeout,
        margin,
        token_delay,
        job_every,
        job_lines,
        job_timeout,
        sample_every,
        settle_timeout,
        kill_gap,
        down_time,
    )
    report = SoakReport(duration_s, seed, str(root))
    mesh = SoakMesh(root, request_timeout=request_timeout, token_delay=token_delay, log=say)
    with _sigterm_as_exit():
        try:
            mesh.start()
            report.peers = {label: p.process.peer_id for label, p in mesh.peers.items()}
            consumer_ids = {c.label: c.process.peer_id for c in mesh.consumers}
            run = _Run(mesh, settings, report, say)
            entries_half: dict[str, int] = {}

            async def drive() -> None:
                async def snapshot_half() -> None:
                    await trio.sleep(duration_s / 2)
                    entries_half.update(await trio.to_thread.run_sync(_entry_counts, mesh))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(snapshot_half)
                    await run.main()
                    nursery.cancel_scope.cancel()

            say(
                f"load for {duration_s:.0f} s: {concurrency} workers, deadline {request_timeout:.0f} s "
                f"+ {margin:.0f} s margin"
            )
            trio.run(drive)
            entries_end = _entry_counts(mesh)
            memory_summary(report, mesh, entries_half, entries_end, duration_s / 2, report.load_seconds)
            say(
                f"load over after {report.load_seconds:.0f} s: {report.total} requests, {report.ok} ok, {report.hangs} "
                "hangs; settling receipts"
            )

            # Receipts, with the daemons still running: consumers push again what a killed
            # provider lost (every 10 s, for receipts older than 5 s), so this is a bounded wait.
            def in_provider_logs() -> bool:
                missing, batch_missing = _missing(report, mesh, consumer_ids)
                return not missing and not batch_missing

            report.receipts_settle_s = _settle(in_provider_logs, settle_timeout)
            if report.receipts_settle_s is None:
                missing, batch_missing = _missing(report, mesh, consumer_ids)
                say(
                    f"receipts did not reach the providers' logs within {settle_timeout:.0f} s: {len(missing)} + "
                    f"{len(batch_missing)} (batch) missing"
                )

            # The consumers' side: each holds its receipts too (ledger sync) and drops them from
            # its pending list (checked on its push round).
            def consumers_settled() -> bool:
                return _consumers_missing(report, mesh, consumer_ids) == 0 and all(
                    pending_count(c.process.home) == 0 for c in mesh.consumers
                )

            report.consumers_settle_s = _settle(consumers_settled, settle_timeout)
            report.pending_at_consumers = {c.label: pending_count(c.process.home) for c in mesh.consumers}
            report.receipts_missing_at_consumers = _consumers_missing(report, mesh, consumer_ids)
            say(
                f"receipts in the providers' logs after {_fmt_s(report.receipts_settle_s)}, "
                f"at the consumers after {_fmt_s(report.consumers_settle_s)} (pending {report.pending_at_consumers})"
            )

            for peer in mesh.peers.values():  # the bans of the settle phase, before the peers stop
                try:
                    run.bans.note(peer, httpx.get(metrics_url(peer.process), timeout=5).text, report.load_seconds)
                except httpx.HTTPError:
                    pass
            codes = mesh.stop_all()
            say("stopped: " + ", ".join(f"{k} exit {v}" for k, v in codes.items()))
            for label, code in codes.items():
                if code != 0:
                    report.errors.append(f"{label} exited {code} on SIGTERM at the end")

            # The final count, from the CLI's export of each provider's ledger.
            served: dict[str, set[tuple[str, str]]] = {}
            for p in mesh.providers:
                export = garage_cli("ledger", "export", "--home", str(p.process.home), "--format", "jsonl")
                if export.returncode != 0:
                    report.errors.append(f"ledger export of {p.label} failed: {export.stderr[-300:]}")
                rows = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
                served[p.process.peer_id] = {
                    (row["consumer"], row["request_id"]) for row in rows if row["author"] == p.process.peer_id
                }
            kills = report.chaos
            for r in report.requests:
                if r.outcome != "ok":
                    continue
                report.receipts_checked += 1
                consumer = consumer_ids[r.consumer]
                ids = _attempt_ids(r.request_id or "")
                if any((consumer, rid) in rows for rows in served.values() for rid in ids):
                    continue  # at the provider that answered, or at those that continued it
                label = next((p.label for p in mesh.providers if p.process.peer_id == r.provider), r.provider)
                end = r.start + r.latency
                near = [f"{c.signal} at {c.at:.1f}s" for c in kills if c.peer == label and end - 2 <= c.at <= end + 15]
                report.receipts_lost.append(
                    {
                        "request_id": r.request_id,
                        "kind": r.kind,
                        "provider": label,
                        "consumer": r.consumer,
                        "ended_at": round(end, 2),
                        "kill_nearby": near,
                    }
                )
            for job in report.jobs:
                submitter = consumer_ids[job.consumer]
                for rid in job.request_ids:
                    report.batch_receipts_checked += 1
                    if not any((submitter, rid) in rows for rows in served.values()):
                        report.batch_receipts_lost.append(rid)

            for peer in mesh.consumers:
                try:
                    text = peer.process.log_path.read_text(errors="replace")
                except OSError:
                    continue
                report.receipts_pushed_again += sum(int(m.group(1)) for m in PUSHED.finditer(text))

            for label, peer in mesh.peers.items():
                verify = garage_cli("ledger", "verify", "--home", str(peer.process.home))
                report.verify[label] = {
                    "ok": verify.returncode == 0 and verify.stdout.strip().endswith("ok"),
                    "output": (verify.stdout + verify.stderr).strip()[-500:],
                }
            say(
                f"receipts: {report.receipts_checked} checked, {len(report.receipts_lost)} lost; verify: "
                + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in report.verify.items())
            )
        except BaseException as exc:
            report.errors.append(f"the soak stopped early: {exc!r}")
            raise
        finally:
            report.leaked = mesh.close()
            try:
                (root / "report.json").write_text(json.dumps(report.as_dict(), indent=1, default=str))
            except OSError:
                pass
            logfile.close()
    return report
