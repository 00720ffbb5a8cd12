"""The OpenAI (and vLLM) paths the mesh forwards, and the short ids capability ads name them by.

A provider reads which of these paths its backend serves (vLLM publishes them in ``/openapi.json``
and registers only the routes of its model's tasks) and advertises their ids per model; an ad
without the field is from a peer that forwarded only chat and completions. Routing considers only
providers advertising the request's path.

Two kinds of body travel differently (core/messages.py ``RequestHead``):

- chat and completions (``GENERATION_PATHS``): parsed JSON in the HEAD, so that failover
  (core/continuation.py) can ask for token ids and continue an answer elsewhere, and spot-checks
  (core/spot_check.py) can read it;
- every other path: the client's bytes, unparsed, in DATA frames after the HEAD (JSON or
  multipart), byte for byte what the client sent. They are never failed over mid-answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

EndpointPath = Literal[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/rerank",
    "/v1/score",
    "/tokenize",
    "/detokenize",
]
"""Every endpoint path the mesh forwards."""
GenerationPath = Literal["/v1/chat/completions", "/v1/completions"]
"""The paths whose body travels parsed: failover and spot-checks work on them."""

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINT_PATHS: tuple[str, ...] = get_args(EndpointPath)
GENERATION_PATHS: tuple[str, ...] = get_args(GenerationPath)
MULTIPART_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
"""Paths whose body is ``multipart/form-data`` (an audio file and form fields)."""

PATH_IDS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/audio/translations": "translations",
    "/v1/rerank": "rerank",
    "/v1/score": "score",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
}
"""Endpoint path → the id an ad names it by (short: an ad carries them for each of its models)."""
PATHS_OF_ID = {pid: path for path, pid in PATH_IDS.items()}
DEFAULT_PATH_IDS = ("chat", "completions")
"""What an ad without path ids serves: what every peer before them forwarded."""
MAX_PATH_IDS = 32
"""Path ids in one model's offer at most (the known ones, and room for later ones)."""
PATH_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
"""What a path id looks like; ids this peer does not know (from a newer peer) are kept but unused."""

assert set(PATH_IDS) == set(ENDPOINT_PATHS)


def path_id(path: str) -> str | None:
    """The ad id of an endpoint path (None if the mesh does not forward it)."""
    return PATH_IDS.get(path)


def served_path_ids(published: Iterable[str]) -> tuple[str, ...]:
    """The ids of the mesh's paths among the paths a backend publishes (its OpenAPI ``paths``), in
    the mesh's order."""
    present = set(published)
    return tuple(pid for path, pid in PATH_IDS.items() if path in present)
