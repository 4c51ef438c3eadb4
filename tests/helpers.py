"""Waits shared by the whole suite, the live part included."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Final

import pytest

WAIT_S: Final = 15.0
"""How long a wait may take before the test fails. A wait returns as soon as its condition holds,
so this only bounds how long a failing test takes; it is sized for a real server (live suite)."""
POLL_S: Final = 0.005
ASYNC_POLL_S: Final = 0.05
"""Between two calls of an awaitable condition: those usually ask a server something."""


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition",
    *,
    timeout: float = WAIT_S,
) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        asked_a_server = inspect.isawaitable(result)
        if asked_a_server:
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(ASYNC_POLL_S if asked_a_server else POLL_S)
