"""The receiver's room and session listeners, hooked as one listener per event.

LiveKit's ``EventEmitter.emit`` looks up each listener's signature with ``inspect.signature``
at every emit, to pass only the arguments the listener takes. For a bound method that lookup
is the slow path (the function's signature built again, then its ``self`` dropped), and a
speech makes the session emit four events, each heard by two of our parts. Profiled in the
agents of ``benchmarks/bench_fanout.py`` at 50 rooms, those lookups were 8% of the agents' CPU,
more than the receiver's own work on a speak. One :class:`EventListeners` per emitter and event
carries a ready-made ``__signature__``, which ``inspect.signature`` returns at once, and calls
our parts in the order they were hooked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..log import logger

Hook = tuple[Any, str, Callable[..., None]]
"""(emitter, event name, listener): one ``.on()`` made at start and undone at close."""

_TAKES_ANY: Final = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])
_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _arity(listener: Callable[..., None]) -> int | None:
    """How many of the event's arguments ``listener`` takes (None: all), by the emitter's
    own rule, worked out once instead of at every emit."""
    parameters = inspect.signature(listener).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return sum(1 for p in parameters if p.kind in _POSITIONAL)


class EventListeners:
    """Our listeners of one event of one emitter, heard as one.

    Each is called with the arguments it takes, in the order given; one that raises is
    logged and the others still hear the event, as they would as separate listeners.
    """

    __signature__ = _TAKES_ANY
    __slots__ = ("_event", "_listeners")

    def __init__(self, event: str, listeners: Sequence[Callable[..., None]]) -> None:
        self._event = event
        self._listeners = [(listener, _arity(listener)) for listener in listeners]

    def __call__(self, *args: Any) -> None:
        for listener, arity in self._listeners:
            try:
                listener(*(args if arity is None else args[:arity]))
            except Exception:
                logger.exception("a receiver listener failed", extra={"event": self._event})

    def __len__(self) -> int:
        return len(self._listeners)


def grouped(hooks: Sequence[Hook]) -> list[tuple[Any, str, EventListeners]]:
    """``hooks`` as one :class:`EventListeners` per emitter and event, in the order each pair
    first appears; within a pair, the listeners keep their order."""
    groups: dict[tuple[int, str], tuple[Any, str, list[Callable[..., None]]]] = {}
    for emitter, event, listener in hooks:
        key = (id(emitter), event)
        if key not in groups:
            groups[key] = (emitter, event, [])
        groups[key][2].append(listener)
    return [
        (emitter, event, EventListeners(event, listeners))
        for emitter, event, listeners in groups.values()
    ]
