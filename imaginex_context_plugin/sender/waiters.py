"""Requests waiting for their ack, and callers waiting for the end of a speech.

Both are futures keyed by request id, matched against what one agent sends back, and failed
together when that agent leaves or the room goes away: :func:`fail_all` is the one fan-out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ErrorCode
from ..expiring import ExpiringCache
from ..protocol import ErrorAck, SpeechFailedEvent, SpeechFinishedEvent, SuccessAck
from ..request_errors import ContextError
from .options import EVENT_MEMORY_MAX, EVENT_MEMORY_S

CLOSED_MESSAGE = "The client was closed before the answer arrived."


def fail_all(
    waiting: Iterable[tuple[str, asyncio.Future[Any] | None]],
    make: Callable[[str], ContextError],
) -> None:
    """Fail every ``(request_id, future)`` not done yet with ``make(request_id)``."""
    for request_id, future in waiting:
        if future is not None and not future.done():
            future.set_exception(make(request_id))


@dataclass(eq=False)
class Pending:
    """One request waiting for its ack; ``future`` is replaced at each attempt."""

    request_id: str
    agent: str | None = None
    future: asyncio.Future[SuccessAck | ErrorAck] | None = None


class PendingAcks:
    """The requests in flight, each waiting for the ack of the agent it went to."""

    def __init__(self) -> None:
        self._pending: dict[str, Pending] = {}

    def add(self, request_id: str) -> Pending:
        if request_id in self._pending:
            raise ValueError(f"A request with id '{request_id}' is already waiting for its ack.")
        pending = Pending(request_id)
        self._pending[request_id] = pending
        return pending

    def remove(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def on_ack(self, ack: SuccessAck | ErrorAck, sender: str) -> None:
        """Hand an ack from ``sender`` to the request waiting for it, if any."""
        if ack.id is not None:
            pending = self._pending.get(ack.id)
        else:
            # refusals of messages the agent could not read carry no id; they can only be
            # matched when exactly one request to that agent is waiting
            waiting = [
                p
                for p in self._pending.values()
                if p.agent == sender and p.future is not None and not p.future.done()
            ]
            pending = waiting[0] if len(waiting) == 1 and isinstance(ack, ErrorAck) else None
        if pending is None or pending.agent != sender:
            return
        future = pending.future
        if future is not None and not future.done():
            future.set_result(ack)

    def fail(self, make: Callable[[str], ContextError], *, agent: str | None = None) -> None:
        """Fail the requests waiting on ``agent`` (every request when None)."""
        fail_all(
            (
                (p.request_id, p.future)
                for p in self._pending.values()
                if agent is None or p.agent == agent
            ),
            make,
        )


Terminal = SpeechFinishedEvent | SpeechFailedEvent
"""A speech's one end: it played (``speech_finished``), or it did not (v1.3 ``speech_failed``)."""


class PlayoutWaiters:
    """Callers waiting for a speech's end, and the recent ends nobody waited for yet."""

    def __init__(self) -> None:
        # request id -> the agent it was sent to: only that agent's events are accepted for it
        self._sent_to: ExpiringCache[str] = ExpiringCache(
            ttl_s=EVENT_MEMORY_S, max_entries=EVENT_MEMORY_MAX
        )
        # request id -> the speech id its ack named: to ask the agent about it
        self._speech_ids: ExpiringCache[str] = ExpiringCache(
            ttl_s=EVENT_MEMORY_S, max_entries=EVENT_MEMORY_MAX
        )
        # the end may arrive before anyone waits for it (RPC acks and data events travel
        # separately), so recent ones are kept
        self._finished: ExpiringCache[Terminal] = ExpiringCache(
            ttl_s=EVENT_MEMORY_S, max_entries=EVENT_MEMORY_MAX
        )
        self._waiters: dict[str, list[asyncio.Future[Terminal]]] = {}

    def sent(self, request_id: str, agent: str) -> None:
        """Record that ``request_id`` went to ``agent``."""
        self._sent_to.put(request_id, agent)

    def accepted(self, ack: SuccessAck) -> None:
        """Record the speech an ack names, for a wait that runs out to ask about."""
        if ack.id is not None and ack.data.speech_id is not None:
            self._speech_ids.put(ack.id, ack.data.speech_id)

    def speech_id(self, request_id: str) -> str | None:
        return self._speech_ids.get(request_id)

    def agent(self, request_id: str) -> str | None:
        return self._sent_to.get(request_id)

    async def wait(self, request_id: str, timeout: float) -> Terminal:
        """The end of ``request_id``; raises ``asyncio.TimeoutError`` after ``timeout``."""
        cached = self._finished.get(request_id)
        if cached is not None:
            return cached
        future: asyncio.Future[Terminal] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(request_id, [])
        waiters.append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(request_id, None)

    def on_finished(self, event: Terminal, sender: str) -> None:
        if event.id is None or self._sent_to.get(event.id) != sender:
            return
        self._finished.put(event.id, event)
        for future in self._waiters.get(event.id, []):
            if not future.done():
                future.set_result(event)

    def fail(self, make: Callable[[str], ContextError], *, agent: str | None = None) -> None:
        """Fail the waits on speeches sent to ``agent`` (every wait when None)."""
        fail_all(
            (
                (request_id, future)
                for request_id, futures in self._waiters.items()
                if agent is None or self._sent_to.get(request_id) == agent
                for future in futures
            ),
            make,
        )


def gone(agent: str, what: str, *, retryable: bool) -> Callable[[str], ContextError]:
    """The error for requests whose agent left the room before ``what``."""
    return lambda request_id: ContextError(
        ErrorCode.AGENT_NOT_FOUND,
        f"Agent '{agent}' left the room before {what}.",
        request_id=request_id,
        retryable=retryable,
    )


def unavailable(message: str) -> Callable[[str | None], ContextError]:
    """The error for everything waiting when the room went away or the client closed."""
    return lambda request_id: ContextError(
        ErrorCode.LIVEKIT_UNAVAILABLE, message, request_id=request_id, retryable=False
    )


closed_error: Callable[[str | None], ContextError] = unavailable(CLOSED_MESSAGE)
"""The error of a call the client's closing cut short (``request_id``: the call's, if any)."""
