"""Watching a call from the sender: ``subscribe`` as an async iterator of typed events.

:class:`SessionEvents` is what :meth:`ContextClient.subscribe` returns::

    async with client.subscribe(events=["user_transcript", "agent_transcript"]) as events:
        async for event in events:
            ...  # UserTranscriptEvent, AgentTranscriptEvent, ..., CallEndedEvent last

Its sink is registered with the client's room listener *before* the ``subscribe`` request goes
out: over RPC the ack travels as the RPC's response while the events travel as data packets, so
the first events can arrive before the ack and must not be lost. The sink only takes events from
the agent the request went to. Its queue is bounded: when the caller reads too slowly the oldest
events are dropped, and the next event handed out says how many in ``dropped`` (added to what the
agent itself dropped); :attr:`SessionEvents.dropped` is the running total.

Iteration ends after ``call_ended`` (handed out as the last event). It raises
:class:`~..errors.ContextError` when the agent leaves the room without ending the call
(``AGENT_NOT_FOUND``), or the room goes away or the client closes (``LIVEKIT_UNAVAILABLE``).
Leaving the ``async with`` (or :meth:`SessionEvents.aclose`) unsubscribes, unless the call has
ended or the agent is gone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ErrorCode
from ..log import logger
from ..protocol import (
    SESSION_EVENT_TYPES,
    CallEndedEvent,
    SessionEvent,
    SessionEventType,
    SuccessAck,
)
from ..request_errors import ContextError

DEFAULT_EVENT_QUEUE_SIZE: Final = 1_024
"""Most events waiting to be read from one :class:`SessionEvents`; beyond it the oldest go."""
UNSUBSCRIBE_TIMEOUT_S: Final = 2.0
"""Seconds leaving a subscription waits for the ``unsubscribe`` ack before giving up on it."""
ALL_EVENTS: Final[tuple[SessionEventType, ...]] = tuple(SESSION_EVENT_TYPES)  # type: ignore[arg-type]
"""Every session event type: the default of :meth:`ContextClient.subscribe`."""


@dataclass(frozen=True, slots=True)
class _Failure:
    error: ContextError


class EventSink:
    """The bounded buffer between the room listener and one :class:`SessionEvents`.

    Args:
        agent: The only participant whose events it takes.
        queue_size: Most events held; beyond it the oldest are dropped and counted.
    """

    def __init__(self, agent: str, queue_size: int) -> None:
        self.agent = agent
        self._size = queue_size
        self._queue: deque[SessionEvent | _Failure | None] = deque()
        self._lost = 0
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._size:
            self._queue.popleft()
            self._lost += 1
        self._queue.append(event)
        self._closed = isinstance(event, CallEndedEvent)  # nothing comes after it
        self._ready.set()

    def finish(self, failure: ContextError | None = None) -> None:
        """No more events: end after what is queued (``failure``: then raise it)."""
        if self._closed:
            return
        self._closed = True
        self._queue.append(None if failure is None else _Failure(failure))
        self._ready.set()

    async def get(self) -> tuple[SessionEvent | _Failure | None, int]:
        """The next item and how many were dropped locally just before it."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        lost, self._lost = self._lost, 0
        return item, lost


class EventSinks:
    """Every open sink of one client, fed by its room listener."""

    def __init__(self) -> None:
        self._sinks: set[EventSink] = set()

    def add(self, sink: EventSink) -> None:
        self._sinks.add(sink)

    def remove(self, sink: EventSink) -> None:
        self._sinks.discard(sink)

    def on_event(self, event: SessionEvent, sender: str) -> None:
        for sink in self._sinks:
            if sink.agent == sender:
                sink.put(event)

    def agent_left(self, agent: str) -> None:
        for sink in self._sinks:
            if sink.agent == agent:
                sink.finish(
                    ContextError(
                        ErrorCode.AGENT_NOT_FOUND,
                        f"Agent '{agent}' left the room before the call ended.",
                        request_id=None,
                        retryable=False,
                    )
                )

    def fail(self, make: Callable[[str | None], ContextError]) -> None:
        for sink in self._sinks:
            sink.finish(make(None))


@dataclass(frozen=True)
class SubscribeHooks:
    """What a :class:`SessionEvents` needs of its client."""

    sinks: EventSinks
    find_agent: Callable[[], Awaitable[str]]
    request: Callable[[dict[str, Any], float | None], Awaitable[SuccessAck]]
    """Prepare and deliver one request (with the client's retries); returns its ack."""
    usable: Callable[[], bool]
    """Whether the client is open and its room connected (else leaving sends nothing)."""
    opened: Callable[[SessionEvents], None]
    closed: Callable[[SessionEvents], None]


class SessionEvents:
    """A live subscription to the agent's session events; see :meth:`ContextClient.subscribe`.

    Use it as ``async with`` (subscribes on entry, unsubscribes on exit) or ``await`` it and
    call :meth:`aclose`; iterate it with ``async for``.
    """

    def __init__(
        self,
        hooks: SubscribeHooks,
        *,
        events: Sequence[SessionEventType],
        interim: bool,
        tool_arguments: bool,
        queue_size: int,
        timeout: float | None,
    ) -> None:
        self._hooks = hooks
        self._request: dict[str, Any] = {
            "type": "subscribe",
            "events": list(events),
            "interim": interim,
            "tool_arguments": tool_arguments,
        }
        self._queue_size = queue_size
        self._timeout = timeout
        self._sink: EventSink | None = None
        self._ack: SuccessAck | None = None
        self._dropped = 0
        self._ended: CallEndedEvent | None = None
        self._agent_gone = False
        self._done = False
        self._unsubscribed = False
        self._closed = False

    # ------------------------------------------------------------------------------------------
    # what the caller reads

    @property
    def ack(self) -> SuccessAck:
        """The ``subscribe`` ack (``data.events``: what the agent sends, ``call_ended`` always).

        Raises:
            RuntimeError: Not subscribed yet.
        """
        if self._ack is None:
            raise RuntimeError("not subscribed yet: use 'async with' or await it first")
        return self._ack

    @property
    def events(self) -> list[SessionEventType]:
        """The events the agent sends this subscriber."""
        return list(self.ack.data.events or ())

    @property
    def dropped(self) -> int:
        """Events lost so far: by the agent (this subscriber fell behind) and here."""
        return self._dropped

    @property
    def call_ended(self) -> CallEndedEvent | None:
        """The ``call_ended`` event, once it has been handed out."""
        return self._ended

    # ------------------------------------------------------------------------------------------
    # lifecycle

    async def start(self) -> SessionEvents:
        """Subscribe. Events that arrive before the ack are kept.

        Raises:
            ContextError: The agent refused (``UNAUTHORIZED`` without the ``subscribe``
                permission, ``NOT_READY`` after the call ended) or could not be reached.
            AckTimeoutError: No ack in time.
            RuntimeError: Already started, or this client already has a subscription open.
        """
        if self._sink is not None or self._closed:
            raise RuntimeError("this subscription was already started")
        agent = await self._hooks.find_agent()
        sink = EventSink(agent, self._queue_size)
        self._hooks.opened(self)  # raises if another subscription is open on this client
        self._sink = sink
        self._hooks.sinks.add(sink)
        try:
            self._ack = await self._hooks.request(self._request, self._timeout)
        except BaseException:
            self._hooks.sinks.remove(sink)
            self._closed = True
            self._hooks.closed(self)
            raise
        logger.debug("subscribed to session events", extra={"agent": agent})
        return self

    def __await__(self) -> Generator[Any, None, SessionEvents]:
        return self.start().__await__()

    async def __aenter__(self) -> SessionEvents:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: unsubscribe (unless the call ended or the agent left). Idempotent.

        A failed or unanswered ``unsubscribe`` is logged, not raised (the agent also ends the
        subscription when this participant leaves the room).
        """
        if self._closed:
            return
        self._closed = True
        sink = self._sink
        if sink is not None:
            sink.finish()
            self._hooks.sinks.remove(sink)
        self._hooks.closed(self)
        if sink is None or self._ended is not None or self._agent_gone or self._unsubscribed:
            return
        if not self._hooks.usable():
            return
        try:
            await asyncio.wait_for(
                self._hooks.request({"type": "unsubscribe"}, UNSUBSCRIBE_TIMEOUT_S),
                UNSUBSCRIBE_TIMEOUT_S,
            )
        except (ContextError, asyncio.TimeoutError) as exc:
            logger.info(
                "could not unsubscribe from session events",
                extra={"agent": sink.agent, "error": type(exc).__name__},
            )

    def end_locally(self) -> None:
        """The subscription was ended by an ``unsubscribe`` sent another way: stop iterating."""
        self._unsubscribed = True
        if self._sink is not None:
            self._sink.finish()

    # ------------------------------------------------------------------------------------------
    # iteration

    def __aiter__(self) -> AsyncIterator[SessionEvent]:
        return self

    async def __anext__(self) -> SessionEvent:
        sink = self._sink
        if sink is None:
            raise RuntimeError("not subscribed yet: use 'async with' or await it first")
        if self._ended is not None or self._done:
            raise StopAsyncIteration
        item, lost = await sink.get()
        if item is None or isinstance(item, _Failure):
            self._done = True  # nothing follows either; the next read ends the iteration
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._agent_gone = item.error.code is ErrorCode.AGENT_NOT_FOUND
            raise item.error
        if lost:
            item = item.model_copy(update={"dropped": (item.dropped or 0) + lost})
        self._dropped += item.dropped or 0
        if isinstance(item, CallEndedEvent):
            self._ended = item
        return item
