"""The sender's errors: a request sent to an agent that was not applied, or whose outcome is
unknown (:class:`ContextError`, and its two timeouts).

They belong to the package's one error family (:class:`~.errors.ImaginexError`: a ``code``, one
plain sentence, ``retryable``) and carry the agent's own answer when there was one, a wire model
(:class:`~.protocol.ErrorAck`), which is why they live here, above :mod:`.protocol`, while the
family's root and the codes sit below it in :mod:`.errors`. The client, the command line and the
gateway's calls through LiveKit (``_livekit``) raise them.
"""

from __future__ import annotations

from .errors import ErrorCode, RequestError
from .protocol import ErrorAck, SuccessAck

__all__ = ["AckTimeoutError", "ContextError", "PlayoutTimeoutError"]


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
    """The speech was accepted but ``speech_finished`` did not arrive in time (code ``TIMEOUT``).

    Attributes:
        accepted: The success ack of the speak request, when known.
    """

    def __init__(
        self, message: str, *, request_id: str | None, accepted: SuccessAck | None = None
    ) -> None:
        super().__init__(ErrorCode.TIMEOUT, message, request_id=request_id, retryable=False)
        self.accepted = accepted


