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

v1.3: every event carries ``seq``; the subscription remembers the last one it handed out
(:attr:`SessionEvents.last_seq`), and a later ``subscribe(since_seq=...)`` (after this process,
its connection or the agent's connection dropped) gets what was missed replayed first (each
``replay: True``), or ``events_lost`` and a fresh ``snapshot`` when the agent's buffer no longer
reaches back. An event whose ``seq`` was already handed out is never handed out again.
The ack's :attr:`SessionEvents.snapshot` says where the call stood when it began.

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
    Event,
    SessionEventType,
    Snapshot,
    SuccessAck,
    event_kind,
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


_ALWAYS: Final = frozenset({"call_ended", "events_lost", "snapshot"})
"""What a subscription gets whatever it named."""


class EventSink:
    """The bounded buffer between the room listener and one :class:`SessionEvents`.

    Args:
        agent: The only participant whose events it takes.
        queue_size: Most events held; beyond it the oldest are dropped and counted.
        kinds: The event kinds it takes (its own speech events also reach this client's
            playout waits, whether it takes them or not).
    """

    def __init__(self, agent: str, queue_size: int, kinds: frozenset[str]) -> None:
        self.agent = agent
        self._size = queue_size
        self._kinds = kinds | _ALWAYS
        self._queue: deque[Event | _Failure | None] = deque()
        self._lost = 0
        self._ready = asyncio.Event()
        self._closed = False
        self.last_seq: int | None = None
        """The highest ``seq`` taken: an event numbered at or below it is a repeat."""

    def put(self, event: Event) -> None:
        if self._closed or event_kind(event.type) not in self._kinds:
            return
        seq = event.seq
        if seq is not None:
            # events_lost starts afresh: it may come from another session of the agent (its
            # seq begun again), and what follows it continues from it
            if event.type != "events_lost" and self.last_seq is not None and seq <= self.last_seq:
                return  # already taken (a replay overlapping what arrived live)
            self.last_seq = seq
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

    async def get(self) -> tuple[Event | _Failure | None, int]:
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

    def on_event(self, event: Event, sender: str) -> None:
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
        since_seq: int | None = None,
    ) -> None:
        self._hooks = hooks
        self._request: dict[str, Any] = {
            "type": "subscribe",
            "events": list(events),
            "interim": interim,
            "tool_arguments": tool_arguments,
        }
        if since_seq is not None:
            self._request["since_seq"] = since_seq
        self._since_seq = since_seq
        self._last_out: int | None = None
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
    def snapshot(self) -> Snapshot | None:
        """v1.3: where the call stood when the subscription began (the ack's snapshot: the
        state, the newest messages, the pending speeches, and the ``seq`` the events continue
        after), or None from an older agent."""
        return self.ack.data.snapshot

    @property
    def replayed(self) -> int:
        """v1.3: how many events the agent replays first (``since_seq``), 0 without it."""
        return self.ack.data.replayed or 0

    @property
    def last_seq(self) -> int | None:
        """The ``seq`` to resume after (``subscribe(since_seq=...)``): the last event's that
        was handed out, else the snapshot's, else the ``since_seq`` this subscription began
        from. Events that arrived but were not read yet come again on a resume."""
        if self._last_out is not None:
            return self._last_out
        snapshot = self._ack.data.snapshot if self._ack is not None else None
        if snapshot is not None and self._since_seq is None:
            return snapshot.seq
        return self._since_seq

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
        sink = EventSink(agent, self._queue_size, frozenset(self._request["events"]))
        if self._since_seq is not None:
            sink.last_seq = self._since_seq  # nothing at or before it is handed out again
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

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
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
        if item.seq is not None:
            self._last_out = item.seq
        if isinstance(item, CallEndedEvent):
            self._ended = item
        return item
