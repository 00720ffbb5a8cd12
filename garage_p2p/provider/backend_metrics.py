"""Live load of a backend, read from its Prometheus ``/metrics`` page.

vLLM 0.32.0 (CPU) exposes, per engine and served model, gauges such as::

    vllm:num_requests_running{engine="0",model_name="tiny"} 6.0
    vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
    vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.0705

(older releases called the last one ``vllm:gpu_cache_usage_perc``). The page comes from
a local server we do not control, so the parser is small, bounded and forgiving: a line it
cannot read is skipped, never a crash.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import trio

from ..core.capabilities import Load

log = logging.getLogger(__name__)

MAX_METRICS_BYTES = 4 * 1024 * 1024
"""A vLLM page is ~50 KB; anything past this is not a metrics page we want to parse."""

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
"""The current name first, then the one vLLM used before v1."""
MODEL_LABEL = "model_name"
_LOAD_MAX = 1e6  # Load.running / Load.waiting upper bound


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample line: ``name{labels} value [timestamp]``."""

    name: str
    labels: dict[str, str]
    value: float


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _read_quoted(line: str, i: int) -> tuple[str, int]:
    """The string starting at the quote ``line[i]``, unescaped, and the index after it."""
    out: list[str] = []
    i += 1
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            # Unknown escapes keep their backslash, as Prometheus does.
            nxt = line[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ValueError("unterminated quoted string")


def _is_name_char(c: str, first: bool) -> bool:
    return c.isascii() and (c.isalpha() or c in "_:" or (not first and c.isdigit()))


def _read_name(line: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(line) and _is_name_char(line[i], i == start):
        i += 1
    if i == start:
        raise ValueError(f"expected a name at column {start}")
    return line[start:i], i


def _skip_spaces(line: str, i: int) -> int:
    while i < len(line) and line[i] in " \t":
        i += 1
    return i


def _read_labels(line: str, i: int) -> tuple[str | None, dict[str, str], int]:
    """Labels from the ``{`` at ``line[i]``: (quoted metric name if any, labels, index after ``}``).

    Newer exposition formats may put a quoted metric name inside the braces
    (``{"my.metric", a="b"}``); it is returned as the first element.
    """
    labels: dict[str, str] = {}
    quoted_name: str | None = None
    i += 1
    while True:
        i = _skip_spaces(line, i)
        if i >= len(line):
            raise ValueError("unterminated label set")
        if line[i] == "}":
            return quoted_name, labels, i + 1
        if line[i] == '"':
            key, i = _read_quoted(line, i)
            i = _skip_spaces(line, i)
            if i >= len(line) or line[i] != "=":
                if quoted_name is not None or labels:
                    raise ValueError("a quoted metric name must come first")
                quoted_name = key
                key = None
        else:
            key, i = _read_name(line, i)
            i = _skip_spaces(line, i)
        if key is not None:
            if i >= len(line) or line[i] != "=":
                raise ValueError(f"expected '=' after label {key!r}")
            i = _skip_spaces(line, i + 1)
            if i >= len(line) or line[i] != '"':
                raise ValueError(f"label {key!r} has no quoted value")
            labels[key], i = _read_quoted(line, i)
        i = _skip_spaces(line, i)
        if i < len(line) and line[i] == ",":
            i += 1
        elif i < len(line) and line[i] != "}":
            raise ValueError(f"unexpected {line[i]!r} in label set")


def parse_sample(line: str) -> Sample:
    """One sample line; ValueError if it is not one. Timestamps are read and dropped."""
    i = _skip_spaces(line, 0)
    name: str | None = None
    labels: dict[str, str] = {}
    if i < len(line) and line[i] != "{":
        name, i = _read_name(line, i)
        i = _skip_spaces(line, i)  # Prometheus allows blanks before the label set
    if i < len(line) and line[i] == "{":
        quoted, labels, i = _read_labels(line, i)
        if quoted is not None:
            if name is not None:
                raise ValueError("metric named twice")
            name = quoted
    if not name:
        raise ValueError("sample without a metric name")
    fields = line[i:].split()
    if not 1 <= len(fields) <= 2:
        raise ValueError("expected a value and an optional timestamp")
    value = float(fields[0])  # float() reads NaN, +Inf, -Inf, 1.5e+09 like Prometheus
    if len(fields) == 2:
        float(fields[1])  # the timestamp must be a number, but the load is "now" anyway
    return Sample(name, labels, value)


def iter_samples(text: str) -> Iterator[Sample]:
    """Every readable sample of a Prometheus text page; comments and bad lines are skipped."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # HELP, TYPE, EOF and other comments
        try:
            yield parse_sample(stripped)
        except ValueError:
            continue


def _pick(samples: list[Sample], model: str | None) -> list[float]:
    """Finite values of ``samples`` for ``model`` (see parse_vllm_metrics for the rule)."""
    if model is not None and any(MODEL_LABEL in s.labels for s in samples):
        samples = [s for s in samples if s.labels.get(MODEL_LABEL) == model]
    # NaN says "unknown"; ±Inf is no count either. Neither is a load.
    return [s.value for s in samples if math.isfinite(s.value)]


def parse_vllm_metrics(text: str, model: str | None = None) -> Load:
    """The load a vLLM ``/metrics`` page reports (``in_flight`` is left 0 for the caller).

    With ``model``, only samples whose ``model_name`` label is ``model`` count, unless no
    sample of the metric carries a ``model_name`` label at all (then every sample counts).
    Running and waiting are summed over the samples (several engines add up); the KV
    cache usage is their mean (a fraction per engine, so a sum would not be one).
    ValueError if the text exceeds MAX_METRICS_BYTES or reports no running-requests
    gauge for the model (not a vLLM page, or another model's).
    """
    if len(text) > MAX_METRICS_BYTES or len(text.encode("utf-8", "replace")) > MAX_METRICS_BYTES:
        raise ValueError(f"metrics page larger than {MAX_METRICS_BYTES} bytes")
    wanted = {RUNNING, WAITING, *KV_USAGE}
    by_name: dict[str, list[Sample]] = {}
    for sample in iter_samples(text):
        if sample.name in wanted:
            by_name.setdefault(sample.name, []).append(sample)

    running = _pick(by_name.get(RUNNING, []), model)
    if not running:
        which = f" for model {model!r}" if model is not None else ""
        raise ValueError(f"no {RUNNING} sample{which}")
    waiting = _pick(by_name.get(WAITING, []), model)
    kv: list[float] = []
    for name in KV_USAGE:
        if kv := _pick(by_name.get(name, []), model):
            break

    def count(values: list[float]) -> float:
        return min(max(sum(values), 0.0), _LOAD_MAX)

    return Load(
        running=count(running),
        waiting=count(waiting),
        kv_cache_usage=min(max(sum(kv) / len(kv), 0.0), 1.0) if kv else None,
    )


def metrics_url(base_url: str) -> str:
    """The ``/metrics`` URL of a server whose OpenAI base URL is ``base_url``.

    ``http://h:p/v1`` → ``http://h:p/metrics``; a path prefix before ``/v1`` (a reverse
    proxy) is kept.
    """
    url = httpx.URL(base_url)
    path = url.path.rstrip("/").removesuffix("/v1")
    return str(url.copy_with(path=path + "/metrics", query=None, fragment=None))


async def _read_capped(client: httpx.AsyncClient, url: str, timeout: float) -> str:
    """The body of GET ``url``; ValueError past MAX_METRICS_BYTES (read no further)."""
    async with client.stream("GET", url, timeout=timeout) as response:
        response.raise_for_status()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_METRICS_BYTES:
            raise ValueError(f"metrics page of {declared} bytes exceeds {MAX_METRICS_BYTES}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_METRICS_BYTES:
                raise ValueError(f"metrics page larger than {MAX_METRICS_BYTES} bytes")
    return body.decode("utf-8", "replace")


async def scrape_load(
    client: httpx.AsyncClient, metrics_url: str, model: str | None, timeout: float = 2.0
) -> Load | None:
    """The backend's load from ``metrics_url``, or None (logged at debug) on any failure.

    ``timeout`` bounds the whole scrape, not just each read: a backend dribbling bytes
    must not hold up the ad that waits for it.
    """
    try:
        with trio.fail_after(timeout):
            text = await _read_capped(client, metrics_url, timeout)
        return parse_vllm_metrics(text, model)
    except (httpx.HTTPError, ValueError, trio.TooSlowError) as exc:
        log.debug("no load from %s: %s", metrics_url, exc)
        return None
