"""single_exceptions: a nursery's lone error comes out as itself, with no reference cycle."""

from __future__ import annotations

import pytest
import trio

from garage_p2p.trio_util import single_exceptions


def _reachable(exc: BaseException) -> list[BaseException]:
    """Every exception reachable through context, cause and group members; fails on a cycle."""
    seen: list[int] = []
    stack = [exc]
    out = []
    while stack:
        e = stack.pop()
        assert id(e) not in seen, f"{e!r} is reachable from itself"
        seen.append(id(e))
        out.append(e)
        stack += [x for x in (e.__context__, e.__cause__) if x is not None]
        if isinstance(e, BaseExceptionGroup):
            stack += list(e.exceptions)
    return out


async def test_a_lone_error_is_raised_as_itself_without_a_cycle():
    async def fail() -> None:
        raise ValueError("backend went away")

    with pytest.raises(ValueError, match="backend went away") as info:
        with single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail)
    # py-libp2p's error classification walks these links; a cycle (the error's
    # context being the group that holds it) recursed until the host died.
    _reachable(info.value)


async def test_several_errors_stay_a_group():
    async def fail(message: str) -> None:
        raise ValueError(message)

    with pytest.raises(BaseExceptionGroup) as info:
        with single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail, "a")
                nursery.start_soon(fail, "b")
    assert len(info.value.exceptions) == 2
