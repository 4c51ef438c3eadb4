"""``GET /v1/agent/{agent_code}/events?room_id=...``: a room's live events as Server-Sent Events.

The gateway subscribes on the caller's behalf (protocol ``subscribe``) over its pooled room
connection, once per agent in the room whatever the number of streams open on it (to every
event, interims and tool arguments included), and gives each stream what its query asked for.
Agents with different codes in one room each have their own feed. The agent must
grant the gateway's identity the ``subscribe`` permission. A stream gets ``event: <type>`` /
``data: <the event JSON>`` for each event, a ``: heartbeat`` comment while nothing happens, and
ends after ``call_ended``, when the agent leaves the room, when the gateway's connection to
the room ends for good (the room was deleted: no ``call_ended`` comes then), or when the client
goes; the last stream of an agent unsubscribes from it. Each stream's queue is bounded: a
client that reads too slowly loses its oldest events and the next one says how many
(``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from aiohttp import web
from livekit import rtc

from .._livekit.rpc import call_agent
from ..errors import ContextError
from ..log import logger
from ..protocol import (
    ACK_TOPIC,
    SESSION_EVENT_TYPES,
    ErrorAck,
    ErrorCode,
    load_untrusted_json,
    parse_ack,
)
from .backend import AgentTarget
from .fanout import FanOut
from .gatekeeper import Gatekeeper
from .messages import MessageWriter, Outgoing
from .refusals import STATUS_FOR, Refusal, invalid

HEARTBEAT_S: Final = 15.0
"""Seconds between heartbeat comments on a quiet stream."""
STREAM_QUEUE_SIZE: Final = 256
"""Most events waiting for one HTTP client; beyond it its oldest are dropped (and counted)."""
UNSUBSCRIBE_TIMEOUT_S: Final = 2.0


@runtime_checkable
class RoomHolder(Protocol):
    """What the events route needs of the backend: a held room connection."""

    async def hold_room(self, room_name: str) -> tuple[rtc.Room, Callable[[], None]]: ...


@dataclass(eq=False)
class _Stream:
    events: frozenset[str]
    interim: bool
    tool_arguments: bool
    queue: deque[dict[str, Any] | None] = field(default_factory=deque)
    dropped: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, event: dict[str, Any] | None) -> None:
        """Queue ``event`` if this stream wants it (None: the feed ended)."""
        if event is not None:
            kind = event.get("type")
            if kind not in self.events:
                return
            if kind == "user_transcript" and not event.get("final") and not self.interim:
                return
            if kind == "tool_call" and not self.tool_arguments and "arguments" in event:
                event = {k: v for k, v in event.items() if k != "arguments"}
        if len(self.queue) >= STREAM_QUEUE_SIZE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)
        self.ready.set()

    async def next(self, timeout: float) -> dict[str, Any] | bool | None:
        """The next event, None when the feed ended, False after ``timeout`` with nothing."""
        if not self.queue:
            self.ready.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout)
            if not self.queue:
                return False
        event = self.queue.popleft()
        if event is not None and self.dropped:
            event = {**event, "dropped": event.get("dropped", 0) + self.dropped}
            self.dropped = 0
        return event


@dataclass(eq=False)
class _RoomFeed:
    room: rtc.Room
    release: Callable[[], None]
    target: AgentTarget
    agent_code: str
    streams: set[_Stream] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.room.on("data_received", self._on_data)
        self.room.on("participant_disconnected", self._on_left)
        self.room.on("disconnected", self._on_room_gone)

    def unhook(self) -> None:
        self.room.off("data_received", self._on_data)
        self.room.off("participant_disconnected", self._on_left)
        self.room.off("disconnected", self._on_room_gone)

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if (
            packet.topic != ACK_TOPIC
            or packet.participant is None
            or packet.participant.identity != self.target.identity
        ):
            return
        try:
            event = load_untrusted_json(packet.data)
        except ValueError:  # a room callback must never raise
            return
        if isinstance(event, dict) and event.get("type") in SESSION_EVENT_TYPES:
            for stream in self.streams:
                stream.offer(event)

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self.target.identity:
            self._end_streams()

    def _on_room_gone(self, _reason: object) -> None:
        # "disconnected" is final (a lost connection emits "reconnecting" first): a deleted
        # room ends its streams here, since the agent's own departure is never seen
        self._end_streams()

    def _end_streams(self) -> None:
        for stream in self.streams:
            stream.offer(None)


_FeedKey = tuple[str, str]
"""(room, agent identity): one feed per agent, however many agents share the room."""


class EventFeeds:
    """One subscription per agent (room and identity), shared by every stream open on it.

    Args:
        backend: Holds the pooled room connections.
        writer: Writes (and signs) the subscribe / unsubscribe messages.
        timeout: Seconds the agent has to answer them.
    """

    def __init__(self, backend: RoomHolder, *, writer: MessageWriter, timeout: float) -> None:
        self._backend = backend
        self._writer = writer
        self._timeout = timeout
        self._feeds: dict[_FeedKey, _RoomFeed] = {}
        self._lock = asyncio.Lock()

    async def open(self, target: AgentTarget, agent_code: str, stream: _Stream) -> None:
        """Add ``stream`` to the agent's feed, subscribing first if it is the agent's first.

        Raises:
            Refusal: The agent refused the subscription or could not be reached.
        """
        key = (target.room, target.identity)
        async with self._lock:
            feed = self._feeds.get(key)
            if feed is None:
                room, release = await self._backend.hold_room(target.room)
                feed = _RoomFeed(room, release, target, agent_code)
                try:
                    await self._send(
                        feed,
                        {
                            "type": "subscribe",
                            "events": list(SESSION_EVENT_TYPES),
                            "interim": True,
                            "tool_arguments": True,
                        },
                    )
                except BaseException:
                    feed.unhook()
                    release()
                    raise
                self._feeds[key] = feed
            feed.streams.add(stream)

    async def close(self, target: AgentTarget, stream: _Stream) -> None:
        """Remove ``stream``; the agent's last one unsubscribes and lets the connection go."""
        key = (target.room, target.identity)
        async with self._lock:
            feed = self._feeds.get(key)
            if feed is None or stream not in feed.streams:
                return
            feed.streams.discard(stream)
            if feed.streams:
                return
            del self._feeds[key]
            feed.unhook()
        try:
            with contextlib.suppress(Refusal, asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._send(feed, {"type": "unsubscribe"}), UNSUBSCRIBE_TIMEOUT_S
                )
        finally:
            feed.release()

    async def _send(self, feed: _RoomFeed, fields: dict[str, Any]) -> None:
        outgoing = Outgoing(endpoint="events", fields=fields)
        payload = self._writer.write(outgoing, uuid.uuid4().hex, feed.agent_code, feed.target.room)
        try:
            answer = await call_agent(
                feed.room.local_participant, feed.target.identity, payload, timeout=self._timeout
            )
        except ContextError as exc:
            raise Refusal(STATUS_FOR.get(exc.code, 502), exc.code.value, exc.message) from None
        try:
            ack = parse_ack(answer)
        except ValueError:  # pydantic's ValidationError is one
            raise Refusal(
                502, ErrorCode.INTERNAL_ERROR.value, "The agent's answer could not be read."
            ) from None
        if isinstance(ack, ErrorAck):
            raise Refusal(STATUS_FOR.get(ack.error, 502), ack.error.value, ack.message)


class EventsRoute:
    """The SSE endpoint: admit, find the room's agent, subscribe, stream, unsubscribe."""

    def __init__(self, *, gatekeeper: Gatekeeper, fanout: FanOut, feeds: EventFeeds) -> None:
        self._gatekeeper = gatekeeper
        self._fanout = fanout
        self._feeds = feeds

    async def handle(self, request: web.Request) -> web.StreamResponse:
        agent_code = request.match_info["agent_code"]
        await self._gatekeeper.admit(request, agent_code)
        stream, room_id = _read_query(request)
        targets = await self._fanout.targets(agent_code, room_id)
        target = targets[0]
        if target.refusal is not None:
            raise Refusal(404, ErrorCode.AGENT_NOT_FOUND.value, target.refusal)
        await self._feeds.open(target, agent_code, stream)
        try:
            return await _stream(request, stream)
        finally:
            await self._feeds.close(target, stream)


def _read_query(request: web.Request) -> tuple[_Stream, str]:
    query = request.query
    room_id = query.get("room_id", "")
    if not room_id:
        raise invalid("Query parameter 'room_id' is required: the room whose events to stream.")
    names = [n for n in query.get("events", "").split(",") if n]
    unknown = [n for n in names if n not in SESSION_EVENT_TYPES]
    if unknown:
        raise invalid(
            f"Query parameter 'events' names unknown events; use: {', '.join(SESSION_EVENT_TYPES)}."
        )
    flags = {}
    for name in ("interim", "tool_arguments"):
        value = query.get(name, "false")
        if value not in ("true", "false"):
            raise invalid(f"Query parameter '{name}' must be true or false.")
        flags[name] = value == "true"
    events = frozenset(names or SESSION_EVENT_TYPES) | {"call_ended"}
    return _Stream(events, flags["interim"], flags["tool_arguments"]), room_id


async def _stream(request: web.Request, stream: _Stream) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        while True:
            event = await stream.next(HEARTBEAT_S)
            if event is False:
                await response.write(b": heartbeat\n\n")
                continue
            if event is None or not isinstance(event, dict):  # the agent left the room
                break
            data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
            if event["type"] == "call_ended":
                break
    except (ConnectionResetError, asyncio.CancelledError):
        logger.debug("events stream closed by the client")
        raise
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
