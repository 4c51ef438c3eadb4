"""The live call control calls of protocol v1.1: ``end_call``, ``interrupt``, ``cancel``,
``update_io``, ``update_instructions``, ``reset_instructions``, ``user_message`` and
``get_history``.

:class:`ControlCalls` adds them to :class:`~.calls.RequestCalls` over the same hooks: each call
is one request, prepared (an id kept across retries, validated, size-checked), delivered with
the client's retries and returned as its ack, exactly as ``speak`` and ``add_context`` are.
"""

from __future__ import annotations

from ..errors import ErrorCode
from ..protocol import DEFAULT_HISTORY_LIMIT, InstructionsMode, SuccessAck
from ..request_errors import ContextError
from .calls import RequestCalls, _given
from .results import HistoryResult


class ControlCalls(RequestCalls):
    """The call-control calls of :class:`~.client.ContextClient`.

    Every call raises ``ContextError`` when the agent refuses the request or it cannot be
    delivered (``UNAUTHORIZED`` names the missing permission when the agent's
    ``permissions=`` do not grant the type), and ``AckTimeoutError`` when no ack comes in time.
    ``timeout`` is the seconds to wait for the ack to each attempt (default: the client's) and
    ``id`` the request id, the dedup key (default: a random one).
    """

    async def end_call(
        self,
        *,
        after_speech: bool = True,
        reason: str | None = None,
        id: str | None = None,
        timeout: float | None = None,
    ) -> SuccessAck:
        """End the conversation: the session shuts down and, inside a job, the room is deleted.

        The ack comes before the shutdown; requests sent after it get ``NOT_READY``.

        Args:
            after_speech: True (default): what is playing and queued finishes first. False:
                cut at once and drop the queue.
            reason: Why, up to 256 characters; it travels in ``call_ended`` and the agent's log.
        """
        prepared = self._prepare(
            _given(type="end_call", id=id, after_speech=after_speech, reason=reason)
        )
        return await self._deliver(prepared, timeout)

    async def interrupt(
        self, *, force: bool = False, id: str | None = None, timeout: float | None = None
    ) -> SuccessAck:
        """Stop what the agent is saying now, and what is queued (``data.interrupted`` says
        whether anything was).

        Args:
            force: Also stop speech that does not allow interruptions. Default False: such
                speech is refused with ``BUSY`` and nothing is cut.
        """
        prepared = self._prepare(_given(type="interrupt", id=id, force=force))
        return await self._deliver(prepared, timeout)

    async def cancel(
        self, target_id: str, *, id: str | None = None, timeout: float | None = None
    ) -> SuccessAck:
        """Drop one of this sender's speeches by the id of the request that started it.

        Removed if still queued, cut if playing (``data.cancelled`` says which); its
        ``speech_finished`` says ``cancelled``. An unknown or finished ``target_id`` is refused
        with ``NOT_FOUND``.
        """
        prepared = self._prepare(_given(type="cancel", id=id, target_id=target_id))
        return await self._deliver(prepared, timeout)

    async def update_io(
        self,
        *,
        agent_audio: bool | None = None,
        user_audio: bool | None = None,
        transcription: bool | None = None,
        id: str | None = None,
        timeout: float | None = None,
    ) -> SuccessAck:
        """Turn the agent's voice, listening to the user, or transcription output on or off.

        Give at least one; the others stay as they are (default None: unchanged).
        ``data.io`` in the ack is the resulting state of every switch.
        """
        prepared = self._prepare(
            _given(
                type="update_io",
                id=id,
                agent_audio=agent_audio,
                user_audio=user_audio,
                transcription=transcription,
            )
        )
        return await self._deliver(prepared, timeout)

    async def update_instructions(
        self,
        instructions: str,
        *,
        mode: InstructionsMode = "append",
        id: str | None = None,
        timeout: float | None = None,
    ) -> SuccessAck:
        """Steer the current agent; re-applied after a handoff, undone by reset_instructions.

        Args:
            instructions: The instructions (visible text).
            mode: ``"append"`` (default): added to the agent's own. ``"replace"``: instead.
        """
        prepared = self._prepare(
            _given(type="update_instructions", id=id, instructions=instructions, mode=mode)
        )
        return await self._deliver(prepared, timeout)

    async def reset_instructions(
        self, *, id: str | None = None, timeout: float | None = None
    ) -> SuccessAck:
        """Give the current agent its own instructions back."""
        prepared = self._prepare(_given(type="reset_instructions", id=id))
        return await self._deliver(prepared, timeout)

    async def user_message(
        self,
        text: str,
        *,
        respond: bool = True,
        interrupt: bool = False,
        id: str | None = None,
        timeout: float | None = None,
    ) -> SuccessAck:
        """Add ``text`` as the user's own turn (it is in the history as a user message).

        Args:
            text: What the user says (visible text).
            respond: True (default): the agent answers it (``data.speech_id`` names the reply;
                ``wait_for_playout(ack.id)`` waits for its end). False: it waits for the
                next turn.
            interrupt: Stop the agent's current speech first. Default False.
        """
        prepared = self._prepare(
            _given(type="user_message", id=id, text=text, respond=respond, interrupt=interrupt)
        )
        return await self._deliver(prepared, timeout)

    async def get_history(
        self, *, limit: int = DEFAULT_HISTORY_LIMIT, timeout: float | None = None
    ) -> HistoryResult:
        """The newest conversation items, oldest first (role, text, interrupted, time).

        Args:
            limit: How many at most, 1 to 200. Default 50. Fewer come back when they cannot
                fit one packet (then ``truncated`` is True).
        """
        ack = await self._deliver(self._prepare({"type": "get_history", "limit": limit}), timeout)
        if ack.data.history is None:
            raise ContextError(
                ErrorCode.INTERNAL_ERROR,
                "The agent's get_history answer carries no history.",
                request_id=ack.id,
                retryable=False,
            )
        return HistoryResult(items=ack.data.history, truncated=bool(ack.data.truncated))
