"""Cache-aware routing: a request that shares a prefix goes where that prefix is cached (sans-IO).

vLLM keeps the KV blocks of the prompts it prefilled and reuses them for any later prompt that
starts with the same tokens (automatic prefix caching, on by default in vLLM 0.32's V1 engine).
Turn 6 of a conversation repeats turns 1–5; a team's requests repeat one long system prompt. Sent
to the provider that served the prefix, such a request skips its prefill; sent elsewhere, it pays
the whole prompt again. ``core.routing`` asks this module which provider a request has an
*affinity* for and honours it within a load bound.

**Keys** (``affinity_keys``, from the client's body, in lookup order, most specific first):

- ``prompt_cache_key`` (OpenAI's explicit routing hint), if set;
- the prompt's *prefixes*: for chat, the messages up to each message boundary (``messages[:k]``),
  longest first; for completions, the prompt cut every BLOCK_CHARS characters (or BLOCK_TOKENS
  token ids). Turn n + 1 of a conversation holds turn n's messages, so its prefix at turn n's
  last boundary is exactly turn n's whole prompt: the longest known prefix names the provider
  that served the previous turn. Boundaries are digested incrementally (BLAKE2b over the model name
  and the canonical JSON of each message), so it costs one pass over the prompt; only the first
  and the MAX_LOOKUP latest boundaries are looked up;
- ``user`` (OpenAI's older routing hint), last.

Each request teaches its first answering provider under ``prompt_cache_key``, ``user``, its first
boundary (a shared system prompt) and its last one (the conversation so far): four keys, not one
per boundary, so the map holds many conversations.

**Learned** (``AffinityBook``): per consumer, key → the provider that served it last, a bounded
LRU (MAX_KEYS) whose entries fade after MAX_AGE (vLLM evicts cold blocks; a stale affinity only
costs one prefill, and the load bound below keeps it from doing harm).

**Unseen keys: consistent hashing with bounded loads** (Mirrokni, Thorup and Zadimoghaddam, SODA
2018), as rendezvous hashing: the providers ranked by BLAKE2b(anchor, peer id), the first within
the bound takes it. Two consumers that never talked send a new system prompt (the anchor is
``prompt_cache_key``, else the first boundary, else ``user``) to the same provider, so its cache
serves both; when it is over the bound the next in hash order takes it, and so on. Agreement
needs the hash's favourites on both shortlists: routing adds the HASH_SHORTLIST favourites among
the model's providers when it has at most HASH_SCAN_MAX of them (hashing each costs ~1 µs);
beyond, consumers agree within their shortlists only, and each still sticks by what it learned.

**The bound** (``within_bound``): an affinity is honoured only if the provider is eligible and on
the shortlist, its load (requests running and queued there, ours included) satisfies
``load + 1 ≤ ⌈(1 + EPSILON) × (total + 1) / n⌉`` over the n eligible providers scored (Mirrokni's
capacity, the request itself counted: a popular prefix fills its provider to 1 + EPSILON times the
mean, then spills to the next) or ``load + 1 ≤ least + SLACK``: in a lightly loaded mesh the mean
is under one request and the capacity alone would honour an affinity only on an idle provider,
though one more stream there makes no hotspot (SGLang's router keeps its cache-aware choice under
an absolute imbalance threshold in the same way); and its decode time as the request's only stream
there by its benchmark (``Candidate.alone``: its speed, not its load, which the bound judges) is at
most MAX_SLOWDOWN times the best benchmark's: a weaker rig loses more in decode than a cache hit
saves. Not the whole estimate: its TTFT term holds the prefill a cache hit saves, and a provider's
delivered TTFT swings with its own cache (a miss prefills the whole prompt), so identical servers
refused each other's conversations by it on the busy two-core test machine (at 1.5 ×: 9 of 12 later
turns kept their provider; at 3 ×, in the benchmark, 69 %). Nor the loaded decode time: one more
stream of ours on a CPU server doubled it, and a conversation left a provider for that. Nor the
speed routing believes (benchmark or prior blended with delivery): a provider used little sits near
the slow prior, and an 8-token answer's tokens come in one burst, so delivery "measured" one server
at 800 tokens/s and its twin at 20. A benchmark is taken the same way on every rig; delivery counts
here only when it proved a benchmark an overclaim; a rig with no benchmark is not held to the rule.

Otherwise the request spills to the next provider in the anchor's hash order that passes, its
decode time judged against the provider it relieves, not the best (Mirrokni's placement: every
consumer spills a hot prefix alike, and the spill's cache then holds it too); if none does, the
usual order (power of two choices) decides. EPSILON = 0.25 rather than Mirrokni's ~0.5: with two
providers the ceiling makes small counts lumpy; 0.25 keeps a hot prefix's provider within 1.45 ×
the mean load once six requests run at once (0.5 allows 1.7 ×).

The load is the provider's count of the mesh requests its backend works on, told on the END of
each of ours (``Load.in_flight``, leaving out the answered request), less those of ours it counted,
plus ours now, plus its backend's queue (``Router.busy``); not its backend's scraped running
figure, which lags by seconds: counting our requests both there and in ours, a burst spilled for
phantoms.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EPSILON = 0.25
"""How far over the mean load a provider may go and still keep its affinities."""
SLACK = 2
"""Requests over the least loaded provider's that a provider may reach and keep its affinities
(with one more request), whatever the mean."""
MAX_SLOWDOWN = 2.0
"""An affinity is not honoured when its provider's decode time is over this many times the best's."""
MAX_KEYS = 16_384
"""Keys a consumer remembers (about 4,000 conversations: four keys each)."""
MAX_AGE = 1800.0
"""Seconds after which a learned affinity is forgotten."""
MAX_LOOKUP = 32
"""Latest prefix boundaries looked up per request (turn n + 1 ends a few messages past turn n)."""
BLOCK_CHARS = 256
"""A completions prompt's boundaries, in characters (about 64 tokens: a few of vLLM's blocks)."""
BLOCK_TOKENS = 64
"""A completions prompt's boundaries when it is token ids."""
HASH_SCAN_MAX = 256
"""Providers of a model up to which every one is hashed to put the anchor's favourites on the
shortlist (cross-consumer agreement); beyond, only the shortlist is hashed."""
HASH_SHORTLIST = 2
"""The anchor's favourites added to the shortlist."""
MAX_EXPLICIT = 512
"""Characters of ``prompt_cache_key`` or ``user`` taken (OpenAI caps them at 64 and 512 bytes)."""
DIGEST_BYTES = 12


@dataclass(frozen=True, slots=True)
class AffinityKey:
    """One key a request may share with earlier ones."""

    digest: str
    """Hex BLAKE2b of the model and what the key covers."""
    label: str
    """What it covers, for ``garage route`` (``prompt_cache_key``, ``messages[:3]``, ``user`` …)."""


@dataclass(frozen=True, slots=True)
class Affinity:
    """A request's affinity keys."""

    keys: tuple[AffinityKey, ...] = ()
    """Looked up in this order (most specific first); the first one learned wins."""
    learn: tuple[str, ...] = ()
    """Digests the provider that answers is remembered under."""
    anchor: str | None = None
    """The digest consistent hashing places when no key is known."""

    def __bool__(self) -> bool:
        return bool(self.keys)


NO_AFFINITY = Affinity()


def _hasher(kind: str, model: str) -> Any:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"garage-affinity")
    _feed(h, kind.encode())
    _feed(h, model.encode())
    return h


def _feed(h: Any, data: bytes) -> None:
    """Length-prefixed, so that no two sequences of parts hash alike."""
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def _explicit(kind: str, model: str, value: object) -> AffinityKey | None:
    if not isinstance(value, str) or not value:
        return None
    h = _hasher(kind, model)
    _feed(h, value[:MAX_EXPLICIT].encode())
    return AffinityKey(h.hexdigest(), kind)


def _whole_blocks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` cut every ``size``; a partial last block is no boundary (the next turn splits it
    differently)."""
    return [items[i : i + size] for i in range(0, len(items) - size + 1, size)]


def _segments(body: Mapping[str, Any]) -> tuple[str, int, list[bytes]] | None:
    """The prompt as segments whose boundaries are prefixes worth a key: the unit's label, its size
    (0: a message) and the segments; None when the body has no single prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "messages", 0, [json.dumps(m, sort_keys=True, separators=(",", ":")).encode() for m in messages]
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]  # one prompt in a list; several prompts are a batch: no one prefix
    if isinstance(prompt, str):
        return "prompt chars", BLOCK_CHARS, [str(b).encode() for b in _whole_blocks(prompt, BLOCK_CHARS)]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        blocks = _whole_blocks(prompt, BLOCK_TOKENS)
        return "prompt tokens", BLOCK_TOKENS, [",".join(map(str, b)).encode() for b in blocks]
    return None


def _prefix_keys(model: str, unit: str, size: int, parts: Sequence[bytes]) -> list[AffinityKey]:
    """Keys of the prompt's prefixes at the first and the MAX_LOOKUP latest boundaries, longest first."""
    h = _hasher(unit, model)
    keys: list[AffinityKey] = []
    first_lookup = len(parts) - MAX_LOOKUP + 1
    for k, part in enumerate(parts, start=1):
        _feed(h, part)
        if k == 1 or k >= first_lookup:
            keys.append(AffinityKey(h.hexdigest(), f"{unit}[:{k * size if size else k}]"))
    keys.reverse()
    return keys


def affinity_keys(model: str, body: Mapping[str, Any]) -> Affinity:
    """The affinity keys of a chat or completions request ``body`` for ``model``; none for a body
    with no prompt nor hint. The body is the client's, already size-limited and validated."""
    cache_key = _explicit("prompt_cache_key", model, body.get("prompt_cache_key"))
    user = _explicit("user", model, body.get("user"))
    segments = _segments(body)
    prefixes = _prefix_keys(model, *segments) if segments is not None else []
    keys = tuple(k for k in (cache_key, *prefixes, user) if k is not None)
    learn = [k.digest for k in (cache_key, user) if k is not None]
    if prefixes:
        learn += [prefixes[-1].digest, prefixes[0].digest]  # the first boundary, the whole prompt
    shortest = prefixes[-1] if prefixes else None
    anchor = next((k.digest for k in (cache_key, shortest, user) if k is not None), None)
    return Affinity(keys, tuple(dict.fromkeys(learn)), anchor)


def conversation_affinity(model: str, conversation: str) -> Affinity:
    """The affinity of a turn of ``conversation`` when nothing else is known (the simulator's
    workload: its requests carry conversation ids, not prompts)."""
    key = _explicit("conversation", model, conversation)
    assert key is not None, "a conversation id is a non-empty string"
    return Affinity((key,), (key.digest,), key.digest)


def rendezvous(anchor: str, peers: Iterable[str]) -> list[str]:
    """``peers`` in the anchor's hash order (rendezvous hashing): every consumer computes the same."""

    def weight(peer: str) -> bytes:
        h = hashlib.blake2b(digest_size=8, person=b"garage-rendezv")
        _feed(h, anchor.encode())
        _feed(h, peer.encode())
        return h.digest()

    return sorted(peers, key=lambda peer: (weight(peer), peer), reverse=True)


def load_cap(loads: Sequence[float], epsilon: float = EPSILON) -> int:
    """The load a provider may reach with one more request: the bounded-load capacity
    ⌈(1 + ε) × (total + 1) / n⌉, or SLACK over the least loaded provider if that is more."""
    if not loads:
        return SLACK
    bounded = math.ceil((1 + epsilon) * (sum(loads) + 1) / len(loads))
    return max(bounded, math.floor(min(loads)) + SLACK)


def within_bound(load: float, loads: Sequence[float], epsilon: float = EPSILON) -> bool:
    """True when a provider at ``load`` may take one more request, ``loads`` being every eligible
    provider's (its own included)."""
    return load + 1 <= load_cap(loads, epsilon)


@dataclass(slots=True)
class _Learned:
    provider: str
    at: float


class AffinityBook:
    """Key → the provider that served it last, per consumer (LRU, MAX_KEYS, MAX_AGE)."""

    def __init__(self, max_keys: int = MAX_KEYS, max_age: float = MAX_AGE) -> None:
        self._max_keys = max_keys
        self._max_age = max_age
        self._map: OrderedDict[str, _Learned] = OrderedDict()

    def learn(self, affinity: Affinity, provider: str, now: float) -> None:
        """``provider`` answered a request of ``affinity``: its cache now holds the prefix."""
        for digest in affinity.learn:
            self._map.pop(digest, None)
            self._map[digest] = _Learned(provider, now)
        while len(self._map) > self._max_keys:
            self._map.popitem(last=False)

    def known(self, affinity: Affinity, now: float) -> tuple[AffinityKey, str] | None:
        """The first of the request's keys with a provider learned within MAX_AGE, and that provider."""
        for key in affinity.keys:
            learned = self._map.get(key.digest)
            if learned is not None and now - learned.at <= self._max_age:
                self._map.move_to_end(key.digest)
                return key, learned.provider
        return None

    def __len__(self) -> int:
        return len(self._map)
