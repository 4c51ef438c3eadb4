"""The gateway's event feeds: one subscription per agent in a room, shared by every SSE stream
open on it (``events.py`` serves the streams).

The gateway subscribes on the callers' behalf (protocol ``subscribe``) over its pooled room
connection, once per agent in the room whatever the number of streams open on it (to every
event, interims and tool arguments included), and each stream takes what its query asked for.
Agents with different codes in one room each have their own feed; the last stream of an agent
unsubscribes from it.

v1.3, resumable: the feed keeps its agent's recent events (``FEED_BUFFER_SIZE``) in one buffer
every stream reads from at its own place; a stream resuming from further back than the feed
holds (on another replica, or after the feed was closed) gets the agent to replay them
(``subscribe{since_seq}``, marked ``replay``), or ``events_lost`` and a fresh ``snapshot`` when
the agent no longer holds them either. A client that reads too slowly loses its oldest events
once the buffer moves past them, and the next one says how many (``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from livekit import rtc

from ..._livekit.rpc import call_agent
from ...errors import ErrorCode
from ...log import logger
from ...protocol import (
    ACK_TOPIC,
    SESSION_EVENT_TYPES,
    ErrorAck,
    SuccessAck,
    event_kind,
    load_untrusted_json,
    parse_ack,
)
from ...request_errors import ContextError
from ..delivery.agent_backend import AgentTarget, RoomHolder
from ..refusals import STATUS_FOR, Refusal
from .messages import MessageWriter, Outgoing

HEARTBEAT_S: Final = 15.0
"""Seconds between heartbeat comments on a quiet stream."""
FEED_BUFFER_SIZE: Final = 1_024
"""Most events a feed keeps for its streams (the slowest reads at its own place in it, a
resuming one starts back in it); beyond it the oldest go."""
UNSUBSCRIBE_TIMEOUT_S: Final = 2.0
REPLAY_TIMEOUT_S: Final = 10.0
"""Seconds a resuming stream waits for the agent's replay before it goes on without it."""
V1_1_EVENTS: Final = (
    "user_transcript", "agent_transcript", "agent_state", "user_state", "conversation_item",
    "tool_call", "call_ended",
)
"""What an agent older than v1.3 can be subscribed to (it refuses the kinds it does not know)."""
_PRIVATE: Final = frozenset({"events_lost", "snapshot"})
"""Replayed for one resuming stream only, never into the shared buffer."""


@dataclass(eq=False, slots=True)
class _Entry:
    n: int  # the feed's own running number: a stream's place in the buffer
    seq: int | None  # the agent's (absent from an older agent)
    event: dict[str, Any]
PLAYOUT_EVENT_TYPES: Final[tuple[str, ...]] = ("speech_started", "speech_finished", "speech_failed")
"""The events the agent sends a speak's sender about its playout (``playout=true``)."""


@dataclass(eq=False)
class Stream:
    events: frozenset[str]
    interim: bool
    tool_arguments: bool
    playout: bool = False
    """Also the playout events of the speeches (``playout=true``), whatever ``events`` says."""
    resume: int | None = None
    """The seq it resumes after (``Last-Event-ID``), or None for live events only."""
    cursor: int = 0
    """The feed running number of the next entry it reads."""
    private: deque[dict[str, Any]] = field(default_factory=deque)
    """Events for this stream alone (a replay from before the feed's buffer), read first."""
    dropped: int = 0
    ended: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """``event`` as this stream shows it, or None if it did not ask for it."""
        kind = event.get("type")
        if (
            kind not in _PRIVATE
            and event_kind(str(kind)) not in self.events
            and not (self.playout and kind in PLAYOUT_EVENT_TYPES)
        ):
            return None
        if kind == "user_transcript" and not event.get("final") and not self.interim:
            return None
        if kind == "tool_call" and not self.tool_arguments and "arguments" in event:
            event = {k: v for k, v in event.items() if k != "arguments"}
        return event

    def wake(self) -> None:
        self.ready.set()

    async def next(self, feed: AgentFeed, timeout: float) -> dict[str, Any] | bool | None:
        """The next event, None when the feed ended, False after ``timeout`` with nothing."""
        while True:
            event = self._take(feed)
            if event is not None:
                return event
            if self.ended:
                return None
            self.ready.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout)
            event = self._take(feed)
            if event is not None:
                return event
            if self.ended:
                return None
            if not self.ready.is_set():
                return False

    def _take(self, feed: AgentFeed) -> dict[str, Any] | None:
        while self.private:
            event = self.view(self.private.popleft())
            if event is not None:
                return self._counted(event)
        buffer = feed.buffer
        while buffer:
            first = buffer[0].n
            if self.cursor < first:  # the buffer moved past it: those are lost to it
                self.dropped += first - self.cursor
                self.cursor = first
            index = self.cursor - first
            if index >= len(buffer):
                return None
            entry = buffer[index]
            self.cursor += 1
            event = self.view(entry.event)
            if event is not None:
                return self._counted(event)
        return None

    def _counted(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.dropped:
            event = {**event, "dropped": event.get("dropped", 0) + self.dropped}
            self.dropped = 0
        return event


@dataclass(eq=False)
class _Replay:
    """A replay asked of the agent (``subscribe{since_seq}``) while it arrives."""

    since: int
    covered_from: int
    expected: int | None = None
    arrived: int = 0
    private: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.expected is not None and self.arrived >= self.expected:
            self.done.set()


@dataclass(eq=False)
class AgentFeed:
    """One agent's subscription and its recent events, shared by every stream open on it.

    Made (and put in the table) at once; ``opening`` holds the room, hooks its events and
    subscribes, and every stream that came meanwhile waits for it.
    """

    target: AgentTarget
    agent_code: str
    since: int | None = None
    """The seq the first stream resumes after: the subscribe asks the agent to replay it."""
    streams: set[Stream] = field(default_factory=set)
    room: rtc.Room | None = None
    release: Callable[[], None] | None = None
    opening: asyncio.Task[None] | None = None
    subscribed: bool = False
    ended: bool = False
    """The agent left or the room went: its streams were told, and a new stream needs a new
    feed (and the agent no longer holds this subscription: nothing to unsubscribe)."""
    buffer: deque[_Entry] = field(default_factory=deque)
    next_n: int = 0
    last_seq: int | None = None
    """The newest seq in the buffer (or the snapshot's, before any event)."""
    covered_from: int | None = None
    """Every event after this seq is (or was) in the buffer: a stream resuming after it or
    later needs nothing from the agent."""
    snapshot_seq: int | None = None
    """The subscribe ack's snapshot seq: a stream opened live starts after it."""
    replay: _Replay | None = None
    replaying: asyncio.Lock = field(default_factory=asyncio.Lock)
    opening_private: list[dict[str, Any]] | None = None
    """What the replay of the opening subscribe held for the stream that asked for it."""
    version_1_3: bool = True
    """False once an older agent refused the v1.3 subscription (no seq, no resume)."""

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

    def start_at(self, stream: Stream, after: int | None) -> None:
        """Place ``stream`` at the first entry after seq ``after`` (None: the end)."""
        if after is None:
            stream.cursor = self.next_n
            return
        cursor = self.next_n
        for entry in reversed(self.buffer):
            if entry.seq is not None and entry.seq <= after:
                break
            cursor = entry.n
        stream.cursor = cursor

    def covers(self, seq: int) -> bool:
        """Whether every event after ``seq`` is in the buffer (none is needed from the agent)."""
        return self.covered_from is not None and self.covered_from <= seq

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
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return
        if event["type"] == "ack":
            return
        self._take(event)

    def _take(self, event: dict[str, Any]) -> None:
        seq = event.get("seq")
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        replay = self.replay
        if event.get("replay") is True and replay is not None:
            replay.arrived += 1
            if event["type"] in _PRIVATE:
                replay.private.append(event)
                if event["type"] == "events_lost" and isinstance(event.get("to_seq"), int):
                    # the agent no longer had them: the feed's coverage starts after the gap
                    replay.covered_from = max(replay.covered_from, event["to_seq"])
            elif seq is not None and seq <= replay.covered_from:
                replay.private.append(event)  # older than the buffer: for the resumer alone
            elif seq is None or self.last_seq is None or seq > self.last_seq:
                self._append(seq, event)
            replay.check()
            return
        if event["type"] in _PRIVATE:
            return  # a resume's own events, the resume long over: nobody's
        if seq is not None and self.last_seq is not None and seq <= self.last_seq:
            return  # already in the buffer (a replay overlapping what arrived live)
        self._append(seq, event)

    def _append(self, seq: int | None, event: dict[str, Any]) -> None:
        self.buffer.append(_Entry(self.next_n, seq, event))
        self.next_n += 1
        if seq is not None:
            self.last_seq = seq
        if len(self.buffer) > FEED_BUFFER_SIZE:
            gone = self.buffer.popleft()
            if gone.seq is not None and self.covered_from is not None:
                self.covered_from = max(self.covered_from, gone.seq)
        for stream in self.streams:
            stream.wake()

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
            stream.ended = True
            stream.wake()


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
        self._feeds: dict[_FeedKey, AgentFeed] = {}
        self._leaving: dict[_FeedKey, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def feeds(self) -> int:
        """Agent feeds open or opening."""
        return len(self._feeds)

    async def open(self, target: AgentTarget, agent_code: str, stream: Stream) -> AgentFeed:
        """Add ``stream`` to the agent's feed, subscribing first if it is the agent's first.

        A stream that resumes (``stream.resume``) is placed after that seq in the feed's
        buffer, after what the agent replays from before it when the buffer does not reach
        back so far.

        Returns:
            The feed, for :meth:`close`.

        Raises:
            Refusal: The agent refused the subscription or could not be reached.
        """
        key = (target.room, target.identity)
        feed = self._feeds.get(key)
        if feed is None or feed.ended:
            feed = AgentFeed(target, agent_code, since=stream.resume)
            self._feeds[key] = feed
            feed.opening = asyncio.get_running_loop().create_task(
                self._open(feed), name="imaginex_gateway.events_subscribe"
            )
            self._hold(feed.opening)
        assert feed.opening is not None
        joined_opening = not feed.opening.done()
        feed.streams.add(stream)
        try:
            # shielded: one client giving up does not cancel the subscription others wait for
            await asyncio.shield(feed.opening)
            await self._place(feed, stream, joined_opening=joined_opening)
        except BaseException:
            feed.streams.discard(stream)
            if feed.subscribed:
                await self._retire_if_unused(feed)
            raise
        return feed

    async def _place(self, feed: AgentFeed, stream: Stream, *, joined_opening: bool) -> None:
        """Where ``stream`` starts reading: live, or after the seq it resumes from."""
        resume = stream.resume
        if resume is None or not feed.version_1_3:
            if not joined_opening:
                feed.start_at(stream, None)  # from now on
            elif feed.snapshot_seq is not None:
                feed.start_at(stream, feed.snapshot_seq)  # what followed the subscription
            else:  # an older agent: everything since the subscription
                stream.cursor = feed.buffer[0].n if feed.buffer else feed.next_n
            return
        if feed.since == resume and feed.opening_private is not None:
            # the feed was opened for this resume: its replay is in the buffer already
            stream.private.extend(feed.opening_private)
            feed.opening_private = None
            feed.start_at(stream, resume)
            return
        if not feed.covers(resume):
            # the buffer does not reach back that far: the agent replays it, for this stream
            async with feed.replaying:
                if not feed.covers(resume):
                    private, covered_from = await self._replay(feed, resume)
                    stream.private.extend(private)
                    feed.start_at(stream, covered_from)
                    return
        feed.start_at(stream, resume)

    async def close(self, feed: AgentFeed, stream: Stream) -> None:
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

    async def _open(self, feed: AgentFeed) -> None:
        key = feed.key
        try:
            while (leaving := self._leaving.get(key)) is not None:
                await leaving.wait()
            room, release = await self._backend.hold_room(feed.target.room)
            feed.hook(room, release)
            if feed.since is not None and feed.version_1_3:
                private, covered_from = await self._replay(feed, feed.since)
                feed.opening_private = private
                feed.covered_from = covered_from
            else:
                await self._subscribe(feed, None)
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

    async def _retire_if_unused(self, feed: AgentFeed) -> None:
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

    async def _subscribe(self, feed: AgentFeed, since: int | None) -> SuccessAck:
        """Subscribe the feed (again) to every event, from ``since`` when given."""
        fields: dict[str, Any] = {
            "type": "subscribe",
            "events": list(SESSION_EVENT_TYPES if feed.version_1_3 else V1_1_EVENTS),
            "interim": True,
            "tool_arguments": True,
        }
        if since is not None and feed.version_1_3:
            fields["since_seq"] = since
        try:
            ack = await self._send(feed, fields)
        except Refusal as refusal:
            if refusal.code != ErrorCode.VALIDATION_ERROR.value or not feed.version_1_3:
                raise
            # an agent older than v1.3 does not know the speech and context kinds
            feed.version_1_3 = False
            return await self._subscribe(feed, None)
        snapshot = ack.data.snapshot
        if snapshot is not None and feed.snapshot_seq is None:
            feed.snapshot_seq = snapshot.seq
            if since is None:  # live from the snapshot on: the buffer covers what follows it
                if feed.covered_from is None:
                    feed.covered_from = snapshot.seq
                if feed.last_seq is None or feed.last_seq < snapshot.seq:
                    feed.last_seq = snapshot.seq
        return ack

    async def _replay(self, feed: AgentFeed, since: int) -> tuple[list[dict[str, Any]], int]:
        """Have the agent replay what follows ``since`` (``subscribe{since_seq}``).

        The events newer than the feed's buffer join it; the older ones (and ``events_lost``
        with its ``snapshot``) are returned for the one stream that asked, with the seq after
        which the buffer then holds everything.
        """
        if feed.last_seq is None:
            feed.last_seq = since  # a new feed: everything after since is news to it
        covered_from = since if feed.covered_from is None else max(feed.covered_from, since)
        replay = feed.replay = _Replay(since, covered_from=covered_from)
        try:
            ack = await self._subscribe(feed, since)
            replay.expected = ack.data.replayed or 0
            replay.check()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(replay.done.wait(), REPLAY_TIMEOUT_S)
            if not replay.done.is_set():
                logger.info(
                    "an agent's replay did not arrive whole in time",
                    extra={"expected": replay.expected, "arrived": replay.arrived},
                )
        finally:
            feed.replay = None
        # events_lost and its snapshot first, then the rest in order
        private = sorted(
            replay.private, key=lambda e: (e.get("type") not in _PRIVATE, e.get("seq") or 0)
        )
        return private, replay.covered_from

    async def _send(self, feed: AgentFeed, fields: dict[str, Any]) -> SuccessAck:
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
        return ack
