"""Every event the agent sends, and the subscribers that get them (protocol v1.1, v1.3).

A subscriber gets the session's events on the ack topic until it unsubscribes, leaves the
room, or the call ends (``call_ended`` is every subscriber's last event). Each subscriber has
its own bounded queue and its own sending task, so a slow or stalled subscriber only ever
delays itself: when its queue is full it loses its oldest events, and the next event it gets
says how many (``dropped``). The session's callbacks only build the event (once, for every
subscriber) and append it: they never wait.

v1.3: this is also where every event is numbered and kept (:class:`~.event_log.EventLog`),
the events addressed to one sender included (speech events, ``context_used`` /
``context_dropped``): :meth:`Subscribers.publish` is the one way out for events. An event for a
sender that is also a subscriber goes through that subscriber's queue, so that everything it
gets arrives in ``seq`` order; for anyone else through the outbox, as before. ``subscribe``
answers with a snapshot of the call, and with ``since_seq`` replays what the buffer holds after
it (``replay: true``), or, when the buffer no longer reaches back, ``events_lost`` and a fresh
``snapshot`` event; either way before any live event, with no gap and nothing twice.

Transcripts are personal data: who may subscribe is decided at admission (a sensitive type,
refused unless granted); their text is never logged above DEBUG.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
    Event,
    EventsLostEvent,
    ServerMessage,
    Snapshot,
    SnapshotEvent,
    SubscribeRequest,
    ToolCallEvent,
    UnsubscribeRequest,
    UserStateEvent,
    UserTranscriptEvent,
)
from .answers import AckWriter
from .event_log import EventLog, LoggedEvent, Stamp
from .jobs import Answer, Job, Success
from .outbox import DRAIN_TIMEOUT_S, AckTransport
from .stats import PluginStats
from .subscriber_feed import Outgoing, Subscription

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

_NO_SENDER: Final = (
    "Only a participant can subscribe: a packet sent through the server API has nobody to "
    "send events to."
)
_TOO_MANY: Final = "This agent has as many subscribers as it serves; retry later."
_CALL_ENDED: Final = "The call has ended."
_SHUTDOWN: Final = "shutdown"


SnapshotMaker = Callable[[int, Callable[[Snapshot], bytes]], Snapshot]
"""Makes the call's snapshot at a ``seq``, cut until ``encode(snapshot)`` fits one packet."""
DirectSend = Callable[[str | None, ServerMessage], None]
"""Sends an event to one identity outside any subscription (``Outbox.send``)."""
PayloadSend = Callable[[str, bytes], None]
"""Sends an event's JSON, written directly, to one identity (``Outbox.send_payload``)."""
LazyEvent = tuple[str | None, bool, tuple[Any, ...]]
"""One event for :meth:`Subscribers.publish_lazy_many`: ``to``, ``send_to``, the factory's
arguments (``seq`` first)."""


class Subscribers:
    """Every event of one plugin: numbered, kept, and sent to whoever it is for.

    Args:
        writer: Writes the subscribe / unsubscribe acks.
        stats: Where sent and dropped events are counted.
        log: Numbers and keeps every event.
        send: Sends an event to an identity that is not subscribed (``Outbox.send``).
        send_payload: Sends an event's JSON written directly (``Outbox.send_payload``);
            default: ``send`` it as a success answer.
    """

    def __init__(
        self,
        *,
        writer: AckWriter,
        stats: PluginStats,
        log: EventLog,
        send: DirectSend,
        send_payload: PayloadSend | None = None,
    ) -> None:
        self._writer = writer
        self._stats = stats
        self._log = log
        self._send = send
        self._send_payload: PayloadSend = send_payload or (
            lambda to, payload: send(to, Success(payload))  # type: ignore[arg-type]
        )
        self._subs: dict[str, Subscription] = {}
        self._transport: AckTransport | None = None
        self._snapshot: SnapshotMaker | None = None
        self._ended = False
        self._speeches: set[SpeechHandle] = set()

    def start(self, transport: AckTransport, snapshot: SnapshotMaker) -> None:
        self._transport = transport
        self._snapshot = snapshot

    @property
    def log(self) -> EventLog:
        return self._log

    def subscribed(self, identity: str | None) -> bool:
        """Whether ``identity`` has a subscription (its events then go through it, in order)."""
        return identity is not None and identity in self._subs

    # ------------------------------------------------------------------------------------------
    # the one way out for events

    def publish(
        self,
        event: Event,
        *,
        kind: str | None,
        to: str | None = None,
        direct: Event | None = None,
        send_to: bool = True,
        keep: bool = True,
    ) -> None:
        """Send ``event`` (numbered by :meth:`EventLog.stamp`) and keep it for replays.

        Args:
            event: The event in its v1.3 form.
            kind: The subscription name it goes to subscribers under (None: only to ``to``).
            to: The one identity it is addressed to (a speech's or an entry's sender).
            direct: What ``to`` gets instead when it does not subscribe to ``kind`` (a v1.2
                sender's form of a speech event); default ``event``.
            send_to: Whether ``to`` gets it even when it does not subscribe to ``kind``
                (False: a v1.2 sender, which does not know the event).
            keep: Keep it for replays (interim transcripts are not kept).
        """
        if keep:
            self._log.keep(LoggedEvent(event.seq or 0, to, kind, event))
        subs = self._subs
        if to is not None:
            sub = subs.get(to) if subs else None
            view = sub.view(event) if sub is not None and kind is not None else None
            if view is not None:
                assert sub is not None
                sub.offer(Outgoing(view))
            elif send_to:
                self._send_to(to, direct if direct is not None else event, sub)
        if kind is not None and subs:
            self._offer_kind(event, kind, skip=to)

    def publish_lazy_many(
        self,
        factory: Callable[..., Event],
        encode: Callable[..., bytes],
        events: list[LazyEvent],
        *,
        kind: str,
    ) -> None:
        """Like :meth:`publish`, for events built only if someone gets them now: when nobody
        does, each is kept unbuilt until a replay asks for it. ``events`` are numbered already,
        in order. ``encode(*args)`` writes an event's JSON without building it, for the one
        identity it goes to when nobody subscribes (the add_context burst: one per message)."""
        keep = self._log.keep
        if self._subs:
            for to, send_to, args in events:
                logged = LoggedEvent(args[0], to, kind, None, (factory, args))
                keep(logged)
                self._publish_built(logged.event, kind, to, send_to)
            return
        send_payload = self._send_payload
        # all kept before any is sent: a transport that calls back cannot number in between
        for to, _, args in events:
            keep(LoggedEvent(args[0], to, kind, None, (factory, args)))
        for to, send_to, args in events:
            if send_to and to is not None:
                send_payload(to, encode(*args))

    def _publish_built(self, event: Event, kind: str, to: str | None, send_to: bool) -> None:
        subs = self._subs
        if to is not None:
            sub = subs.get(to)
            if sub is not None and kind in sub.events:
                sub.offer(Outgoing(event))
            elif send_to:
                self._send_to(to, event, sub)
        self._offer_kind(event, kind, skip=to)

    def _send_to(self, identity: str, event: Event, sub: Subscription | None) -> None:
        """``event`` for ``identity`` outside its kinds: through its subscription, if it has
        one still open (so that it arrives in order), else through the outbox."""
        if sub is None or not sub.offer(Outgoing(event)):
            self._send(identity, event)

    def _offer_kind(self, event: Event, kind: str, *, skip: str | None) -> None:
        item: Outgoing | None = None
        stripped: Outgoing | None = None
        for identity, sub in self._subs.items():
            if identity == skip or kind not in sub.events:
                continue
            view = sub.view(event)
            if view is None:
                continue
            if view is event:
                if item is None:
                    item = Outgoing(event)
                sub.offer(item)
            else:  # one stripped copy, encoded once, for every subscriber without arguments
                if stripped is None:
                    stripped = Outgoing(view)
                sub.offer(stripped)

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
            if request.since_seq is not None:
                sub.clear()  # all of it is in the replay, in order
        elif len(self._subs) >= MAX_SUBSCRIBERS:
            return protocol.error_ack(
                ErrorCode.RATE_LIMITED, _TOO_MANY, request.id, retry_after=5.0
            )
        else:
            sub = self._add(job.sender, request, self._transport)
        logger.info(
            "session events subscribed",
            extra={
                "sender": job.sender,
                "events": sorted(sub.events),
                "interim": sub.interim,
                "since_seq": request.since_seq,
            },
        )
        events = [e for e in SESSION_EVENT_TYPES if e in sub.events]
        seq = self._log.seq
        snapshot = self._snapshot_at(
            seq,
            lambda snap: protocol.encode_message(
                self._writer.success_model(
                    request, SUBSCRIBE_SUCCESS_MESSAGE, events=events, snapshot=snap, replayed=0
                )
            ),
        )
        replayed = None if request.since_seq is None else self._replay(sub, request.since_seq)
        return self._ack(
            request, SUBSCRIBE_SUCCESS_MESSAGE, events=events, snapshot=snapshot, replayed=replayed
        )

    def _snapshot_at(self, seq: int, encode: Callable[[Snapshot], bytes]) -> Snapshot:
        assert self._snapshot is not None  # set by start(), before any job is applied
        return self._snapshot(seq, encode)

    def _replay(self, sub: Subscription, since_seq: int) -> int:
        """Queue for ``sub`` what it missed after ``since_seq``; returns how many events."""
        kept = self._log.since(since_seq)
        if kept is None:
            return self._lost(sub, since_seq)
        count = 0
        for logged in kept:
            if logged.to == sub.identity:
                event: Event | None = logged.event  # addressed to it: always its own
            elif logged.kind is not None and logged.kind in sub.events:
                event = sub.view(logged.event)
            else:
                continue
            if event is not None:
                sub.offer(Outgoing(event.model_copy(update={"replay": True})))
                count += 1
        return count

    def _lost(self, sub: Subscription, since_seq: int) -> int:
        """The buffer no longer reaches back to ``since_seq``: ``events_lost`` and a fresh
        ``snapshot``, both addressed to ``sub`` (and kept, in case it resumes again)."""
        last = self._log.seq
        stamp = self._log.stamped()
        lost = EventsLostEvent(
            **stamp,
            from_seq=since_seq + 1 if since_seq < last else 1,
            to_seq=last,
            replay=True,
        )
        self._log.keep(LoggedEvent(stamp["seq"], sub.identity, None, lost))
        sub.offer(Outgoing(lost))
        stamp = self._log.stamped()
        seq = stamp["seq"]

        def as_event(snap: Snapshot) -> SnapshotEvent:
            return SnapshotEvent(
                **stamp,
                state=snap.state,
                items=snap.items,
                pending_speeches=snap.pending_speeches,
                items_truncated=snap.items_truncated,
                replay=True,
            )

        fresh = as_event(
            self._snapshot_at(seq, lambda snap: protocol.encode_message(as_event(snap)))
        )
        self._log.keep(LoggedEvent(seq, sub.identity, None, fresh))
        sub.offer(Outgoing(fresh))
        logger.info(
            "session events lost for a resuming subscriber",
            extra={"sender": sub.identity, "since_seq": since_seq, "last_seq": last},
        )
        return 2

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
        final = ev.is_final
        if not final and not any(s.interim for s in self._subs.values()):
            return  # an interim nobody wants: not numbered, never kept
        self.publish(
            UserTranscriptEvent(
                **self._log.stamped(),
                text=ev.transcript,
                final=final,
                language=str(ev.language) if ev.language else None,
                speaker_id=ev.speaker_id,
            ),
            kind="user_transcript",
            keep=final,
        )

    def on_agent_state_changed(self, ev: AgentStateChangedEvent) -> None:
        stamp = self._log.stamped()
        self.publish(
            AgentStateEvent(**stamp, old_state=ev.old_state, new_state=ev.new_state),
            kind="agent_state",
        )

    def on_user_state_changed(self, ev: UserStateChangedEvent) -> None:
        stamp = self._log.stamped()
        self.publish(
            UserStateEvent(**stamp, old_state=ev.old_state, new_state=ev.new_state),
            kind="user_state",
        )

    def on_conversation_item_added(self, ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, llm.ChatMessage | llm.AgentHandoff):
            return
        self.publish(_conversation_item(item, self._log.stamped()), kind="conversation_item")

    def on_function_tools_executed(self, ev: FunctionToolsExecutedEvent) -> None:
        for call, output in ev.zipped():
            self.publish(
                ToolCallEvent(
                    **self._log.stamped(),
                    call_id=call.call_id,
                    name=call.name,
                    status="error" if output.is_error else "completed",
                    arguments=call.arguments,
                ),
                kind="tool_call",
            )

    def on_speech_created(self, ev: SpeechCreatedEvent) -> None:
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
        self.publish(
            AgentTranscriptEvent(
                **self._log.stamped(),
                speech_id=handle.id,
                text="\n".join(t for t in texts if t),
                interrupted=handle.interrupted,
            ),
            kind="agent_transcript",
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
        stamp = self._log.stamped()
        ended = CallEndedEvent(**stamp, reason=reason)
        self._log.keep(LoggedEvent(stamp["seq"], None, "call_ended", ended))
        if self._subs:
            item = Outgoing(ended)
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


def _conversation_item(
    item: llm.ChatMessage | llm.AgentHandoff, stamp: Stamp
) -> ConversationItemEvent:
    if isinstance(item, llm.ChatMessage):
        return ConversationItemEvent(
            **stamp,
            item_id=item.id,
            item_type="message",
            role=item.role,
            text=item.text_content or "",
            interrupted=item.interrupted,
        )
    return ConversationItemEvent(
        **stamp, item_id=item.id, item_type="agent_handoff", new_agent=item.new_agent_id
    )
