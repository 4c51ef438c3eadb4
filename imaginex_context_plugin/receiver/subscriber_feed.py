"""One subscriber's side of the session events: what it asked for, its bounded queue and the
task that sends it its events, each encoded once for every subscriber that wants it and cut to
fit one packet. :class:`~.subscribers.Subscribers` decides who gets what; this sends it."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final

from .. import protocol
from ..log import logger
from ..protocol import (
    Event,
    SubscribeRequest,
    ToolCallEvent,
    UserTranscriptEvent,
    event_kind,
    oversize,
)
from .outbox import AckTransport
from .stats import PluginStats

SUBSCRIBER_QUEUE_SIZE: Final = 256
"""Most events waiting for one subscriber; beyond it its oldest are dropped (and counted)."""


@dataclass(eq=False, slots=True)
class Outgoing:
    """One event for every subscriber that wants it, encoded at most once."""

    event: Event
    payload: bytes | None = None

    def encoded(self, dropped: int) -> bytes:
        if dropped:  # the subscriber's own copy, saying what it lost
            return _fit(self.event.model_copy(update={"dropped": dropped}))
        if self.payload is None:
            self.payload = _fit(self.event)
        return self.payload


class Subscription:
    """One subscriber: what it asked for, its bounded queue and its sending task."""

    def __init__(self, identity: str, request: SubscribeRequest, stats: PluginStats) -> None:
        self.identity = identity
        self.events: frozenset[str] = frozenset()
        self.interim = self.tool_arguments = False
        self.update(request)
        self._stats = stats
        self._queue: deque[Outgoing] = deque()
        self._dropped = 0
        self._ready = asyncio.Event()
        self._last_queued = False
        self.task: asyncio.Task[None] | None = None

    def update(self, request: SubscribeRequest) -> None:
        self.events = frozenset(request.events) | {"call_ended"}
        self.interim = request.interim
        self.tool_arguments = request.tool_arguments

    def view(self, event: Event) -> Event | None:
        """``event`` as this subscriber gets it (a tool call without its arguments unless it
        asked for them), or None when it does not want it."""
        if event_kind(event.type) not in self.events:
            return None
        if isinstance(event, UserTranscriptEvent) and not event.final and not self.interim:
            return None
        if isinstance(event, ToolCallEvent) and not self.tool_arguments and event.arguments:
            return event.model_copy(update={"arguments": None})
        return event

    def clear(self) -> None:
        """Forget what is queued (a replay is about to send it again, in order)."""
        self._queue.clear()
        self._dropped = 0

    def offer(self, item: Outgoing, *, last: bool = False) -> bool:
        """Queue ``item``; a full queue loses its oldest event. Nothing after the last one
        (then False)."""
        if self._last_queued:
            return False
        if len(self._queue) >= SUBSCRIBER_QUEUE_SIZE:
            self._queue.popleft()
            self._dropped += 1
            self._stats.events_dropped += 1
        self._queue.append(item)
        self._last_queued = last
        self._ready.set()
        return True

    def end(self) -> None:
        """Stop after what is queued now (unsubscribed or gone: no ``call_ended``)."""
        self._last_queued = True
        self._ready.set()

    async def run(self, transport: AckTransport) -> None:
        """Send queued events one by one, until the last one is sent."""
        queue = self._queue
        while True:
            if not queue:
                if self._last_queued:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            item = queue.popleft()
            dropped, self._dropped = self._dropped, 0
            try:
                await transport.send(item.encoded(dropped), self.identity)
                self._stats.events_sent += 1
            except Exception:
                self._stats.ack_failures += 1
                logger.warning(
                    "could not send a session event",
                    exc_info=True,
                    extra={"sender": self.identity, "event": item.event.type},
                )


_CUTTABLE: Final = (("text", "text_truncated"), ("arguments", "arguments_truncated"))


def _fit(event: Event) -> bytes:
    """The event's JSON, its text cut (and marked) until it fits one packet."""
    payload = protocol.encode_message(event)
    if oversize(payload) is None:
        return payload
    for name, flag in _CUTTABLE:
        text = getattr(event, name, None)
        if not isinstance(text, str):
            continue
        keep = len(text)
        while keep:
            keep //= 2
            cut = event.model_copy(update={name: text[:keep], flag: True})
            payload = protocol.encode_message(cut)
            if oversize(payload) is None:
                return payload
    return payload  # unreachable for our events: nothing else in them is long
