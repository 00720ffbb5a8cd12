"""``garage litellm-config``: a LiteLLM proxy config whose models are served by the mesh.

The original design put LiteLLM in front of the mesh; the endpoint speaks
OpenAI itself, so LiteLLM is optional: teams that already run a LiteLLM proxy
(keys, budgets, logging, fallbacks to other providers) add the mesh as one
more OpenAI-compatible deployment. Each model the peer knows becomes a
``model_list`` entry ``openai/<model>`` with ``api_base`` at the endpoint; a
wildcard entry passes any other model name through, so models that join the
mesh later need no new config. The mesh already retries another provider
before the first byte, so LiteLLM's own retries are off.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path

import httpx
import typer

from .client import ApiOption, daemon_url
from .common import HomeOption, fail

NAME = "^[A-Za-z_][A-Za-z0-9_]*$"


def _q(value: str) -> str:
    """A YAML scalar: a JSON string is valid YAML, whatever the model name holds."""
    return json.dumps(value)


def _models(base: str, key: str | None) -> list[str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{base}/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        fail(
            f"cannot reach the peer at {base}: {exc}; "
            "start `garage-peer`, pass --api URL, or name the models with --model"
        )
    if response.status_code == 401:
        fail(
            "the endpoint asks for an API key: create one with `garage keys create`, put it in an environment variable "
            "and pass --key-env VARIABLE"
        )
    if response.status_code != 200:
        fail(f"the peer answered {response.status_code} to /v1/models: {response.text[:200]}")
    try:
        return sorted(m["id"] for m in response.json()["data"])
    except (ValueError, KeyError, TypeError):
        fail(f"the peer's /v1/models is not an OpenAI model list: {response.text[:200]}")


def render(api_base: str, models: list[str], *, api_key: str, wildcard: bool, timeout: float, source: str) -> str:
    """The config's YAML text."""
    lines = [
        "# LiteLLM proxy config: models served by the Garage P2P mesh through one peer's endpoint.",
        f"# Written by `garage litellm-config` from {source} on {datetime.date.today().isoformat()}.",
        "# Run it with: litellm --config THIS_FILE --port 4000",
        "model_list:",
    ]
    entries = [(m, f"openai/{m}") for m in models] + ([("*", "openai/*")] if wildcard else [])
    for name, target in entries:
        if name == "*":
            lines.append("  # Any other model name goes to the mesh too (models that join it later).")
        lines += [
            f"  - model_name: {_q(name)}",
            "    litellm_params:",
            f"      model: {_q(target)}",
            f"      api_base: {_q(api_base)}",
            f"      api_key: {_q(api_key)}",
            f"      timeout: {timeout:g}",
            f"      stream_timeout: {timeout:g}",
        ]
    lines += [
        "litellm_settings:",
        f"  request_timeout: {timeout:g}",
        "  num_retries: 0  # the mesh tries another provider itself before the first byte",
        "",
    ]
    return "\n".join(lines)


def litellm_config(
    out: Path | None = typer.Option(None, "--out", help="Write the config here (default: print it)."),
    api: str | None = ApiOption,
    home: Path | None = HomeOption,
    model: list[str] = typer.Option(
        [], "--model", help="Only these models (repeatable); without it, the models the peer knows."
    ),
    key_env: str | None = typer.Option(
        None,
        "--key-env",
        help=(
            "Environment variable holding a garage API key (gk-…) for endpoints that ask for one; "
            "LiteLLM reads it at start."
        ),
    ),
    wildcard: bool = typer.Option(
        True, "--wildcard/--no-wildcard", help="Also pass any other model name through to the mesh."
    ),
    timeout: float = typer.Option(
        600.0, "--timeout", min=1.0, help="Seconds LiteLLM waits for an answer (the endpoint's own default)."
    ),
) -> None:
    """Write a LiteLLM proxy config whose models point at this peer's endpoint."""
    if key_env is not None and not re.fullmatch(NAME, key_env):
        fail(f"--key-env {key_env!r} is not an environment variable name")
    base = daemon_url(api, home)
    key = os.environ.get(key_env) if key_env else None
    if key_env and not key:
        fail(f"${key_env} is not set: export it with a key from `garage keys create`")
    models = sorted(set(model)) if model else _models(base, key)
    if not models and not wildcard:
        fail(
            "the peer knows no model yet and --no-wildcard leaves nothing to route: wait for providers, or pass "
            "--model NAME"
        )
    text = render(
        base + "/v1",
        models,
        api_key=f"os.environ/{key_env}" if key_env else "unused",
        wildcard=wildcard,
        timeout=timeout,
        source=base,
    )
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")
    typer.echo(
        f"wrote {out}: {len(models)} models{' and a wildcard' if wildcard else ''}; "
        f"run `litellm --config {out} --port 4000`",
        err=True,
    )
