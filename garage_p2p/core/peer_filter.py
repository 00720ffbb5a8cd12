"""Which peers this peer deals with: an allow list, a deny list (sans-IO).

The deny list wins. A non-empty allow list admits only the peers on it (a
closed group of known rigs); an empty one admits everyone not denied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerFilter:
    allow: frozenset[str] = frozenset()
    """If not empty, the only peers admitted."""
    deny: frozenset[str] = frozenset()
    """Peers never admitted."""

    @classmethod
    def of(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> PeerFilter:
        return cls(frozenset(allow), frozenset(deny))

    def allowed(self, peer_id: str) -> bool:
        if peer_id in self.deny:
            return False
        return not self.allow or peer_id in self.allow

    @property
    def open(self) -> bool:
        """True when it admits everyone."""
        return not self.allow and not self.deny


OPEN = PeerFilter()
