"""Every event the agent sends, numbered and kept for a while (protocol v1.3).

Each event gets the next ``seq`` of the session (one counter for all of them, whoever they go
to) and ``t_ms``, the milliseconds since the session started on the agent's monotonic clock.
The last ``capacity`` events are kept, so that a subscriber that was away can ask for what it
missed (``subscribe{since_seq}``) and get it again in order, with nothing missing and nothing
twice. Interim user transcripts are numbered but not kept: they are superseded by the final
one, and would crowd the real events out of the buffer.

An event is kept together with where it went: ``to``, the one identity it was addressed to (a
speech's or a context entry's sender), and ``kind``, the subscription name it reached
subscribers under (``speech``, ``context``, ``user_transcript``, ...). Keeping an event costs
a counter, a clock read and an append; an event nobody reads now (a ``context_dropped`` for a
v1.2 sender with no subscriber, the common case of an add_context burst) is not even built
until a replay asks for it (``LoggedEvent.lazy``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from ..protocol import Event, utc_timestamp

DEFAULT_EVENT_BUFFER: Final = 1_024
"""Events an agent keeps for subscribers that resume (``ContextPlugin(event_buffer=...)``)."""
MAX_EVENT_BUFFER: Final = 1_000_000


class Stamp(TypedDict):
    """The fields every event begins with (:meth:`EventLog.stamped`), to unpack into its model."""

    seq: int
    t_ms: int
    timestamp: str


@dataclass(eq=False, slots=True)
class LoggedEvent:
    """One event as it was sent: the v1.3 form, or how to build it (``lazy``)."""

    seq: int
    to: str | None
    """The identity it was addressed to, if any (it reached only that one besides ``kind``)."""
    kind: str | None
    """The subscription name it reached subscribers under; None: addressed to ``to`` only."""
    event_: Event | None = None
    lazy: tuple[Callable[..., Event], tuple[Any, ...]] | None = None

    @property
    def event(self) -> Event:
        """The event (built now if it was kept lazily)."""
        event = self.event_
        if event is None:
            assert self.lazy is not None
            factory, args = self.lazy
            event = self.event_ = factory(*args)
            self.lazy = None
        return event


class EventLog:
    """The session's event counter, its clock and the bounded buffer of recent events.

    Args:
        capacity: Most events kept (0: none; every resume then gets ``events_lost``).
        clock: Nanoseconds on a monotonic clock (a test seam).
    """

    def __init__(
        self, capacity: int = DEFAULT_EVENT_BUFFER, *, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        if not 0 <= capacity <= MAX_EVENT_BUFFER:
            raise ValueError(f"event_buffer must be between 0 and {MAX_EVENT_BUFFER:,}")
        self._capacity = capacity
        self._clock = clock
        self._origin_ns = clock()
        self._buffer: deque[LoggedEvent] = deque()
        self.seq = 0
        """The last ``seq`` given out (0: none yet)."""
        self._lost_upto = 0  # the newest seq that left the buffer

    @property
    def capacity(self) -> int:
        return self._capacity

    def start_clock(self, *, started_ago_s: float = 0.0) -> None:
        """``t_ms`` counts from now, or from ``started_ago_s`` seconds ago (the session's start)."""
        self._origin_ns = self._clock() - int(max(0.0, started_ago_s) * 1e9)

    def t_ms(self) -> int:
        return (self._clock() - self._origin_ns) // 1_000_000

    def stamp(self) -> tuple[int, int]:
        """The next ``seq`` and the current ``t_ms``."""
        self.seq += 1
        return self.seq, self.t_ms()

    def stamped(self) -> Stamp:
        """:meth:`stamp` and the wall-clock ``timestamp``, for a new event:
        ``SomeEvent(**log.stamped(), ...)``."""
        seq, t_ms = self.stamp()
        return {"seq": seq, "t_ms": t_ms, "timestamp": utc_timestamp()}

    def keep(self, logged: LoggedEvent) -> None:
        """Keep ``logged`` (the newest event) for replays; the oldest kept may leave."""
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            if not self._capacity:
                self._lost_upto = logged.seq
                return
            self._lost_upto = buffer.popleft().seq
        buffer.append(logged)

    def since(self, seq: int) -> list[LoggedEvent] | None:
        """Every kept event after ``seq``, oldest first; None if some of them are gone.

        A ``seq`` this session never gave out (larger than the last one: a subscriber coming
        from another session) is answered with None too: nothing here follows it.
        """
        if seq < self._lost_upto or seq > self.seq:
            return None
        buffer = self._buffer
        if not buffer or buffer[-1].seq <= seq:
            return []
        if buffer[0].seq > seq:
            return list(buffer)
        # the buffer is in seq order: walk back from the newest (a resume is usually recent)
        kept: list[LoggedEvent] = []
        for logged in reversed(buffer):
            if logged.seq <= seq:
                break
            kept.append(logged)
        kept.reverse()
        return kept
