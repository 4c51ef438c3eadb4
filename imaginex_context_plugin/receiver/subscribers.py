"""Live session events for subscribers (``subscribe`` / ``unsubscribe``, protocol v1.1).

A subscriber gets the session's events on the ack topic until it unsubscribes, leaves the
room, or the call ends (``call_ended`` is every subscriber's last event). Each subscriber has
its own bounded queue and its own sending task, so a slow or stalled subscriber only ever
delays itself: when its queue is full it loses its oldest events, and the next event it gets
says how many (``dropped``). The session's callbacks only build the event (once, for every
subscriber) and append it: they never wait.

Transcripts are personal data: who may subscribe is decided at admission (a sensitive type,
refused unless granted); their text is never logged above DEBUG.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from livekit import rtc
from livekit.agents import llm

from .. import protocol
from ..errors import ErrorCode
from ..log import logger
from ..protocol import (
    SESSION_EVENT_TYPES,
    SUBSCRIBE_SUCCESS_MESSAGE,
    UNSUBSCRIBE_SUCCESS_MESSAGE,
    AgentStateEvent,
    AgentTranscriptEvent,
    CallEndedEvent,
    ConversationItemEvent,
    SessionEvent,
    SubscribeRequest,
    ToolCallEvent,
    UnsubscribeRequest,
    UserStateEvent,
    UserTranscriptEvent,
    oversize,
    utc_timestamp,
)
from .answers import AckWriter
from .jobs import Answer, Job, Success
from .outbox import DRAIN_TIMEOUT_S, AckTransport
from .stats import PluginStats

if TYPE_CHECKING:
    from livekit.agents.voice import SpeechHandle
    from livekit.agents.voice.events import (
        AgentStateChangedEvent,
        CloseEvent,
        ConversationItemAddedEvent,
        FunctionToolsExecutedEvent,
        SpeechCreatedEvent,
        UserInputTranscribedEvent,
        UserStateChangedEvent,
    )

MAX_SUBSCRIBERS: Final = 32
"""Most subscribers at once; one more is refused with ``RATE_LIMITED``."""
SUBSCRIBER_QUEUE_SIZE: Final = 256
"""Most events waiting for one subscriber; beyond it its oldest are dropped (and counted)."""

_NO_SENDER: Final = (
    "Only a participant can subscribe: a packet sent through the server API has nobody to "
    "send events to."
)
_TOO_MANY: Final = "This agent has as many subscribers as it serves; retry later."
_CALL_ENDED: Final = "The call has ended."
_SHUTDOWN: Final = "shutdown"


@dataclass(eq=False, slots=True)
class _Outgoing:
    """One event for every subscriber that wants it, encoded at most once."""

    event: SessionEvent
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
        self._queue: deque[_Outgoing] = deque()
        self._dropped = 0
        self._ready = asyncio.Event()
        self._last_queued = False
        self.task: asyncio.Task[None] | None = None

    def update(self, request: SubscribeRequest) -> None:
        self.events = frozenset(request.events) | {"call_ended"}
        self.interim = request.interim
        self.tool_arguments = request.tool_arguments

    def offer(self, item: _Outgoing, *, last: bool = False) -> None:
        """Queue ``item``; a full queue loses its oldest event. Nothing after the last one."""
        if self._last_queued:
            return
        if len(self._queue) >= SUBSCRIBER_QUEUE_SIZE:
            self._queue.popleft()
            self._dropped += 1
            self._stats.events_dropped += 1
        self._queue.append(item)
        self._last_queued = last
        self._ready.set()

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


class Subscribers:
    """Every subscription of one plugin, and the session events they are fed.

    Args:
        writer: Writes the subscribe / unsubscribe acks.
        stats: Where sent and dropped events are counted.
    """

    def __init__(self, *, writer: AckWriter, stats: PluginStats) -> None:
        self._writer = writer
        self._stats = stats
        self._subs: dict[str, Subscription] = {}
        self._transport: AckTransport | None = None
        self._ended = False
        self._speeches: set[SpeechHandle] = set()

    def start(self, transport: AckTransport) -> None:
        self._transport = transport

    @property
    def identities(self) -> list[str]:
        """Who is subscribed now."""
        return list(self._subs)

    # ------------------------------------------------------------------------------------------
    # requests (from the applier, in arrival order)

    def apply(self, job: Job) -> Answer:
        request = job.request
        if isinstance(request, UnsubscribeRequest):
            removed = job.sender is not None and self._remove(job.sender)
            return self._ack(request, UNSUBSCRIBE_SUCCESS_MESSAGE, removed=removed)
        assert isinstance(request, SubscribeRequest)
        if job.sender is None:
            return protocol.error_ack(ErrorCode.VALIDATION_ERROR, _NO_SENDER, request.id)
        if self._ended or self._transport is None:
            return protocol.error_ack(ErrorCode.NOT_READY, _CALL_ENDED, request.id)
        sub = self._subs.get(job.sender)
        if sub is not None:
            sub.update(request)
        elif len(self._subs) >= MAX_SUBSCRIBERS:
            return protocol.error_ack(
                ErrorCode.RATE_LIMITED, _TOO_MANY, request.id, retry_after=5.0
            )
        else:
            sub = self._add(job.sender, request, self._transport)
        logger.info(
            "session events subscribed",
            extra={"sender": job.sender, "events": sorted(sub.events), "interim": sub.interim},
        )
        events = [e for e in SESSION_EVENT_TYPES if e in sub.events]
        return self._ack(request, SUBSCRIBE_SUCCESS_MESSAGE, events=events)

    def _ack(
        self, request: SubscribeRequest | UnsubscribeRequest, message: str, **data: Any
    ) -> Answer:
        return Success(
            protocol.encode_message(self._writer.success_model(request, message, **data))
        )

    def _add(
        self, identity: str, request: SubscribeRequest, transport: AckTransport
    ) -> Subscription:
        sub = Subscription(identity, request, self._stats)
        sub.task = asyncio.create_task(
            self._run(sub, transport), name="imaginex_context.subscriber"
        )
        self._subs[identity] = sub
        return sub

    async def _run(self, sub: Subscription, transport: AckTransport) -> None:
        try:
            await sub.run(transport)
        finally:
            if self._subs.get(sub.identity) is sub:
                del self._subs[sub.identity]

    def _remove(self, identity: str) -> bool:
        sub = self._subs.pop(identity, None)
        if sub is None:
            return False
        sub.end()
        logger.info("session events unsubscribed", extra={"sender": identity})
        return True

    # ------------------------------------------------------------------------------------------
    # room and session listeners (hooked by ContextPlugin)

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        sub = self._subs.pop(participant.identity, None)
        if sub is not None and sub.task is not None:
            sub.task.cancel()  # nobody to send to any more

    def on_user_input_transcribed(self, ev: UserInputTranscribedEvent) -> None:
        subs = self._wanting("user_transcript")
        if not subs:
            return
        if not ev.is_final:
            subs = [s for s in subs if s.interim]
        self._offer(
            subs,
            lambda: UserTranscriptEvent(
                text=ev.transcript,
                final=ev.is_final,
                language=str(ev.language) if ev.language else None,
                speaker_id=ev.speaker_id,
                timestamp=utc_timestamp(),
            ),
        )

    def on_agent_state_changed(self, ev: AgentStateChangedEvent) -> None:
        self._offer(
            self._wanting("agent_state"),
            lambda: AgentStateEvent(
                old_state=ev.old_state, new_state=ev.new_state, timestamp=utc_timestamp()
            ),
        )

    def on_user_state_changed(self, ev: UserStateChangedEvent) -> None:
        self._offer(
            self._wanting("user_state"),
            lambda: UserStateEvent(
                old_state=ev.old_state, new_state=ev.new_state, timestamp=utc_timestamp()
            ),
        )

    def on_conversation_item_added(self, ev: ConversationItemAddedEvent) -> None:
        subs = self._wanting("conversation_item")
        if subs:
            event = _conversation_item(ev.item)
            if event is not None:
                _send_to(subs, event)

    def on_function_tools_executed(self, ev: FunctionToolsExecutedEvent) -> None:
        subs = self._wanting("tool_call")
        if not subs:
            return
        for call, output in ev.zipped():
            full = ToolCallEvent(
                call_id=call.call_id,
                name=call.name,
                status="error" if output.is_error else "completed",
                arguments=call.arguments,
                timestamp=utc_timestamp(),
            )
            _send_to([s for s in subs if s.tool_arguments], full)
            _send_to(
                [s for s in subs if not s.tool_arguments],
                full.model_copy(update={"arguments": None}),
            )

    def on_speech_created(self, ev: SpeechCreatedEvent) -> None:
        if self._wanting("agent_transcript"):
            handle = ev.speech_handle
            self._speeches.add(handle)
            handle.add_done_callback(self._on_speech_done)

    def _on_speech_done(self, handle: SpeechHandle) -> None:
        self._speeches.discard(handle)
        texts = [
            item.text_content
            for item in handle.chat_items
            if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.text_content
        ]
        if not texts:  # nothing was said (or it was kept out of the history)
            return
        self._offer(
            self._wanting("agent_transcript"),
            lambda: AgentTranscriptEvent(
                speech_id=handle.id,
                text="\n".join(t for t in texts if t),
                interrupted=handle.interrupted,
                timestamp=utc_timestamp(),
            ),
        )

    def on_session_close(self, ev: CloseEvent) -> None:
        self.end_call(ev.reason.value)

    # ------------------------------------------------------------------------------------------

    def end_call(self, reason: str) -> asyncio.Future[Any] | None:
        """The call is over: ``call_ended`` to every subscriber, as its last event. Once.

        Returns:
            A future done once every subscriber has sent what it had queued (``call_ended``
            last), or None when there is nobody (or the call had already ended). Cancelling it
            stops nobody; ``aclose`` bounds how long a stalled subscriber is waited for.
        """
        if self._ended:
            return None
        self._ended = True
        tasks: list[asyncio.Task[None]] = []
        if self._subs:
            item = _Outgoing(CallEndedEvent(reason=reason, timestamp=utc_timestamp()))
            for sub in self._subs.values():
                sub.offer(item, last=True)
                if sub.task is not None:
                    tasks.append(sub.task)
        logger.info(
            "call ended for subscribers", extra={"reason": reason, "subscribers": len(self._subs)}
        )
        if not tasks:
            return None
        # shielded: whoever waits on the future (and gives up) must not cancel the senders
        return asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """``call_ended`` (reason ``shutdown``) if it has not gone yet, then let the senders
        flush for up to ``DRAIN_TIMEOUT_S``; a subscriber still stuck then is cut off."""
        self.end_call(_SHUTDOWN)
        for handle in self._speeches:
            handle.remove_done_callback(self._on_speech_done)
        self._speeches.clear()
        tasks = [s.task for s in self._subs.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._subs.clear()

    def _wanting(self, kind: str) -> list[Subscription]:
        if not self._subs:  # the common case: nobody listens, nothing is built
            return []
        return [s for s in self._subs.values() if kind in s.events]

    def _offer(self, subs: Iterable[Subscription], make: Callable[[], SessionEvent]) -> None:
        item: _Outgoing | None = None
        for sub in subs:
            if item is None:
                item = _Outgoing(make())
            sub.offer(item)


def _send_to(subs: list[Subscription], event: SessionEvent) -> None:
    if subs:
        item = _Outgoing(event)
        for sub in subs:
            sub.offer(item)


def _conversation_item(item: object) -> ConversationItemEvent | None:
    timestamp = utc_timestamp()
    if isinstance(item, llm.ChatMessage):
        return ConversationItemEvent(
            item_id=item.id,
            item_type="message",
            role=item.role,
            text=item.text_content or "",
            interrupted=item.interrupted,
            timestamp=timestamp,
        )
    if isinstance(item, llm.AgentHandoff):
        return ConversationItemEvent(
            item_id=item.id,
            item_type="agent_handoff",
            new_agent=item.new_agent_id,
            timestamp=timestamp,
        )
    return None


_CUTTABLE: Final = (("text", "text_truncated"), ("arguments", "arguments_truncated"))


def _fit(event: SessionEvent) -> bytes:
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
