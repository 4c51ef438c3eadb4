"""Which event loop the gateway process runs on: uvloop when it is installed, else asyncio's.

Much of the gateway's CPU per room of a fan-out is the event loop's own work: a socket written
and read, a wake-up, a callback, per ``PerformRpc``. uvloop does that work in C (libuv). Timed
on one 2-core machine whose speed moves from run to run, it saved about a tenth of the
gateway's CPU per request and per room: 0.84x to 1.06x in ``benchmarks/bench_gateway_rooms.py``
and 0.84x to 0.93x in ``bench_gateway_http.py``, each beside asyncio's loop in the same run
(``docs/performance.md``); in whole fan-outs on LiveKit the difference was within the machine's
noise. Nothing else changes: the gateway's code is the same on both loops, and its serving and
HTTP client tests run on both.

uvloop is an optional dependency (``pip install "imaginex-context-plugin[uvloop]"``; there is no
uvloop for Windows). ``imaginex-context gateway --event-loop`` picks the loop; the default,
``auto``, takes uvloop when it can be imported.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any, Final, Literal, TypeVar, get_args

from ..errors import ConfigError

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
EVENT_LOOP_CHOICES: Final[tuple[EventLoopChoice, ...]] = get_args(EventLoopChoice)
DEFAULT_EVENT_LOOP: Final[EventLoopChoice] = "auto"
"""uvloop when it can be imported, else asyncio's loop."""
UVLOOP_MISSING: Final = (
    "--event-loop uvloop needs uvloop, which is not installed: "
    'pip install "imaginex-context-plugin[uvloop]" (not available on Windows), '
    "or use --event-loop asyncio."
)

_T = TypeVar("_T")


def resolve_event_loop(choice: EventLoopChoice) -> Literal["asyncio", "uvloop"]:
    """The loop ``choice`` runs on.

    Raises:
        ConfigError: ``uvloop`` was asked for and cannot be imported; or ``choice`` is not one
            of :data:`EVENT_LOOP_CHOICES`.
    """
    if choice not in EVENT_LOOP_CHOICES:
        raise ConfigError(f"The event loop must be one of {', '.join(EVENT_LOOP_CHOICES)}.")
    if choice == "asyncio":
        return "asyncio"
    if _uvloop() is not None:
        return "uvloop"
    if choice == "uvloop":
        raise ConfigError(UVLOOP_MISSING)
    return "asyncio"


def run_on(loop: Literal["asyncio", "uvloop"], main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to the end on a new loop of kind ``loop``, as ``asyncio.run`` does."""
    uvloop = _uvloop() if loop == "uvloop" else None
    if uvloop is None:
        return asyncio.run(main)
    result: _T = uvloop.run(main)
    return result


def _uvloop() -> Any:
    """The uvloop module, or None when it cannot be imported (not installed, or Windows)."""
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None
