"""The receiver's collaborators that need the session and the room, made when it starts.

``ContextPlugin`` owns what exists from construction (admission, the work queue, dedup memory,
the outbox, subscribers); ``SessionParts`` is the rest, built in one place by ``start()``,
together with the list of room and session listeners they take, so that ``start()`` hooks and
``aclose()`` unhooks exactly the same ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livekit import rtc

from ..context import ContextStore
from .answers import AckWriter
from .applier import SessionApplier
from .avatar import AvatarWatch
from .call_control import CallControl
from .call_end import CallEnd
from .clip_player import Clips
from .connection_keeper import ConnectionKeeper
from .context_sync import ContextSync
from .context_use import ContextUse
from .dedup import DedupMemory
from .jobs import Answer, Job
from .listeners import Hook
from .outbox import Outbox
from .session_gate import SessionGate
from .snapshot import SnapshotSource
from .speech import SpeechTracker
from .state import StateAnswers
from .steering import Steering
from .subscribers import Subscribers
from .work_queue import WorkQueue

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession


@dataclass(frozen=True)
class SessionParts:
    gate: SessionGate
    call_end: CallEnd
    speeches: SpeechTracker
    steering: Steering
    context_sync: ContextSync
    state: StateAnswers
    applier: SessionApplier
    keeper: ConnectionKeeper
    subscribers: Subscribers
    avatar: AvatarWatch
    snapshot: SnapshotSource
    context_use: ContextUse

    @classmethod
    def build(
        cls,
        *,
        session: AgentSession[Any],
        room: rtc.Room,
        store: ContextStore,
        work: WorkQueue,
        dedup: DedupMemory,
        writer: AckWriter,
        outbox: Outbox,
        subscribers: Subscribers,
        ready_timeout: float,
        max_instructions_chars: int,
        agent_code: str | None,
        answer: Callable[[Job, Answer], None],
        on_rpc: Callable[[rtc.RpcInvocationData], Awaitable[str]],
        clips: Clips,
    ) -> SessionParts:
        gate = SessionGate(session, ready_timeout)
        tracker: SpeechTracker | None = None

        def speeches_of_the_call() -> SpeechTracker:
            # the call's end and the speech tracker need each other: it is read when used
            assert tracker is not None
            return tracker

        call_end = CallEnd(session, speeches_of_the_call)
        # a call ended by a message: subscribers get call_ended with its reason
        call_end.add_listener(subscribers.end_call)
        tracker = SpeechTracker(session, subscribers, call_end.hang_up)
        avatar = AvatarWatch(session, room, tracker)
        steering = Steering(gate, max_chars=max_instructions_chars)
        context_use = ContextUse(session, store, subscribers)
        context_sync = ContextSync(store, gate, work.put, follow=context_use.follow)
        state = StateAnswers(
            session=session, store=store, pending_speeches=tracker.pending, writer=writer
        )
        control = CallControl(
            gate=gate,
            speeches=tracker,
            call_end=call_end,
            steering=steering,
            writer=writer,
            avatar=avatar,
        )
        applier = SessionApplier(
            gate=gate,
            store=store,
            context=context_sync,
            speeches=tracker,
            dedup=dedup,
            writer=writer,
            state=state,
            control=control,
            answer=answer,
            subscribers=subscribers,
            avatar=avatar,
            clips=clips,
        )
        keeper = ConnectionKeeper(room, agent_code, on_rpc)
        snapshot = SnapshotSource(session=session, state=state, pending=tracker.pending_details)
        return cls(
            gate,
            call_end,
            tracker,
            steering,
            context_sync,
            state,
            applier,
            keeper,
            subscribers,
            avatar,
            snapshot,
            context_use,
        )

    def hooks(
        self,
        session: AgentSession[Any],
        room: rtc.Room,
        on_data_received: Callable[[rtc.DataPacket], None],
    ) -> list[Hook]:
        """Every room and session listener, in order: the session's close reaches the gate
        and the call's end before the subscribers."""
        subs = self.subscribers
        return [
            (room, "data_received", on_data_received),
            (room, "disconnected", self.keeper.on_room_disconnected),
            (session, "conversation_item_added", self.context_sync.on_conversation_item_added),
            (session, "agent_state_changed", self.speeches.on_agent_state_changed),
            (session, "close", self.gate.on_session_close),
            # the last words of the session before call_ended: entries never used, speeches
            # still going
            (session, "close", self.context_use.on_session_close),
            (session, "close", self.speeches.on_session_close),
            (session, "close", self.call_end.on_session_close),
            (session, "error", self.speeches.on_session_error),
            # the avatar leaving: what it would play is cut, and nothing waits for it forever
            (room, "participant_disconnected", self.avatar.on_participant_disconnected),
            (session, "speech_created", self.avatar.on_speech_created),
            # live events for subscribers
            (room, "participant_disconnected", subs.on_participant_disconnected),
            (session, "user_input_transcribed", subs.on_user_input_transcribed),
            (session, "agent_state_changed", subs.on_agent_state_changed),
            (session, "user_state_changed", subs.on_user_state_changed),
            (session, "conversation_item_added", subs.on_conversation_item_added),
            (session, "function_tools_executed", subs.on_function_tools_executed),
            (session, "speech_created", subs.on_speech_created),
            (session, "close", subs.on_session_close),
        ]
