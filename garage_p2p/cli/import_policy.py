"""Modules garage-peer's libraries import for features the daemon never uses, kept out of its process.

Every CPU-second of a start is paid again by each peer that joins a mesh (issue 17). These were
~0.2 CPU-s of the daemon's ~0.85 CPU-s of imports (``resource.getrusage``, the collector paused as
``garage-peer`` does, median of 9 fresh interpreters):

- ``httpx._main``, httpx's command-line client (click, rich, pygments; ~0.045 CPU-s): httpx's
  ``__init__`` imports it in a ``try`` and does without it;
- ``cffi``, which pycryptodome (libp2p's RSA and secio code) imports to parse C declarations with
  pycparser at import (~0.075 CPU-s): without it pycryptodome binds its C code with ctypes, its
  documented fallback. The daemon's other cffi users (PyNaCl, coincurve) load their compiled
  ``_cffi_backend`` modules, not this package;
- ``requests`` (with urllib3, charset_normalizer, idna; ~0.08 CPU-s), imported by libp2p's AutoTLS
  and observability clients, which the daemon never starts: a stand-in module takes its place, and
  reading anything from it raises. Not for a peer that runs a model container: the Podman client
  uses requests.

Only ``garage-peer``'s own process installs this (``main_command``): tests and other tools import
as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence

REFUSED = frozenset({"httpx._main", "cffi"})
"""Imported in a ``try`` by their importers, which do without them."""
STOOD_IN = frozenset({"requests"})
"""Imported at module level for code the daemon never runs."""
WHERE = "garage_p2p/cli/import_policy.py"


class KeptOut(AttributeError):
    """Code read from a module kept out of garage-peer's process (ours to fix: it is used after all)."""


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        raise KeptOut(f"{self.__name__}.{name}: {self.__name__} is kept out of garage-peer's process ({WHERE})")


class _StandInLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StandIn(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, refused: frozenset[str], stood_in: frozenset[str]) -> None:
        self.refused = refused
        self.stood_in = stood_in

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.refused:
            raise ModuleNotFoundError(f"{fullname} is kept out of garage-peer's process ({WHERE})", name=fullname)
        if fullname in self.stood_in:
            return importlib.util.spec_from_loader(fullname, _StandInLoader())
        return None


def keep_unused_modules_out(*, runtime: bool) -> None:
    """Install the policy before the daemon is imported (``runtime``: this peer runs a model container)."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    stood_in = frozenset() if runtime else STOOD_IN
    loaded = (REFUSED | stood_in) & sys.modules.keys()
    if loaded:
        raise RuntimeError(f"{sorted(loaded)} imported before garage-peer's import policy ({WHERE})")
    sys.meta_path.insert(0, _Finder(REFUSED, stood_in))
