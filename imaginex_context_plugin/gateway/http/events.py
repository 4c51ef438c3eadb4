"""``GET /v1/agent/{agent_code}/events?room_id=...``: a room's live events as Server-Sent Events.

The gateway subscribes on the caller's behalf (protocol ``subscribe``) over its pooled room
connection, once per agent in the room whatever the number of streams open on it (to every
event, interims and tool arguments included), and gives each stream what its query asked for.
Agents with different codes in one room each have their own feed. The agent must
grant the gateway's identity the ``subscribe`` permission. A stream gets ``event: <type>`` /
``data: <the event JSON>`` for each event, a ``: heartbeat`` comment while nothing happens, and
ends after ``call_ended``, when the agent leaves the room, when the gateway's connection to
the room ends for good (the room was deleted: no ``call_ended`` comes then), or when the client
goes; the last stream of an agent unsubscribes from it.

v1.3, resumable: each event goes with ``id: <seq>``, and a stream opened with
``Last-Event-ID: <seq>`` (a browser's ``EventSource`` sends it by itself when it reconnects; a
``last_event_id`` query parameter does the same for clients that cannot set headers) gets what
it missed first, then the live events, with no gap and nothing twice. The feed keeps its
agent's recent events (``FEED_BUFFER_SIZE``) in one buffer every stream reads from at its own
place; a stream resuming from further back than the feed holds (on another replica, or after
the feed was closed) gets the agent to replay them (``subscribe{since_seq}``, marked
``replay``), or ``events_lost`` and a fresh ``snapshot`` when the agent no longer holds them
either. A client that reads too slowly loses its oldest events once the buffer moves past
them, and the next one says how many (``dropped``).

With ``playout=true`` a stream also gets the playout events (``speech_started``,
``speech_finished``, and from a v1.3 agent ``speech_failed``) of the speeches sent through the
gateway's room connection (room delivery): the agent sends them to the sender of each speak,
which is the gateway. The console shows them under the speak that caused them. (From a v1.3
agent the feed is subscribed to the ``speech`` kind, so these are the playout events of every
speech of the call, each with its request ``id``, as ``events=speech`` gives them too.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web

from ...errors import ErrorCode, did_you_mean
from ...log import logger
from ...protocol import SESSION_EVENT_TYPES, echo
from ..refusals import Refusal, invalid
from .event_feeds import HEARTBEAT_S, AgentFeed, EventFeeds, Stream
from .fanout import FanOut
from .gatekeeper import Admission

__all__ = ["EventFeeds", "EventsRoute"]


class EventsRoute:
    """The SSE endpoint: admit, find the room's agent, subscribe, stream, unsubscribe."""

    def __init__(self, *, gatekeeper: Admission, fanout: FanOut, feeds: EventFeeds) -> None:
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
            return await _stream(request, feed, stream)
        finally:
            await self._feeds.close(feed, stream)


def _read_query(request: web.Request) -> tuple[Stream, str]:
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
    for name in ("interim", "tool_arguments", "playout"):
        value = query.get(name, "false")
        if value not in ("true", "false"):
            raise invalid(f"Query parameter '{name}' must be true or false.")
        flags[name] = value == "true"
    events = frozenset(names or SESSION_EVENT_TYPES) | {"call_ended"}
    stream = Stream(
        events,
        flags["interim"],
        flags["tool_arguments"],
        flags["playout"],
        resume=_resume(request),
    )
    return stream, room_id


def _resume(request: web.Request) -> int | None:
    """The seq a reconnecting client saw last: ``Last-Event-ID`` (what ``EventSource`` sends),
    else the ``last_event_id`` query parameter (for a client that cannot set headers). Each
    is checked whenever it is given, whichever is used: a bad value is never passed over."""
    from_query = _seq(request.query.get("last_event_id"), "Query parameter 'last_event_id'")
    from_header = _seq(request.headers.get("Last-Event-ID"), "The Last-Event-ID header")
    return from_header if from_header is not None else from_query


def _seq(raw: str | None, where: str) -> int | None:
    if raw is None or raw == "":
        return None  # an empty Last-Event-ID is the EventSource's "none yet"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise invalid(f"{where} must be the id of an event this stream sent: a whole number.")
    return int(raw)


async def _stream(
    request: web.Request, feed: AgentFeed, stream: Stream
) -> web.StreamResponse:
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
            event = await stream.next(feed, HEARTBEAT_S)
            if event is False:
                await response.write(b": heartbeat\n\n")
                continue
            if event is None or not isinstance(event, dict):  # the agent left the room
                break
            data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            seq = event.get("seq")
            # the id a reconnecting EventSource sends back as Last-Event-ID
            ident = f"id: {seq}\n" if isinstance(seq, int) and not isinstance(seq, bool) else ""
            await response.write(f"{ident}event: {event['type']}\ndata: {data}\n\n".encode())
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
