"""Shared fixtures: peers in this process, on 127.0.0.1, with real libp2p and HTTP."""

from __future__ import annotations

import inspect
import json
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from garage_p2p.daemon import Peer, open_peer
from tools.attacks import Target
from tools.standin_backend import create_standin_app, serve_standin
from tools.testkit import loopback_settings

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
OPENAPI = Path(__file__).resolve().parent / "data" / "openai" / "openapi.json"
"""The part of OpenAI's OpenAPI document the tests use (tests/data/openai/README.md)."""


@asynccontextmanager
async def running_peer(home: Path, **settings) -> AsyncIterator[Peer]:
    # Loopback only: mDNS would multicast on the machine's real interface (the mDNS test runs in
    # network namespaces of its own).
    async with open_peer(loopback_settings(home, **settings)) as peer:
        yield peer


@asynccontextmanager
async def standin_backend(model: str = "tiny", **delays) -> AsyncIterator[str]:
    """A StandInBackend (not a model) on a free port; yields its base URL."""
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_standin, create_standin_app(model, **delays), "127.0.0.1", 0)
        yield bound[0] + "/v1"
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` (plain or async) until it is true; TooSlowError after ``timeout``."""
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(interval)


async def wait_for_model(peer: Peer, model: str, providers: int = 1, timeout: float = 30.0) -> None:
    async def known() -> bool:
        return len(peer.dispatcher.known_models().get(model, [])) >= providers

    await wait_for(known, timeout)


def first_addr(peer: Peer) -> list[str]:
    return [a for a in peer.mesh.addrs() if "/127.0.0.1/" in a][:1]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def openai_schema():
    """Validators for the official OpenAI schema's components (tests/data/openai)."""
    document = json.loads(OPENAPI.read_text())
    uri = "urn:openai"
    registry = Registry().with_resource(uri, Resource.opaque(document))

    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{uri}#/components/schemas/{name}"}, registry=registry)

    return validator


def as_target(peer: Peer) -> Target:
    """An in-process peer as an attack in tools/attacks sees it."""
    return Target(peer_id=peer.identity.peer_id, addrs=tuple(first_addr(peer)), api_url=peer.api_url)


def in_topic_mesh(publisher: Peer, peer: Peer, topic: str) -> bool:
    """Whether ``peer`` is in ``publisher``'s gossipsub mesh for ``topic``: published gossip goes to the
    topic's mesh, which forms on the heartbeat (pubsub replays nothing to a peer that joins it late)."""
    mesh = getattr(publisher.mesh.pubsub.router, "mesh", {})
    return peer.identity.peer_id in {str(p) for p in mesh.get(topic, ())}


def doctor_status(**fields) -> dict:
    """A healthy peer's ``garage status`` as ``garage doctor`` reads it, with ``fields`` changed."""
    return {
        "reachability": "public",
        "observed_addrs": [],
        "relay_reservations": {},
        "connections": 1,
        "known_peers": 1,
        "dht_table_size": 1,
        "dht_mode": "server",
        "backends": [],
        "hardware": "cpu",
        "peer_id": "12D3KooWx",
        **fields,
    }


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside nested groups (trio nurseries nest them past the printer's depth)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure inside nested nurseries prints only "max_group_depth is 10": name its leaves."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, BaseExceptionGroup):
        leaves = _leaves(call.excinfo.value)
        text = "\n".join("".join(traceback.format_exception(leaf)[-6:]) for leaf in leaves)
        if report.failed and leaves:
            report.longrepr = f"{report.longrepr}\n\nleaf exceptions:\n{text}"
