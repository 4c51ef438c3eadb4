"""Live call control (protocol v1.1): end the call, stop speech, mute, steer, inject, read back.

Only the consumer calls this, one job at a time and in arrival order, like the applier it
serves. Each request maps onto one public ``AgentSession`` / ``Agent`` call:

- ``end_call`` -> ``CallEnd`` (``session.shutdown``, then the room deleted inside a job);
- ``interrupt`` -> ``session.interrupt(force=...)``; without ``force``, speech that does not
  allow interruptions is ``BUSY`` and nothing is cut (LiveKit would raise and cut nothing);
- ``cancel`` -> the sender's own speech by its request id, unqueued or cut (``SpeechTracker``);
- ``update_io`` -> ``session.output`` / ``session.input`` ``set_*_enabled`` (they live on the
  session, so they survive handoffs);
- ``update_instructions`` / ``reset_instructions`` -> ``Steering``;
- ``user_message`` -> ``generate_reply(user_input=...)``, or, without a reply, the message added
  to the agent's chat context and the session's history;
- ``get_history`` -> the newest messages of ``session.history`` that fit one packet.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from livekit.agents import llm

from .. import protocol
from ..errors import ErrorCode
from ..log import logger
from ..protocol import (
    CANCEL_SUCCESS_MESSAGE,
    END_CALL_SUCCESS_MESSAGE,
    GET_HISTORY_SUCCESS_MESSAGE,
    INTERRUPT_SUCCESS_MESSAGE,
    MAX_PAYLOAD_BYTES,
    RESET_INSTRUCTIONS_SUCCESS_MESSAGE,
    UPDATE_INSTRUCTIONS_SUCCESS_MESSAGE,
    UPDATE_IO_SUCCESS_MESSAGE,
    USER_MESSAGE_SUCCESS_MESSAGE,
    CancelRequest,
    EndCallRequest,
    GetHistoryRequest,
    HistoryItem,
    InterruptRequest,
    IOState,
    ResetInstructionsRequest,
    UpdateInstructionsRequest,
    UpdateIORequest,
    UserMessageRequest,
    echo,
    error_ack,
)
from .answers import AckWriter
from .avatar import AvatarWatch
from .call_end import CallEnd
from .jobs import Answer, Job, Success
from .session_gate import SessionGate
from .speech import SpeechTracker
from .steering import InstructionsTooLong, Steering

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession

CONTROL_REQUESTS: Final = (
    EndCallRequest,
    InterruptRequest,
    CancelRequest,
    UpdateIORequest,
    UpdateInstructionsRequest,
    ResetInstructionsRequest,
    UserMessageRequest,
    GetHistoryRequest,
)
"""The request types ``CallControl`` applies."""

_NOT_INTERRUPTIBLE: Final = (
    "The current speech does not allow interruptions; nothing was cut (send force: true to "
    "cut it anyway)."
)


def io_state(session: AgentSession[Any]) -> IOState:
    """The session's input and output switches as they are now."""
    return IOState(
        agent_audio=session.output.audio_enabled,
        user_audio=session.input.audio_enabled,
        transcription=session.output.transcription_enabled,
    )


class CallControl:
    """Applies the live call control requests and answers each.

    Args:
        gate: The session, reached through its readiness gate.
        speeches: Reports (and cancels) the speeches messages started.
        call_end: Ends the call.
        steering: Keeps the senders' instructions on the current agent.
        writer: Writes the success acks.
        avatar: Refuses a reply while the agent's avatar is gone.
    """

    def __init__(
        self,
        *,
        gate: SessionGate,
        speeches: SpeechTracker,
        call_end: CallEnd,
        steering: Steering,
        writer: AckWriter,
        avatar: AvatarWatch,
    ) -> None:
        self._gate = gate
        self._session: AgentSession[Any] = gate.session
        self._speeches = speeches
        self._call_end = call_end
        self._steering = steering
        self._writer = writer
        self._avatar = avatar

    @property
    def call_ended(self) -> bool:
        """An end was applied: every later message is refused with ``NOT_READY``."""
        return self._call_end.ended

    async def apply(self, job: Job) -> Answer:
        """Apply one control request; raises ``NotReady`` when the session cannot take it."""
        request = job.request
        session = self._session
        await self._gate.call(lambda: session.current_agent)  # started and not ended
        if isinstance(request, EndCallRequest):
            self._call_end.end(after_speech=request.after_speech, reason=request.reason)
            return self._ack(request, END_CALL_SUCCESS_MESSAGE)
        if isinstance(request, InterruptRequest):
            return self._interrupt(request)
        if isinstance(request, CancelRequest):
            return self._cancel(job, request)
        if isinstance(request, UpdateIORequest):
            return self._update_io(request)
        if isinstance(request, UpdateInstructionsRequest):
            try:
                await self._steering.update(request.instructions, request.mode)
            except InstructionsTooLong as exc:
                return error_ack(ErrorCode.VALIDATION_ERROR, str(exc), request.id)
            return self._ack(
                request, UPDATE_INSTRUCTIONS_SUCCESS_MESSAGE, instructions_mode=request.mode
            )
        if isinstance(request, ResetInstructionsRequest):
            await self._steering.reset()
            return self._ack(request, RESET_INSTRUCTIONS_SUCCESS_MESSAGE)
        if isinstance(request, UserMessageRequest):
            return await self._user_message(job, request)
        assert isinstance(request, GetHistoryRequest)
        return self._history(request)

    def _ack(self, request: protocol.Request, message: str, **data: Any) -> Success:
        ack = self._writer.success_model(request, message, **data)
        return Success(protocol.encode_message(ack))

    # ------------------------------------------------------------------------------------------

    def _interrupt(self, request: InterruptRequest) -> Answer:
        session = self._session
        current = session.current_speech
        playing = current is not None and not current.done() and not current.interrupted
        protected = playing and current is not None and not current.allow_interruptions
        if protected and not request.force:
            return error_ack(ErrorCode.BUSY, _NOT_INTERRUPTIBLE, request.id)
        anything = playing or self._speeches.any_pending()
        try:
            session.interrupt(force=request.force)
        except RuntimeError:  # became uninterruptible in between: LiveKit cut nothing
            return error_ack(ErrorCode.BUSY, _NOT_INTERRUPTIBLE, request.id)
        return self._ack(request, INTERRUPT_SUCCESS_MESSAGE, interrupted=anything)

    def _cancel(self, job: Job, request: CancelRequest) -> Answer:
        found = self._speeches.cancel(job.owner, request.target_id)
        if found is None:
            return error_ack(
                ErrorCode.NOT_FOUND,
                f"No speech of yours with id '{echo(request.target_id)}' is queued or playing.",
                request.id,
            )
        speech_id, where = found
        return self._ack(
            request,
            CANCEL_SUCCESS_MESSAGE,
            speech_id=speech_id,
            target_id=request.target_id,
            cancelled=where,
        )

    def _update_io(self, request: UpdateIORequest) -> Answer:
        session = self._session
        if request.agent_audio is not None:
            session.output.set_audio_enabled(request.agent_audio)
        if request.user_audio is not None:
            session.input.set_audio_enabled(request.user_audio)
        if request.transcription is not None:
            session.output.set_transcription_enabled(request.transcription)
        state = io_state(session)
        logger.info("session input and output updated", extra=state.model_dump())
        return self._ack(request, UPDATE_IO_SUCCESS_MESSAGE, io=state)

    async def _user_message(self, job: Job, request: UserMessageRequest) -> Answer:
        session = self._session
        if request.respond:
            self._avatar.require_avatar()  # before anything changes: refused means no effect
        if request.interrupt:
            try:
                session.interrupt(force=False)
            except RuntimeError:
                logger.debug("current speech is not interruptible; the user message waits")
        if request.respond:
            handle = await self._gate.call(lambda: session.generate_reply(user_input=request.text))
            self._speeches.track(handle, job)
            return self._ack(
                request,
                USER_MESSAGE_SUCCESS_MESSAGE,
                speech_id=handle.id,
                method="generate_reply",
            )
        # no public call records a user message without a reply: the agent's chat context
        # (for its next reply) and the session's history (for get_history) both get it
        agent = session.current_agent
        message = llm.ChatMessage(role="user", content=[request.text])
        chat_ctx = agent.chat_ctx.copy()
        chat_ctx.insert(message)
        await agent.update_chat_ctx(chat_ctx)
        session.history.insert(message)
        return self._ack(request, USER_MESSAGE_SUCCESS_MESSAGE)

    def _history(self, request: GetHistoryRequest) -> Answer:
        messages = [
            item for item in self._session.history.items if isinstance(item, llm.ChatMessage)
        ]
        items = [history_item(message) for message in messages[-request.limit :]]
        ack = self._writer.success_model(request, GET_HISTORY_SUCCESS_MESSAGE, history=items)
        payload = protocol.encode_message(ack)
        if len(payload) <= MAX_PAYLOAD_BYTES:
            return Success(payload)
        # the newest items that fit, oldest first
        empty = ack.model_copy(update={"data": ack.data.model_copy(update={"history": []})})
        room = MAX_PAYLOAD_BYTES - len(protocol.encode_message(empty)) - len(',"truncated":true')
        kept: list[HistoryItem] = []
        for item in reversed(items):
            size = len(protocol.encode_message(item)) + 1
            if size > room:
                break
            room -= size
            kept.append(item)
        kept.reverse()
        fitted = ack.data.model_copy(update={"history": kept, "truncated": True})
        return Success(protocol.encode_message(ack.model_copy(update={"data": fitted})))


def history_item(message: llm.ChatMessage) -> HistoryItem:
    return HistoryItem(
        id=message.id,
        role=message.role,
        text=message.text_content or "",
        interrupted=message.interrupted,
        created_at=_iso(message.created_at),
    )


def _iso(seconds: float) -> str:
    millis = int(seconds * 1000)
    whole, milli = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{milli:03d}Z"

