"""Small trio helpers shared by the adapters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_exceptions() -> Iterator[None]:
    """Re-raise a nursery's ExceptionGroup of exactly one error as that error.

    trio wraps even a single failure in a group; the callers here handle
    specific errors (a broken stream, an HTTP error) and a group of one hides
    them. Groups of several stay groups: those are real surprises.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        try:
            raise leaf from None
        finally:
            # Raising inside the handler makes the group the leaf's context: a
            # cycle (the group holds the leaf) that py-libp2p's error
            # classification followed until RecursionError killed the host.
            leaf.__context__ = None


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
