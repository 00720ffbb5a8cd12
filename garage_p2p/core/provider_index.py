"""Which peers serve each model, by region, kept as ads come and go.

The router draws a few providers at random from here instead of scoring every
provider of a model (``routing.Router.shortlist``): adding, removing and
drawing ``k`` cost O(1) and O(k) whatever the number of providers.

A region constraint ``se`` matches ``se`` and ``se-sto`` (``routing.region_matches``),
so a provider is filed under its model and each prefix of its region cut at a
``-``, down to REGION_INDEX_DEPTH labels; a deeper constraint draws from its
depth-deep prefix and the caller filters the draw.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from functools import lru_cache

REGION_INDEX_DEPTH = 3
"""Region labels indexed (``se-sto-kista``): honest regions have one or two; a peer whose region has
more is still found, by filtering the draw of its first three, while an ad cannot make its author
weigh more than 1 + REGION_INDEX_DEPTH entries per model."""


class IndexedSet:
    """A set with uniform random draws: a list and each member's position in it."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._where: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def add(self, item: str) -> None:
        if item not in self._where:
            self._where[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        where = self._where.pop(item, None)
        if where is None:
            return
        last = self._items.pop()
        if last != item:  # the last member fills the hole
            self._items[where] = last
            self._where[last] = where

    def sample(self, k: int, rng: random.Random) -> list[str]:
        """Up to ``k`` distinct members, uniformly at random; O(k) for a large set."""
        return rng.sample(self._items, min(k, len(self._items)))


@lru_cache(maxsize=4096)
def region_keys(region: str | None) -> tuple[str, ...]:
    """The region constraints ``region`` is filed under: ``se-sto`` → ``se``, ``se-sto``
    (cached: a table files every ad it takes, and regions are few)."""
    if not region:
        return ()
    labels = region.split("-")[:REGION_INDEX_DEPTH]
    return tuple("-".join(labels[: i + 1]) for i in range(len(labels)))


@lru_cache(maxsize=4096)
def _index_keys(region: str | None) -> tuple[str, ...]:
    """Every key a provider in ``region`` is filed under: "" (any region) and ``region_keys``."""
    return ("", *region_keys(region))


def region_key(wanted: str | None) -> str:
    """The key to draw from for the constraint ``wanted`` ("" for none)."""
    return "-".join(wanted.split("-")[:REGION_INDEX_DEPTH]) if wanted else ""


class ProviderIndex:
    """Model → region prefix → peers; "" for every region."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, str], IndexedSet] = {}

    def add(self, peer_id: str, models: Iterable[str], region: str | None) -> None:
        keys = _index_keys(region)
        for model in models:
            for key in keys:
                members = self._sets.get((model, key))
                if members is None:  # not setdefault: that would build a set for every add
                    members = self._sets[(model, key)] = IndexedSet()
                members.add(peer_id)

    def remove(self, peer_id: str, models: Iterable[str], region: str | None) -> None:
        for model in models:
            for key in _index_keys(region):
                members = self._sets.get((model, key))
                if members is not None:
                    members.discard(peer_id)
                    if not members:
                        del self._sets[(model, key)]

    def members(self, model: str, wanted_region: str | None = None) -> IndexedSet:
        """The peers serving ``model`` under ``wanted_region``'s key (a superset when it is deeper
        than REGION_INDEX_DEPTH); empty if none."""
        return self._sets.get((model, region_key(wanted_region))) or IndexedSet()
