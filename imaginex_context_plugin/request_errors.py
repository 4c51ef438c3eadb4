"""The sender's errors: a request sent to an agent that was not applied, or whose outcome is
unknown (:class:`ContextError`, and its two timeouts).

They belong to the package's one error family (:class:`~.errors.ImaginexError`: a ``code``, one
plain sentence, ``retryable``) and carry the agent's own answer when there was one, a wire model
(:class:`~.protocol.ErrorAck`), which is why they live here, above :mod:`.protocol`, while the
family's root and the codes sit below it in :mod:`.errors`. The client, the command line and the
gateway's calls through LiveKit (``_livekit``) raise them.
"""

from __future__ import annotations

from typing import Literal

from .errors import ErrorCode, RequestError
from .protocol import ErrorAck, SpeechFailedEvent, SuccessAck

__all__ = ["AckTimeoutError", "ContextError", "PlayoutTimeoutError", "SpeechFailedError"]

PlayoutWait = Literal["pending", "lost", "unknown"]
"""Why a playout wait ran out: ``pending`` (the agent still has the speech queued or playing),
``lost`` (the agent no longer has it: its end was sent and did not arrive), ``unknown`` (the
agent could not be asked)."""


class ContextError(RequestError):
    """A request that was not applied, or whose outcome is unknown.

    Raised for an error ack from the agent (``ack`` is the :class:`~.protocol.ErrorAck`) and for
    failures on the sender's side (``ack`` is None): the request did not validate
    (``VALIDATION_ERROR``), is too large (``PAYLOAD_TOO_LARGE``), no agent was found in the room
    (``AGENT_NOT_FOUND``), LiveKit could not be reached or the client was closed
    (``LIVEKIT_UNAVAILABLE``), or no answer came (``TIMEOUT``, see :class:`AckTimeoutError`).
    Its ``str()`` is ``"CODE: message"``.

    Attributes:
        code: The error code (:class:`~.errors.ErrorCode`).
        message: One plain sentence saying what went wrong.
        request_id: The request's id, when the request got that far.
        retry_after: Seconds to wait before sending again (``RATE_LIMITED``), else None.
        ack: The error ack as received, or None for a failure on the sender's side.
        retryable: Whether sending the same request again may succeed.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        ack: ErrorAck | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            code, message, request_id=request_id, retry_after=retry_after, retryable=retryable
        )
        self.ack = ack

    def __str__(self) -> str:
        # the sender's errors have always read "CODE: message" (the CLI and logs show it)
        return f"{self.code.value}: {self.message}"

    @classmethod
    def from_ack(cls, ack: ErrorAck) -> ContextError:
        """The exception for an error ack received from the agent."""
        return cls(ack.error, ack.message, request_id=ack.id, retry_after=ack.retry_after, ack=ack)


class AckTimeoutError(ContextError, TimeoutError):
    """No ack arrived in time, after every attempt (code ``TIMEOUT``).

    It is both a :class:`ContextError` and a ``TimeoutError``. Whether the agent applied the
    request is unknown: sending it again with the same ``request_id`` is safe, because the agent
    applies an id from one sender once (within 10 minutes) and answers repeats with the first
    ack, marked ``duplicate``.

    Attributes:
        attempts: How many times the request was sent.
    """

    def __init__(self, message: str, *, request_id: str | None, attempts: int) -> None:
        super().__init__(ErrorCode.TIMEOUT, message, request_id=request_id, retryable=True)
        self.attempts = attempts


class PlayoutTimeoutError(ContextError, TimeoutError):
    """The speech was accepted but its end did not arrive in time (code ``TIMEOUT``).

    The client does not leave it at that: it asks the agent (one ``get_state``) whether the
    speech is still queued or playing, and says so in the message and in ``why``.

    Attributes:
        accepted: The success ack of the speak request, when known.
        why: ``pending`` (still queued or playing at the agent), ``lost`` (the agent no
            longer has it: its end was sent but did not arrive), ``unknown`` (not asked, or
            no answer).
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None,
        accepted: SuccessAck | None = None,
        why: PlayoutWait = "unknown",
    ) -> None:
        super().__init__(ErrorCode.TIMEOUT, message, request_id=request_id, retryable=False)
        self.accepted = accepted
        self.why: PlayoutWait = why


class SpeechFailedError(ContextError):
    """v1.3: the speech was accepted but did not play (code ``SPEECH_FAILED``): the agent's
    ``speech_failed`` event, whose ``reason`` says why.

    Attributes:
        event: The :class:`~.protocol.SpeechFailedEvent` (``reason``, ``started``,
            ``played_s``).
        reason: ``not_started``, ``tts_error``, ``llm_error``, ``session_closed``,
            ``cancelled`` or ``avatar_left``.
        accepted: The success ack of the speak request, when known.
    """

    def __init__(self, event: SpeechFailedEvent, *, accepted: SuccessAck | None = None) -> None:
        super().__init__(
            ErrorCode.SPEECH_FAILED,
            _FAILURE_SENTENCES.get(event.reason, "The speech did not play."),
            request_id=event.id,
            retryable=event.reason == "not_started",
        )
        self.event = event
        self.reason = event.reason
        self.accepted = accepted


_FAILURE_SENTENCES: dict[str, str] = {
    "not_started": "The speech did not start in time (start_within_s) and was cancelled.",
    "tts_error": "The speech failed: the agent's TTS failed.",
    "llm_error": "The speech failed: the agent's model failed to phrase it.",
    "session_closed": "The speech did not play out: the agent's session closed first.",
    "cancelled": "The speech was cancelled before it played out.",
    "avatar_left": "The speech did not play out: the avatar playing it left the room.",
}

