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
from typing import Any, Final

from aiohttp import web
from livekit import rtc

from ..._livekit.rpc import call_agent
from ...errors import ErrorCode, did_you_mean
from ...log import logger
from ...protocol import (
    ACK_TOPIC,
    SESSION_EVENT_TYPES,
    ErrorAck,
    echo,
    load_untrusted_json,
    parse_ack,
)
from ...request_errors import ContextError
from ..delivery.agent_backend import AgentTarget, RoomHolder
from ..refusals import STATUS_FOR, Refusal, invalid
from .fanout import FanOut
from .gatekeeper import Gatekeeper
from .messages import MessageWriter, Outgoing

HEARTBEAT_S: Final = 15.0
"""Seconds between heartbeat comments on a quiet stream."""
STREAM_QUEUE_SIZE: Final = 256
"""Most events waiting for one HTTP client; beyond it its oldest are dropped (and counted)."""
UNSUBSCRIBE_TIMEOUT_S: Final = 2.0


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
class _AgentFeed:
    """One agent's subscription, shared by every stream open on it.

    Made (and put in the table) at once; ``opening`` holds the room, hooks its events and
    subscribes, and every stream that came meanwhile waits for it.
    """

    target: AgentTarget
    agent_code: str
    streams: set[_Stream] = field(default_factory=set)
    room: rtc.Room | None = None
    release: Callable[[], None] | None = None
    opening: asyncio.Task[None] | None = None
    subscribed: bool = False
    ended: bool = False
    """The agent left or the room went: its streams were told, and a new stream needs a new
    feed (and the agent no longer holds this subscription: nothing to unsubscribe)."""

    @property
    def key(self) -> _FeedKey:
        return (self.target.room, self.target.identity)

    def hook(self, room: rtc.Room, release: Callable[[], None]) -> None:
        self.room, self.release = room, release
        room.on("data_received", self._on_data)
        room.on("participant_disconnected", self._on_left)
        room.on("disconnected", self._on_room_gone)

    def unhook(self) -> None:
        if self.room is not None:
            self.room.off("data_received", self._on_data)
            self.room.off("participant_disconnected", self._on_left)
            self.room.off("disconnected", self._on_room_gone)

    def let_go(self) -> None:
        """Unhook and release the room connection (once)."""
        self.unhook()
        release, self.release = self.release, None
        if release is not None:
            release()

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
        self.ended = True
        for stream in self.streams:
            stream.offer(None)


_FeedKey = tuple[str, str]
"""(room, agent identity): one feed per agent, however many agents share the room."""


class EventFeeds:
    """One subscription per agent (room and identity), shared by every stream open on it.

    No lock spans joining a room and subscribing: each agent's feed opens on its own, so an
    agent that never answers delays only the streams waiting for that agent. What stays
    ordered is per agent: a feed opening for an agent whose last feed is still unsubscribing
    waits for that to finish, so the agent never takes the new subscribe before the old
    unsubscribe.

    Args:
        backend: Holds the pooled room connections.
        writer: Writes (and signs) the subscribe / unsubscribe messages.
        timeout: Seconds the agent has to answer them.
    """

    def __init__(self, backend: RoomHolder, *, writer: MessageWriter, timeout: float) -> None:
        self._backend = backend
        self._writer = writer
        self._timeout = timeout
        self._feeds: dict[_FeedKey, _AgentFeed] = {}
        self._leaving: dict[_FeedKey, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def feeds(self) -> int:
        """Agent feeds open or opening."""
        return len(self._feeds)

    async def open(self, target: AgentTarget, agent_code: str, stream: _Stream) -> _AgentFeed:
        """Add ``stream`` to the agent's feed, subscribing first if it is the agent's first.

        Returns:
            The feed, for :meth:`close`.

        Raises:
            Refusal: The agent refused the subscription or could not be reached.
        """
        key = (target.room, target.identity)
        feed = self._feeds.get(key)
        if feed is None or feed.ended:
            feed = _AgentFeed(target, agent_code)
            self._feeds[key] = feed
            feed.opening = asyncio.get_running_loop().create_task(
                self._open(feed), name="imaginex_gateway.events_subscribe"
            )
            self._hold(feed.opening)
        assert feed.opening is not None
        feed.streams.add(stream)
        try:
            # shielded: one client giving up does not cancel the subscription others wait for
            await asyncio.shield(feed.opening)
        except BaseException:
            feed.streams.discard(stream)
            if feed.subscribed:
                await self._retire_if_unused(feed)
            raise
        return feed

    async def close(self, feed: _AgentFeed, stream: _Stream) -> None:
        """Remove ``stream``; the agent's last one unsubscribes and lets the connection go."""
        feed.streams.discard(stream)
        await self._retire_if_unused(feed)

    async def aclose(self, app: object = None) -> None:
        """Stop what is still opening (an ``on_cleanup`` hook)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _hold(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, feed: _AgentFeed) -> None:
        key = feed.key
        try:
            while (leaving := self._leaving.get(key)) is not None:
                await leaving.wait()
            room, release = await self._backend.hold_room(feed.target.room)
            feed.hook(room, release)
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
            if self._feeds.get(key) is feed:
                del self._feeds[key]
            feed.let_go()
            raise
        feed.subscribed = True
        if not feed.streams:  # every client left while it was subscribing
            self._hold(
                asyncio.get_running_loop().create_task(
                    self._retire_if_unused(feed), name="imaginex_gateway.events_unsubscribe"
                )
            )

    async def _retire_if_unused(self, feed: _AgentFeed) -> None:
        """Unsubscribe and release once the feed's last stream is gone (the caller's task
        waits for it, within :data:`UNSUBSCRIBE_TIMEOUT_S`)."""
        if feed.streams or not feed.subscribed:
            return
        feed.subscribed = False
        key = feed.key
        if self._feeds.get(key) is feed:
            del self._feeds[key]
        feed.unhook()
        if feed.ended:  # the agent or the room went, and the subscription with it
            feed.let_go()
            return
        leaving = self._leaving[key] = asyncio.Event()
        try:
            with contextlib.suppress(Refusal, asyncio.TimeoutError):
                await asyncio.wait_for(
                    self._send(feed, {"type": "unsubscribe"}), UNSUBSCRIBE_TIMEOUT_S
                )
        finally:
            feed.let_go()
            del self._leaving[key]
            leaving.set()

    async def _send(self, feed: _AgentFeed, fields: dict[str, Any]) -> None:
        assert feed.room is not None
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
        feed = await self._feeds.open(target, agent_code, stream)
        try:
            return await _stream(request, stream)
        finally:
            await self._feeds.close(feed, stream)


def _read_query(request: web.Request) -> tuple[_Stream, str]:
    query = request.query
    room_id = query.get("room_id", "")
    if not room_id:
        raise invalid("Query parameter 'room_id' is required: the room whose events to stream.")
    names = [n for n in query.get("events", "").split(",") if n]
    unknown = [n for n in names if n not in SESSION_EVENT_TYPES]
    if unknown:
        hint = did_you_mean(unknown[0], SESSION_EVENT_TYPES)
        raise invalid(
            f"Query parameter 'events' names '{echo(unknown[0])}', which is not an event{hint}; "
            f"use: {', '.join(SESSION_EVENT_TYPES)}."
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
    except ConnectionResetError:
        # the client hung up: the production server lets the handler run on until a write
        # finds the connection gone. An ordinary end of a stream, answered as it began
        logger.debug("events stream closed by the client")
        return response
    except asyncio.CancelledError:  # a server that cancels handlers when the client leaves
        logger.debug("events stream closed by the client")
        raise
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
