"""The run's report: ``report.json``, ``report.md`` and its plots.

The same scenario, seed and summary give byte-identical files, so a report can
be committed, diffed and compared across runs: JSON with sorted keys, Markdown
from fixed formats (no locale, no clock), PNGs drawn with matplotlib's own
defaults and bundled DejaVu font and saved without the ``Software`` text chunk
(the only varying metadata matplotlib writes into a PNG; it adds no timestamp).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from .scenario import Scenario

DASH = "–"
"""Shown for a figure that has no value (no data, no heal, never known …)."""
FIGSIZE = (8.0, 4.5)
DPI = 100
MAX_EVENT_LABELS = 20
"""Events labelled on the online plot; more would overprint one another."""

# Start every plot from matplotlib's defaults, whatever the user's matplotlibrc
# or an earlier caller changed, so the pixels depend on the inputs alone.
# Mathtext is off: a '$' in a scenario name or an event must print as itself.
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.formatter.use_locale": False,
    "text.parse_math": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}

# (area, label, path into the summary, kind). The kind picks the format and how
# the twin table compares simulated and emulated: a ratio for counts and
# seconds, a difference for shares and indexes.
HEADLINE: tuple[tuple[str, str, str, str], ...] = (
    ("Requests", "Total", "requests.total", "count"),
    ("Requests", "Answered (200)", "requests.ok", "count"),
    ("Requests", "Lost (no answer by the end)", "requests.lost", "count"),
    ("Requests", "Success rate (of ended)", "requests.success_rate", "share"),
    ("Requests", "Cut mid-stream (an error after the first bytes)", "requests.cut_mid_stream", "count"),
    ("Requests", "Failed over mid-answer", "requests.failed_over", "count"),
    ("Requests", "Latency p50", "requests.latency_s.p50", "seconds"),
    ("Requests", "Latency p90", "requests.latency_s.p90", "seconds"),
    ("Requests", "Latency p99", "requests.latency_s.p99", "seconds"),
    ("Requests", "Time to first token p50", "requests.ttft_s.p50", "seconds"),
    ("Requests", "Time to first token p99", "requests.ttft_s.p99", "seconds"),
    ("Requests", "Answered direct", "requests.direct", "count"),
    ("Requests", "Answered relayed", "requests.relayed", "count"),
    ("Requests", "Relayed share", "requests.relayed_share", "share"),
    ("Requests", "Tokens generated", "requests.tokens", "count"),
    ("Fairness", "Jain's index of provider utilisation", "fairness.jain_utilisation", "index"),
    ("Fairness", "Providers counted", "fairness.providers", "count"),
    ("Fairness", "Utilisation p50", "fairness.utilisation_p50", "share"),
    ("Discovery", "Joins", "discovery.joins", "count"),
    ("Discovery", "New peer known by 99 % of peers, p50", "discovery.known_99_s.p50", "seconds"),
    ("Discovery", "New peer known by 99 % of peers, p99", "discovery.known_99_s.p99", "seconds"),
    ("Discovery", "Joins never known by 99 %", "discovery.never_known", "count"),
    ("Ledger", "Lag p50", "ledger.lag_s.p50", "seconds"),
    ("Ledger", "Lag p99", "ledger.lag_s.p99", "seconds"),
    ("Ledger", "Converged after heal", "ledger.converged_after_heal_s", "seconds"),
    ("Ledger", "Entries", "ledger.entries", "count"),
    ("Ledger", "Replicas", "ledger.replicas", "count"),
)

# (file stem, section heading, what the plot shows)
PLOTS: tuple[tuple[str, str, str], ...] = (
    (
        "known_by",
        "Discovery: time until a new peer is known",
        "Share of the joins known by 99 % of the peers online, against the seconds since the join; joins never known "
        "keep the curve below 1.",
    ),
    (
        "requests",
        "Requests over time",
        "Success rate and relayed share of the answers per time bucket (left axis), requests per bucket as grey bars "
        "(right axis).",
    ),
    ("latency", "Latency over time", "Latency p50 and p99 of the answered requests, per time bucket."),
    (
        "fairness",
        "Fairness of the providers' work",
        "Utilisation of each provider online for at least a tenth of the run (tokens served ÷ what it could serve "
        "while online), busiest first.",
    ),
    ("online", "Peers online", "Providers and consumers online, with the scenario's events as dotted lines."),
)


def write_report(
    out_dir: Path, *, scenario: Scenario, seed: int, summary: dict, twin: dict | None = None
) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out_dir``; return their paths.

    ``twin``, when given, is ``{"simulated": summary, "emulated": summary,
    "bounds": {name: {"limit", "simulated", "emulated", "ok"}}}``: the figures
    of the emulation with real peers beside those of its simulated twin."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "scenario": scenario.sim.name,
        "seed": seed,
        "config": scenario.model_dump(mode="json"),
        "summary": summary,
        "emulation": twin,
    }
    paths = [
        _write_text(out_dir / "report.json", json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"),
        _write_text(out_dir / "report.md", render_markdown(scenario=scenario, seed=seed, summary=summary, twin=twin)),
    ]
    paths += write_plots(out_dir, scenario=scenario, summary=summary, twin=twin)
    return paths


def _write_text(path: Path, text: str) -> Path:
    """Write UTF-8 with '\\n' line ends whatever the platform, so the bytes never vary."""
    path.write_bytes(text.encode("utf-8"))
    return path


# --- numbers as text ---


def _get(data: Any, path: str) -> Any:
    """The value at a dotted path into nested dicts; None where any part is missing."""
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _is_number(value: Any) -> bool:
    """A real, finite int or float (bools are flags, not figures)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _sig(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, never in exponent notation."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def fmt_seconds(value: Any) -> str:
    """Seconds with 3 significant digits; below a second in milliseconds."""
    if not _is_number(value):
        return DASH if value is None else _cell(str(value))
    if value != 0 and abs(value) < 1:
        return f"{_sig(value * 1000)} ms"
    return f"{_sig(value)} s"


def fmt_share(value: Any) -> str:
    """A 0–1 share as a percentage with one decimal."""
    if not _is_number(value):
        return DASH if value is None else _cell(str(value))
    return f"{value * 100:.1f} %"


def fmt_count(value: Any) -> str:
    """A whole number with thousands separators (Python's ',' format: no locale)."""
    if not _is_number(value):
        return DASH if value is None else _cell(str(value))
    return f"{round(value):,}"


def fmt_index(value: Any) -> str:
    """An index in [0, 1] (Jain's) with three decimals."""
    if not _is_number(value):
        return DASH if value is None else _cell(str(value))
    return f"{value:.3f}"


_FORMATS = {"seconds": fmt_seconds, "share": fmt_share, "count": fmt_count, "index": fmt_index}


def fmt_plain(value: Any) -> str:
    """Any JSON value for a table cell, where its unit is unknown (bounds)."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        # 4 significant digits, without the zeros that would claim more (0.4, not 0.4000)
        text = _sig(value, 4)
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, dict | list):
        return _cell(json.dumps(value, sort_keys=True, ensure_ascii=False))
    return _cell(str(value))


def compare(simulated: Any, emulated: Any, kind: str) -> str:
    """Emulated against simulated: a ratio for counts and seconds, a difference for shares and indexes."""
    if not (_is_number(simulated) and _is_number(emulated)):
        return DASH
    if kind == "share":
        return f"{(emulated - simulated) * 100:+.1f} pp"
    if kind == "index":
        return f"{emulated - simulated:+.3f}"
    if simulated == 0:
        return "×1" if emulated == 0 else DASH
    return f"×{_sig(emulated / simulated)}"


def _clock(seconds: float) -> str:
    """``h:mm:ss`` of a time from the start (whole seconds; the exact value sits beside it)."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _trim(value: float) -> str:
    """A time in seconds with at most 3 decimals and no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no line breaks, '|' escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` has one 'l' or 'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# --- report.md ---


def render_markdown(*, scenario: Scenario, seed: int, summary: dict, twin: dict | None = None) -> str:
    """The whole report.md as text."""
    sim = scenario.sim
    lines = [
        f"# Simulation report: {' '.join(sim.name.split())} (seed {seed})",
        "",
        (
            f"{scenario.peers.count:,} peers, {_trim(sim.duration_s)} s of requests "
            f"(then up to {_trim(sim.drain_s)} s of drain), time buckets of {_trim(sim.sample_s)} s. "
            f"The full configuration and every figure are in `report.json`. {DASH} means no data."
        ),
        "",
    ]
    lines += _headline_section(summary)
    lines += _cost_section(summary)
    lines += _errors_section(summary)
    lines += _failures_section(summary)
    lines += _jobs_section(summary)
    lines += _events_section(summary)
    lines += _counters_section(summary)
    lines += _plots_section(summary)
    if twin is not None:
        lines += _twin_section(twin)
    return "\n".join(lines).rstrip("\n") + "\n"


def _headline_section(summary: dict) -> list[str]:
    """The headline figures, grouped by area."""
    rows, last_area = [], None
    for area, label, path, kind in HEADLINE:
        rows.append(["**" + area + "**" if area != last_area else "", label, _FORMATS[kind](_get(summary, path))])
        last_area = area
    return ["## Headline figures", "", *_table(["Area", "Figure", "Value"], rows, "llr"), ""]


def fmt_rate(value: Any) -> str:
    """Bytes per second, in B/s, kB/s or MB/s (decimal units) with 3 significant digits."""
    if not _is_number(value):
        return DASH if value is None else _cell(str(value))
    for unit, size in (("MB/s", 1e6), ("kB/s", 1e3)):
        if abs(value) >= size:
            return f"{_sig(value / size)} {unit}"
    return f"{_sig(value)} B/s"


def fmt_cpu(value: Any) -> str:
    """CPU as a percentage of one core, 3 significant digits."""
    if not _is_number(value):
        return DASH if value is None else _cell(str(value))
    return f"{_sig(value)} %"


def _cost_section(summary: dict) -> list[str]:
    """What each peer paid: CPU (% of one core) and bytes per online second, idle and in all, then by kind."""
    cost = summary.get("cost")
    lines = ["## Cost per peer", ""]
    if not cost:
        return lines + ["Not modelled for this run.", ""]
    lines += [
        f"Gossip policy `{_cell(str(cost.get('gossip')))}`; {fmt_count(cost.get('peers_counted'))} peers online "
        "for a tenth of the run or more. CPU in % of one core and bytes per second online, from per-message "
        "costs measured on real hosts (`garage_p2p/sim/costs.json`). Idle: ads, table syncs, ledger heads, "
        "pings; total adds requests and ledger pulls.",
        "",
    ]
    rows = []
    for name, label in (("idle", "Idle"), ("total", "Total")):
        block = cost.get(name) or {}
        for metric, what, fmt in (
            ("cpu_pct", "CPU", fmt_cpu),
            ("bytes_in_per_s", "Bytes in", fmt_rate),
            ("bytes_out_per_s", "Bytes out", fmt_rate),
        ):
            figures = block.get(metric) or {}
            rows.append([label, what, fmt(figures.get("mean")), fmt(figures.get("p99"))])
    lines += _table(["Load", "Figure", "Mean", "p99"], rows, "llrr") + [""]
    kinds = cost.get("by_kind") or {}
    rows = [
        [
            _cell(kind),
            fmt_cpu(k.get("cpu_pct_mean")),
            fmt_rate(k.get("bytes_per_s_mean")),
            fmt_plain(k.get("messages_in_per_s_mean")),
        ]
        for kind, k in kinds.items()
    ]
    return lines + _table(["Kind", "CPU, mean", "Bytes in+out, mean", "Messages in /s, mean"], rows) + [""]


def _errors_section(summary: dict) -> list[str]:
    """Errors the clients got, by HTTP status and error code."""
    errors = _get(summary, "requests.errors") or {}
    lines = ["## Errors", ""]
    if not errors:
        return lines + ["No request ended in an error.", ""]
    total, lost = _get(summary, "requests.total"), _get(summary, "requests.lost")
    ended = total - lost if _is_number(total) and _is_number(lost) else None
    rows = []
    for key, count in errors.items():
        # summarize keys them "<status> <code>"; either may be None
        status, _, code = str(key).partition(" ")
        share = fmt_share(count / ended) if ended and _is_number(count) else DASH
        rows.append(
            [
                DASH if status == "None" else _cell(status),
                DASH if code in ("", "None") else f"`{_cell(code)}`",
                fmt_count(count),
                share,
            ]
        )
    return lines + _table(["Status", "Code", "Requests", "Share of ended"], rows, "llrr") + [""]


FAILURES_SHOWN = 20
"""Failed requests listed one by one in report.md (report.json lists more)."""


def _failures_section(summary: dict) -> list[str]:
    """Why requests failed: by error and whether any provider was reachable, then the first ones
    with what each attempt met (simulator only: real peers do not say)."""
    kinds = _get(summary, "requests.failure_kinds") or {}
    failures = _get(summary, "requests.failures") or []
    if not kinds or all("reachability unknown" in str(k) for k in kinds):
        return []
    lines = [
        "## Failed requests",
        "",
        "Each failure by its error and whether the consumer could have been served at all when it failed "
        "(providers of the model online, serving, with a path to them; routable: also in its table and not "
        "banned by its router).",
        "",
    ]
    rows = [[_cell(str(kind)), fmt_count(count)] for kind, count in kinds.items()]
    lines += _table(["Error, reachability", "Requests"], rows, "lr") + [""]
    rows = [
        [
            _trim(f["at"]) if _is_number(f.get("at")) else DASH,
            fmt_seconds(f.get("took")),
            _cell(str(f.get("error"))) + (" (cut)" if f.get("cut") else ""),
            fmt_plain(f.get("reachable")),
            fmt_plain(f.get("routable")),
            _cell("; ".join(str(t) for t in f.get("tried") or [])) or DASH,
        ]
        for f in failures[:FAILURES_SHOWN]
    ]
    shown = f"The first {len(rows)} of {sum(kinds.values())}" if len(rows) < sum(kinds.values()) else "Every one"
    lines += [f"{shown}, with what each attempt met (the provider, its state, how the attempt ended):", ""]
    return lines + _table(["At (s)", "Took", "Error", "Reachable", "Routable", "Attempts"], rows, "rrlrrl") + [""]


def _jobs_section(summary: dict) -> list[str]:
    """Batch jobs: lines done, how long, leases, tail-stealing duplicates and leases claimed early."""
    jobs = summary.get("jobs") or []
    if not jobs:
        return []
    rows = [
        [
            f"`{_cell(str(j['id']))}`",
            _cell(str(j["model"])),
            fmt_count(j["lines"]),
            fmt_count(j["lines_done"]),
            fmt_seconds(j["duration_s"]),
            fmt_count(j["leases"]),
            fmt_count(j["duplicates"]),
            fmt_count(j.get("early_claims", 0)),
        ]
        for j in jobs
    ]
    return [
        "## Batch jobs",
        "",
        *_table(["Job", "Model", "Lines", "Done", "Took", "Leases", "Duplicates", "Claimed early"], rows, "llrrrrrr"),
        "",
    ]


def _events_section(summary: dict) -> list[str]:
    """The scenario's events as they happened."""
    events = summary.get("events") or []
    lines = ["## Events", ""]
    if not events:
        return lines + ["No scenario events.", ""]
    rows = []
    for event in events:
        at, what = (list(event) + [None, None])[:2]
        rows.append([_clock(at) if _is_number(at) else DASH, _trim(at) if _is_number(at) else DASH, _cell(str(what))])
    return lines + _table(["Clock", "At (s)", "Event"], rows, "rrl") + [""]


def _counters_section(summary: dict) -> list[str]:
    """The model's counters (dials, punches, lookups …)."""
    counters = summary.get("counters") or {}
    lines = ["## Counters", ""]
    if not counters:
        return lines + ["No counters.", ""]
    rows = [[f"`{_cell(name)}`", fmt_plain(value)] for name, value in counters.items()]
    return lines + _table(["Counter", "Value"], rows) + [""]


def _online_range(summary: dict) -> str:
    """One sentence: how many providers and consumers were online, at least and at most."""
    samples = [s for s in summary.get("online") or [] if len(s) >= 3]
    if not samples:
        return "No online samples."
    prov = [s[1] for s in samples if _is_number(s[1])]
    cons = [s[2] for s in samples if _is_number(s[2])]

    def span(values: list) -> str:
        return f"{fmt_count(min(values))}–{fmt_count(max(values))}" if values else DASH

    return f"Online over {len(samples):,} samples: providers {span(prov)}, consumers {span(cons)}."


def _plots_section(summary: dict) -> list[str]:
    """One section per plot, each embedding its PNG."""
    lines = ["## Plots", ""]
    for stem, heading, caption in PLOTS:
        lines += [f"### {heading}", "", caption]
        if stem == "online":
            lines += ["", _online_range(summary)]
        lines += ["", f"![{heading}]({stem}.png)", ""]
    return lines


def _twin_section(twin: dict) -> list[str]:
    """The emulation with real peers beside its simulated twin, and the bounds it was held to."""
    sim, emu = twin.get("simulated") or {}, twin.get("emulated") or {}
    rows = []
    for area, label, path, kind in HEADLINE:
        a, b = _get(sim, path), _get(emu, path)
        rows.append([f"{area}: {label}", _FORMATS[kind](a), _FORMATS[kind](b), compare(a, b, kind)])
    lines = [
        "## Simulation vs emulation",
        "",
        (
            "The same scenario run by real peers on this host (emulated) and by the simulator on its twin "
            "(same peers, loopback network, stand-in backend). The last column is emulated ÷ simulated, "
            "or emulated − simulated for shares (percentage points) and indexes."
        ),
        "",
        *_table(["Figure", "Simulated", "Emulated", "Emulated vs simulated"], rows, "lrrr"),
        "",
    ]
    lines += _bounds_lines(twin.get("bounds") or {})
    lines += ["### Side by side", "", "![Simulation vs emulation](twin.png)", ""]
    return lines


def _bounds_lines(bounds: dict) -> list[str]:
    """Each bound the emulation must keep to the simulation: its limit, both values, pass or fail."""
    lines = ["### Bounds", ""]
    if not bounds:
        return lines + ["No bounds were checked.", ""]
    rows, failed = [], 0
    for name, bound in bounds.items():
        bound = bound if isinstance(bound, dict) else {}
        ok = bound.get("ok")
        failed += ok is False
        result = "pass" if ok is True else "**FAIL**" if ok is False else DASH
        rows.append(
            [
                _cell(name),
                fmt_plain(bound.get("limit")),
                fmt_plain(bound.get("simulated")),
                fmt_plain(bound.get("emulated")),
                result,
            ]
        )
    verdict = f"All {len(bounds)} bounds hold." if not failed else f"{failed} of {len(bounds)} bounds fail."
    return lines + [verdict, "", *_table(["Bound", "Limit", "Simulated", "Emulated", "Result"], rows, "llrrl"), ""]


# --- plots ---


@contextmanager
def _plot_style() -> Iterator[None]:
    """matplotlib's defaults plus ours, for the plots only; the caller's rcParams come back after.

    (rcParams are process-wide: don't draw reports from two threads at once.)"""
    with matplotlib.style.context(["default", _STYLE]):
        yield


def _figure(**subplots: Any) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas, outside pyplot: no backend switch, no figure registry
    to close it in (it is freed with its last reference), no GUI."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def _save(fig: Figure, path: Path) -> Path:
    """Save without the 'Software' chunk (it names matplotlib's version); the PNG then holds no metadata."""
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    fig.clear()
    return path


def _no_data(ax: Any, text: str = "no data") -> None:
    """Say so in the middle of an empty plot."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5", fontsize=14)


def _floats(values: Sequence[Any], n: int) -> list[float]:
    """``n`` floats from ``values``: None, missing or non-numbers become NaN (a gap in a line)."""
    values = list(values or [])[:n]
    values += [None] * (n - len(values))
    return [float(v) if _is_number(v) else math.nan for v in values]


def _marker(points: int) -> str:
    """Dots on a sparse line (a bucket between two gaps shows only as its dot); none on a dense one."""
    return "." if points <= 200 else ""


def _time_unit(span_s: float) -> tuple[float, str]:
    """Divisor and label for a time axis spanning ``span_s`` seconds."""
    if span_s >= 3 * 3600:
        return 3600.0, "hours from start"
    if span_s >= 180:
        return 60.0, "minutes from start"
    return 1.0, "seconds from start"


def write_plots(out_dir: Path, *, scenario: Scenario, summary: dict, twin: dict | None = None) -> list[Path]:
    """Draw every plot into ``out_dir``; return the PNG paths in report order."""
    series = summary.get("series") or {}
    t = [v for v in series.get("t") or [] if _is_number(v)]
    # Bucket width from the series itself (it may come from another scenario's run, e.g. a twin).
    width = t[1] - t[0] if len(t) >= 2 and t[1] > t[0] else scenario.sim.sample_s
    ends = [scenario.sim.duration_s, *(v + width for v in t)]
    ends += [s[0] for s in summary.get("online") or [] if s and _is_number(s[0])]
    ends += [e[0] for e in summary.get("events") or [] if e and _is_number(e[0])]
    span = max(ends)
    with _plot_style():
        paths = [
            _plot_known_by(out_dir / "known_by.png", summary),
            _plot_requests(out_dir / "requests.png", series, width, span),
            _plot_latency(out_dir / "latency.png", series, width, span),
            _plot_fairness(out_dir / "fairness.png", summary),
            _plot_online(out_dir / "online.png", summary, span),
        ]
        if twin is not None:
            paths.append(_plot_twin(out_dir / "twin.png", twin))
    return paths


def _plot_known_by(path: Path, summary: dict) -> Path:
    """CDF of the seconds until 99 % of the peers knew a new peer."""
    fig, ax = _figure()
    samples = sorted(v for v in summary.get("known_99_samples") or [] if _is_number(v))
    joins = _get(summary, "discovery.joins")
    joins = max(joins if _is_number(joins) else 0, len(samples))
    ax.set_title(f"New peer known by 99 % of peers ({joins:,} joins, {joins - len(samples):,} never known)")
    ax.set_xlabel("seconds after the join")
    ax.set_ylabel("share of joins")
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if not samples:
        _no_data(ax)
        return _save(fig, path)
    # A step from 0 at the first sample up to known/joins at the last.
    xs = [samples[0], *samples]
    ys = [0.0, *((i + 1) / joins for i in range(len(samples)))]
    ax.step(xs, ys, where="post", color="C0", label="known by 99 %")
    for q, style in (("p50", "--"), ("p99", ":")):
        value = _get(summary, f"discovery.known_99_s.{q}")
        if _is_number(value):
            ax.axvline(value, color="0.3", linestyle=style, linewidth=1, label=f"{q} {fmt_seconds(value)}")
    ax.set_xlim(left=0)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _plot_requests(path: Path, series: dict, width: float, span: float) -> Path:
    """Success rate and relayed share per bucket, with the request count on a second axis."""
    fig, ax = _figure()
    scale, label = _time_unit(span)
    n = len(series.get("t") or [])
    t = [v / scale for v in _floats(series.get("t"), n)]
    counts = [c if not math.isnan(c) else 0.0 for c in _floats(series.get("requests"), n)]
    ax.set_title("Requests per time bucket")
    ax.set_xlabel(label)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0, span / scale)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if not any(counts):
        _no_data(ax)
        return _save(fig, path)
    counts_ax = ax.twinx()
    counts_ax.grid(False)
    # One filled step polygon for all buckets: a bar each costs seconds on a day of minute buckets.
    edges = [*t, t[-1] + width / scale]
    counts_ax.fill_between(edges, [*counts, counts[-1]], step="post", color="0.85", linewidth=0, label="requests")
    counts_ax.set_ylabel("requests per bucket")
    counts_ax.set_ylim(bottom=0)
    counts_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    # The shares are drawn above the bars: raise their axes and make its background see-through.
    ax.set_zorder(counts_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    mid = [v + width / scale / 2 for v in t]
    ax.plot(mid, _floats(series.get("success_rate"), n), marker=_marker(n), color="C2", label="success rate")
    ax.plot(mid, _floats(series.get("relayed_share"), n), marker=_marker(n), color="C1", label="relayed share")
    handles = ax.get_legend_handles_labels()
    bars = counts_ax.get_legend_handles_labels()
    # Below the axes, where no data can be hidden under it.
    fig.legend(handles[0] + bars[0], handles[1] + bars[1], loc="outside lower center", ncols=3)
    return _save(fig, path)


def _plot_latency(path: Path, series: dict, width: float, span: float) -> Path:
    """Latency p50 and p99 of the answered requests per bucket."""
    fig, ax = _figure()
    scale, label = _time_unit(span)
    n = len(series.get("t") or [])
    mid = [v / scale + width / scale / 2 for v in _floats(series.get("t"), n)]
    p50, p99 = _floats(series.get("latency_p50"), n), _floats(series.get("latency_p99"), n)
    ax.set_title("Latency of answered requests per time bucket")
    ax.set_xlabel(label)
    ax.set_ylabel("seconds")
    ax.set_xlim(0, span / scale)
    if all(math.isnan(v) for v in p50 + p99):
        _no_data(ax)
        return _save(fig, path)
    ax.plot(mid, p50, marker=_marker(n), color="C0", label="p50")
    ax.plot(mid, p99, marker=_marker(n), color="C3", label="p99")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    return _save(fig, path)


def _plot_fairness(path: Path, summary: dict) -> Path:
    """Each provider's utilisation, busiest first, with Jain's index in the title."""
    fig, ax = _figure()
    values = sorted((v for v in summary.get("utilisation_samples") or [] if _is_number(v)), reverse=True)
    ax.set_title(f"Provider utilisation — Jain's index {fmt_index(_get(summary, 'fairness.jain_utilisation'))}")
    ax.set_xlabel("providers, busiest first")
    ax.set_ylabel("utilisation")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if not values:
        _no_data(ax)
        return _save(fig, path)
    # One filled step polygon whatever the number of providers: bars would be a rectangle each,
    # and stairs() walks every segment to update the axes' limits (slow for thousands).
    ax.fill_between(range(len(values) + 1), [*values, values[-1]], step="post", color="C0", alpha=0.8, linewidth=0)
    mean = sum(values) / len(values)
    ax.axhline(mean, color="0.2", linestyle="--", linewidth=1, label=f"mean {fmt_share(mean)}")
    ax.set_xlim(0, len(values))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    return _save(fig, path)


def _plot_online(path: Path, summary: dict, span: float) -> Path:
    """Providers and consumers online over time, scenario events as dotted lines."""
    fig, ax = _figure()
    scale, label = _time_unit(span)
    samples = [s for s in summary.get("online") or [] if len(s) >= 3 and _is_number(s[0])]
    events = [e for e in summary.get("events") or [] if len(e) >= 2 and _is_number(e[0])]
    ax.set_title("Peers online")
    ax.set_xlabel(label)
    ax.set_ylabel("peers")
    ax.set_xlim(0, span / scale)
    if samples:
        t = [s[0] / scale for s in samples]
        ax.step(t, _floats([s[1] for s in samples], len(samples)), where="post", color="C0", label="providers")
        ax.step(t, _floats([s[2] for s in samples], len(samples)), where="post", color="C1", label="consumers")
        ax.set_ylim(bottom=0)
        fig.legend(loc="outside lower center", ncols=2)
    else:
        _no_data(ax, "no online samples")
    for i, (at, what, *_) in enumerate(events):
        ax.axvline(at / scale, color="0.4", linestyle=":", linewidth=1)
        if i < MAX_EVENT_LABELS:
            text = str(what) if len(str(what)) <= 40 else str(what)[:39] + "…"
            ax.text(
                at / scale,
                0.98,
                text,
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="right",
                va="top",
                fontsize=7,
                color="0.3",
            )
    if len(events) > MAX_EVENT_LABELS:
        ax.text(
            0.99,
            0.02,
            f"+{len(events) - MAX_EVENT_LABELS} more events",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.3",
        )
    return _save(fig, path)


# (label, path into a summary) of the seconds compared in twin.png
_TWIN_SECONDS = (
    ("latency p50", "requests.latency_s.p50"),
    ("latency p99", "requests.latency_s.p99"),
    ("TTFT p50", "requests.ttft_s.p50"),
    ("known by 99 %\np50", "discovery.known_99_s.p50"),
    ("known by 99 %\np99", "discovery.known_99_s.p99"),
)


def _plot_twin(path: Path, twin: dict) -> Path:
    """Simulated beside emulated: the timing figures (seconds) and the success rate."""
    fig, (ax, rate_ax) = _figure(ncols=2, width_ratios=(4, 1))
    fig.suptitle("Simulated twin vs emulation with real peers")
    sides = (("simulated", "C0"), ("emulated", "C1"))
    bar = 0.38
    for k, (side, color) in enumerate(sides):
        summary = twin.get(side) or {}
        for i, (_, key) in enumerate(_TWIN_SECONDS):
            value = _get(summary, key)
            x = i + (k - 0.5) * bar
            if _is_number(value):
                # A side's first number names it in the legend (None or missing ones are skipped)
                named = any(_is_number(_get(summary, earlier)) for _, earlier in _TWIN_SECONDS[:i])
                ax.bar(x, value, width=bar, color=color, label=None if named else side)
                ax.text(x, value, fmt_seconds(value), ha="center", va="bottom", fontsize=7)
            else:
                ax.text(x, 0, DASH, ha="center", va="bottom", fontsize=9, color="0.4")
        rate = _get(summary, "requests.success_rate")
        if _is_number(rate):
            rate_ax.bar(k, rate, width=0.7, color=color)
            rate_ax.text(k, rate, fmt_share(rate), ha="center", va="bottom", fontsize=7)
        else:
            rate_ax.text(k, 0, DASH, ha="center", va="bottom", fontsize=9, color="0.4")
    ax.set_xticks(range(len(_TWIN_SECONDS)), [label for label, _ in _TWIN_SECONDS], fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_xlim(-0.6, len(_TWIN_SECONDS) - 0.4)
    if ax.patches:
        ax.legend(loc="upper left")
    else:
        _no_data(ax)
    rate_ax.set_title("success rate", fontsize=9)
    rate_ax.set_xticks([0, 1], [side for side, _ in sides], fontsize=8)
    rate_ax.set_xlim(-0.6, 1.6)
    rate_ax.set_ylim(0, 1.1)
    rate_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    return _save(fig, path)
