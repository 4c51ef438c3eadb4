"""Applying admitted jobs to the ``AgentSession``: speech, context changes and state.

Only the consumer calls this, one batch at a time, so nothing here races another message.
``speak`` becomes ``say()`` (or ``generate_reply()``: from instructions, or as the fallback for
a realtime model without TTS) after its mode is honoured; a batch of context changes is one
store transaction committed only once the agent's chat context holds it; ``get_state`` reads
the session as it is now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from livekit import rtc
from livekit.agents import llm
from livekit.agents.utils import is_given

from ..context import ContextStore
from ..errors import ErrorCode
from ..log import logger
from ..protocol import (
    ADD_CONTEXT_SUCCESS_MESSAGE,
    DEFAULT_START_WITHIN_S,
    REMOVE_CONTEXT_SUCCESS_MESSAGE,
    SPEAK_SUCCESS_MESSAGE,
    AddContextRequest,
    GetStateRequest,
    RemoveContextRequest,
    SpeakRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    error_ack,
)
from .answers import AckWriter
from .avatar import AvatarWatch
from .call_control import CONTROL_REQUESTS, CallControl
from .call_end import CALL_ENDED_MESSAGE
from .clip_player import ClipRefused, Clips, replay
from .context_sync import ContextSync
from .dedup import DedupMemory
from .jobs import Answer, Job
from .session_gate import NotReady, SessionGate
from .speech import SpeechTracker
from .state import StateAnswers
from .subscribers import Subscribers

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession, SpeechHandle

_SpeakMethod = Literal["say", "generate_reply"]
_Scheduled = tuple["SpeechHandle", _SpeakMethod, Literal["generate_reply"] | None]
_VERBATIM_INSTRUCTIONS: Final = "Say the following to the user, word for word, and nothing else:\n"
_BUSY_MESSAGE: Final = (
    "The agent or the user is speaking, or speech is queued; nothing was said (mode if_idle)."
)
# (answer, whether the answer depends on the chat context sync, whether the store changed);
# an answer of None is made after the sync: add_context with trigger_reply
_Staged = tuple[Answer | None, bool, bool]


class SessionApplier:
    """Applies one batch of jobs to the session and answers each job.

    Args:
        gate: The session, reached through its readiness gate.
        store: The context entries the plugin holds.
        context: Keeps the agent's chat context in step with the store.
        speeches: Reports the playout of every speech a job starts.
        dedup: Answers repeated ids instead of applying them again.
        writer: Writes the success acks.
        state: Writes the ``get_state`` answers.
        control: Applies the live call control requests (v1.1) and knows if the call ended.
        answer: Gives a job its one answer (``ContextPlugin``: outbox and work queue).
        subscribers: Takes subscribe / unsubscribe (live session events).
        clips: The audio clips senders streamed, for ``speak{audio}`` (v1.3).
        avatar: Refuses speech while the agent's avatar is gone.
    """

    def __init__(
        self,
        *,
        gate: SessionGate,
        store: ContextStore,
        context: ContextSync,
        speeches: SpeechTracker,
        dedup: DedupMemory,
        writer: AckWriter,
        state: StateAnswers,
        control: CallControl,
        answer: Callable[[Job, Answer], None],
        subscribers: Subscribers,
        avatar: AvatarWatch,
        clips: Clips,
    ) -> None:
        self._gate = gate
        self._session: AgentSession[Any] = gate.session
        self._store = store
        self._context = context
        self._speeches = speeches
        self._dedup = dedup
        self._writer = writer
        self._state = state
        self._control = control
        self._answer = answer
        self._subscribers = subscribers
        self._clips = clips
        self._avatar = avatar

    async def apply(self, batch: list[Job]) -> None:
        """Apply ``batch`` (one job, or a run of context changes) and answer every job in it."""
        if batch[0].changes_context:
            await self._apply_context_batch(batch)
            return
        job = batch[0]
        answer = self._dedup.answer_for(job)
        if answer is None and self._control.call_ended:
            answer = error_ack(ErrorCode.NOT_READY, CALL_ENDED_MESSAGE, job.request.id)
        if answer is None:
            request = job.request
            try:
                if isinstance(request, SpeakRequest):
                    answer = await self._speak(job, request)
                elif isinstance(request, CONTROL_REQUESTS):
                    answer = await self._control.apply(job)
                elif isinstance(request, SubscribeRequest | UnsubscribeRequest):
                    answer = self._subscribers.apply(job)
                else:
                    assert isinstance(request, GetStateRequest)
                    answer = self._state.answer(request)
            except NotReady as exc:
                answer = error_ack(ErrorCode.NOT_READY, str(exc), request.id)
        self._answer(job, answer)

    # ------------------------------------------------------------------------------------------
    # speak

    async def _speak(self, job: Job, request: SpeakRequest) -> Answer:
        self._avatar.require_avatar()
        mode = request.effective_mode
        if mode == "if_idle" and self._someone_is_speaking():
            return error_ack(ErrorCode.BUSY, _BUSY_MESSAGE, request.id)
        frames: list[rtc.AudioFrame] | None = None
        if request.audio is not None:
            try:
                frames = await self._clips.take(job.sender, request.audio)
            except ClipRefused as exc:
                return error_ack(exc.code, exc.message, request.id)
        if mode == "interrupt":
            self._interrupt_interruptible()
        handle, method, fallback = await self._gate.call(
            lambda: self._schedule(request, frames)
        )
        start_within_s = request.start_within_s
        if start_within_s is None and request.speaks_v1_3:
            start_within_s = DEFAULT_START_WITHIN_S
        self._speeches.track(
            handle, job, end_call_after=request.end_call_after, start_within_s=start_within_s
        )
        if logger.isEnabledFor(logging.DEBUG):  # spares building the extras on every message
            logger.debug(
                "speech scheduled",
                extra={
                    "request_id": request.id, "speech_id": handle.id, "speech_text": request.text
                },
            )
        return self._writer.success(
            request, SPEAK_SUCCESS_MESSAGE, speech_id=handle.id, method=method, fallback=fallback
        )

    def _schedule(
        self, request: SpeakRequest, frames: list[rtc.AudioFrame] | None = None
    ) -> _Scheduled:
        session = self._session
        text = request.text
        if frames is not None:
            # a clip plays through the same path as TTS audio (the avatar lip-syncs it); its
            # text, when given, is its transcript
            handle = session.say(
                text or "",
                audio=replay(frames),
                allow_interruptions=request.allow_interruptions,
                add_to_chat_ctx=request.add_to_history and text is not None,
            )
            return handle, "say", None
        if text is None:
            assert request.instructions is not None
            handle = session.generate_reply(
                instructions=request.instructions,
                allow_interruptions=request.allow_interruptions,
            )
            return handle, "generate_reply", None
        if self._can_say_verbatim():
            handle = session.say(
                text,
                allow_interruptions=request.allow_interruptions,
                add_to_chat_ctx=request.add_to_history,
            )
            return handle, "say", None
        # a realtime model without TTS cannot say() text: ask it to read the text as is
        handle = session.generate_reply(
            instructions=_VERBATIM_INSTRUCTIONS + text,
            allow_interruptions=request.allow_interruptions,
        )
        return handle, "generate_reply", "generate_reply"

    def _someone_is_speaking(self) -> bool:
        session = self._session
        return (
            session.agent_state in ("speaking", "thinking")
            or session.user_state == "speaking"
            or session.current_speech is not None
            # queued speech is not idle: ours (not playing yet, so not current_speech), and the
            # session's own queue, which LiveKit keeps private (read defensively)
            or self._speeches.any_pending()
            or bool(getattr(getattr(session, "_activity", None), "_speech_q", None))
        )

    def _interrupt_interruptible(self) -> None:
        try:
            # force=False: speech sent with allow_interruptions=false is never cut
            self._session.interrupt(force=False)
        except RuntimeError:
            logger.debug("current speech is not interruptible; the new speech queues behind it")

    def _can_say_verbatim(self) -> bool:
        # mirrors AgentActivity.say(): without a TTS, say() only works when there is no audio
        # output or the realtime model can say text itself
        session = self._session
        agent = session.current_agent
        tts_model = agent.tts if is_given(agent.tts) else session.tts
        if tts_model is not None:
            return True
        model = agent.llm if is_given(agent.llm) else session.llm
        if isinstance(model, llm.RealtimeModel) and model.capabilities.supports_say:
            return True
        return not (session.output.audio is not None and session.output.audio_enabled)

    # ------------------------------------------------------------------------------------------
    # add_context / remove_context

    async def _apply_context_batch(self, batch: list[Job]) -> None:
        """Apply a burst of add/remove_context to the store, then sync the agent once.

        The store changes provisionally and is committed only once the agent's chat context
        holds them: a batch refused (or failed) as a whole leaves no trace.
        """
        staged: list[tuple[Job, Answer | None, bool]] = []
        changed = synced = False
        self._store.begin()
        try:
            for job in batch:
                answer, needs_sync, changes = self._stage(job)
                staged.append((job, answer, needs_sync))
                changed |= changes
            if changed:
                await self._context.sync()
                synced = True
            # the reply an add_context asks for is scheduled before its change is committed,
            # so a refused reply leaves no trace either (such a job is a batch of its own)
            staged = [
                (job, answer if answer is not None else await self._trigger_reply(job), needs)
                for job, answer, needs in staged
            ]
        except NotReady as exc:
            # refused as a whole: nothing of the batch takes effect, now or at a later sync
            self._store.rollback()
            if synced:  # the agent's context already holds the refused change
                await self._context.restore()
            staged = [
                (job, error_ack(ErrorCode.NOT_READY, str(exc), job.request.id), False)
                if needs_sync
                else (job, answer, False)
                for job, answer, needs_sync in staged
            ]
        except BaseException:
            self._store.rollback()  # answered as an internal error (or, cancelled, at aclose)
            raise
        else:
            self._store.commit()
        for job, answer, _ in staged:
            assert answer is not None  # every reply was scheduled, or the batch refused
            self._answer(job, answer)

    def _stage(self, job: Job) -> _Staged:
        """One context change made in the store's open transaction, and its answer."""
        settled = self._dedup.answer_for(job)
        if settled is not None:
            return settled, False, False
        request = job.request
        if self._control.call_ended:
            return error_ack(ErrorCode.NOT_READY, CALL_ENDED_MESSAGE, request.id), False, False
        if isinstance(request, RemoveContextRequest):
            removed = self._store.remove_key(request.key)
            ack = self._writer.success(
                request, REMOVE_CONTEXT_SUCCESS_MESSAGE, key=request.key, removed=removed
            )
            return ack, True, removed
        assert isinstance(request, AddContextRequest)
        try:
            result = self._store.add(
                request.text,
                role=request.role,
                key=request.key,
                scope=request.scope,
                ttl_s=request.ttl_s,
                request_id=request.id,
                sender=job.sender,
                v1_3=request.speaks_v1_3,
            )
        except ValueError as exc:
            return error_ack(ErrorCode.VALIDATION_ERROR, str(exc), request.id), False, False
        if logger.isEnabledFor(logging.DEBUG):  # spares building the extras on every message
            logger.debug(
                "context added",
                extra={"request_id": request.id, "key": request.key, "context_text": request.text},
            )
        if request.trigger_reply:
            return None, True, True
        ack = self._writer.success(
            request, ADD_CONTEXT_SUCCESS_MESSAGE, key=request.key, evicted=result.evicted
        )
        return ack, True, True

    async def _trigger_reply(self, job: Job) -> Answer:
        """Let the agent respond to the context just added; raises ``NotReady`` if it cannot."""
        request = job.request
        assert isinstance(request, AddContextRequest)
        self._avatar.require_avatar()
        session = self._session
        handle = await self._gate.call(lambda: session.generate_reply())
        self._speeches.track(handle, job)
        return self._writer.success(
            request,
            ADD_CONTEXT_SUCCESS_MESSAGE,
            key=request.key,
            speech_id=handle.id,
            method="generate_reply",
        )
