"""The package's one error family, rooted here: every error it raises on purpose is an
:class:`ImaginexError`.

Each carries an :class:`ErrorCode` (``.code``), one plain sentence (``.message``, also its
``str()``) and whether trying again may help (``.retryable``), so a caller can handle any of
them the same way: ``except ImaginexError as exc: ... exc.code ...``. The subclasses say where
the failure was seen:

- :class:`RequestError`: an error about one request, with its id and ``retry_after``; two
  branches:
- :class:`ProtocolError`: a request the receiver refuses (it becomes an error ack);
- :class:`~.request_errors.ContextError` (and ``AckTimeoutError``, ``PlayoutTimeoutError``,
  which are also ``TimeoutError``\\ s): a sender's request that was not applied, or whose
  outcome is unknown. They carry the agent's ack, a wire model, so they live in
  :mod:`.request_errors`, above :mod:`.protocol`;
- :class:`BackendError`: the gateway could not reach an agent through LiveKit;
- :class:`StateUnavailable`: the gateway's shared state (Redis) could not be reached;
- :class:`ConfigError`: the gateway's configuration is missing or malformed.

``RETRYABLE_CODES`` is the one table of codes a later attempt may not get; the sentences a
refused request is told are worded here too, once for the receiver and the gateway. This module
imports nothing else of the package, so every other module may import it.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pydantic import ValidationError


class ErrorCode(str, Enum):
    """Stable error codes carried by error acks (and the gateway's error bodies)."""

    VALIDATION_ERROR = "VALIDATION_ERROR"
    """Not UTF-8, not JSON, not an object, unknown type, missing/empty text, wrong field types."""
    UNAUTHORIZED = "UNAUTHORIZED"
    """The sender is not trusted, or its signature is missing, wrong, stale or replayed."""
    AGENT_NOT_FOUND = "AGENT_NOT_FOUND"
    """The request names an ``agent_code`` this agent does not serve."""
    NO_ACTIVE_ROOMS = "NO_ACTIVE_ROOMS"
    """The request names a ``room_id`` that is not this room."""
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    """The packet is over 15 KiB (checked before parsing)."""
    RATE_LIMITED = "RATE_LIMITED"
    """The sender is over its rate limit, or the queue is full; see ``retry_after``."""
    NOT_READY = "NOT_READY"
    """The agent session is not running (not started yet, or ended)."""
    BUSY = "BUSY"
    """A ``speak`` with ``mode: "if_idle"`` arrived while the agent or the user was speaking, or
    an ``interrupt`` without ``force`` met speech that does not allow interruptions."""
    INTERNAL_ERROR = "INTERNAL_ERROR"
    """An unexpected failure inside the agent; the message was not applied."""
    LIVEKIT_UNAVAILABLE = "LIVEKIT_UNAVAILABLE"
    """Sender side only: the LiveKit server could not be reached."""
    TIMEOUT = "TIMEOUT"
    """Sender side only: no ack arrived in time."""
    ID_REUSED = "ID_REUSED"
    """The sender already used this ``id`` for a different message; nothing was applied."""
    NOT_FOUND = "NOT_FOUND"
    """A ``cancel`` names a request id with no speech queued or playing (unknown or finished)."""
    SPEECH_FAILED = "SPEECH_FAILED"
    """Sender side only (v1.3): the speech was accepted but did not play; the agent's
    ``speech_failed`` event says why (``not_started``, ``tts_error``, ``cancelled``, ...)."""


RETRYABLE_CODES: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.NOT_READY, ErrorCode.TIMEOUT})
"""Error codes a later attempt may not get; errors with other codes are final unless the one
raising them says otherwise (``retryable=``)."""


class ImaginexError(Exception):
    """The base of every error this package raises on purpose.

    Attributes:
        code: The error code (:class:`ErrorCode`).
        message: One plain sentence saying what went wrong; also ``str(error)``.
        retryable: Whether doing the same again may succeed.
    """

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable

    def __str__(self) -> str:
        return self.message


class RequestError(ImaginexError):
    """An error about one request: its id, when it got that far, and how long to wait before
    sending it again (``RATE_LIMITED``).

    Attributes:
        request_id: The request's id, or None.
        retry_after: Seconds to wait before sending again, else None.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(code, message, retryable=retryable)
        self.request_id = request_id
        self.retry_after = retry_after


class ProtocolError(RequestError):
    """A request that must be refused, with what its error ack will say."""


class BackendError(ImaginexError):
    """A delivery or lookup that failed on the LiveKit side, with the error code to report."""

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(code, message, retryable=retryable)


class StateUnavailable(ImaginexError):
    """The gateway's shared state cannot be reached (Redis down): Idempotency-Key records, rate
    limits, the agents' replies taken, or the agent directory.

    The gateway answers it ``503 STATE_UNAVAILABLE`` and delivers nothing: without the checks a
    retry could be applied twice. Its ``code`` is ``LIVEKIT_UNAVAILABLE``, the protocol's word
    for a service on the way that could not be reached; trying again may help.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.LIVEKIT_UNAVAILABLE, message, retryable=True)


class ConfigError(ImaginexError):
    """The gateway's configuration is missing or malformed; the message says what to fix.

    Its code is ``VALIDATION_ERROR``: the configuration did not validate, and trying again
    without changing it cannot help.
    """

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.VALIDATION_ERROR, message, retryable=False)


# ---------------------------------------------------------------------------------------------
# sentences: what a refused request is told, worded once for the receiver and the gateway


def invalid_type_message(types: tuple[str, ...]) -> str:
    """The refusal of an unknown ``type``, listing the accepted ones (the platform's wording)."""
    return "Invalid type. Must be one of: " + ", ".join(types)


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``name`` was most likely meant to be, or None.

    The hyphen spelling comes first: the CLI and the gateway's paths spell types with hyphens
    (``end-call``) where the wire and ``permissions=`` use underscores (``end_call``).
    """
    known = list(names)
    underscored = name.strip().replace("-", "_").lower()
    if underscored in known:
        return underscored
    close = difflib.get_close_matches(underscored, known, n=1, cutoff=0.75)
    return close[0] if close else None


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``names``, or nothing when none is close."""
    meant = closest_name(name, names)
    return f" (did you mean '{meant}'?)" if meant is not None else ""


_TYPE_NAMES: Final = {
    "bool_type": "a boolean",
    "string_type": "a string",
    "float_type": "a number",
    "int_type": "an integer",
    "model_type": "an object",
}


def validation_sentence(
    exc: ValidationError,
    *,
    types: tuple[str, ...],
    tags: tuple[str, ...] = (),
    max_id_length: int | None = None,
) -> str:
    """One plain sentence for the first problem pydantic found; never echoes the value.

    Args:
        exc: What pydantic raised.
        types: The accepted values of the ``type`` field, for its refusal.
        tags: Union tags pydantic puts first in an error's location (a discriminated union's
            member names), left out of the field name.
        max_id_length: The longest ``id``, named when an empty one is refused.
    """
    err = exc.errors(include_url=False, include_input=False)[0]
    kind = err["type"]
    if kind == "union_tag_invalid":
        return invalid_type_message(types)
    if kind == "union_tag_not_found":
        return "Missing field 'type'. Must be one of: " + ", ".join(types)
    loc = [str(part) for part in err["loc"]]
    if loc and loc[0] in tags:
        loc = loc[1:]
    field = ".".join(loc)
    if field == "type" and kind in ("literal_error", "string_type"):
        return invalid_type_message(types)
    if kind == "value_error":
        # our own validators: the message is already a sentence, prefixed by pydantic
        return str(err["msg"]).removeprefix("Value error, ") + "."
    return _field_sentence(field, kind, err.get("ctx") or {}, max_id_length)


_FORMATS: Final = {
    "protocol": "a protocol version such as '1.3'",
    "audio.sha256": "the clip's SHA-256 as 64 lowercase hex digits",
}
"""How a field with a fixed format is written, for its refusal."""


def _field_sentence(
    field: str, kind: str, ctx: dict[str, object], max_id_length: int | None
) -> str:
    if kind == "missing":
        return f"Missing field '{field}'."
    if kind == "extra_forbidden":
        return f"Unknown field '{field}' in a signed message."
    if kind in _TYPE_NAMES:
        return f"Field '{field}' must be {_TYPE_NAMES[kind]}."
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return f"Field '{field}' must be one of: {expected.replace(' or ', ', ')}."
    if kind == "string_too_long":
        return f"Field '{field}' must be at most {ctx['max_length']} characters."
    if kind in ("invalid_text", "not_text", "string_unicode"):
        return f"Field '{field}' is not valid text: it contains a lone UTF-16 surrogate."
    if kind == "invisible_text":
        return (
            f"Field '{field}' must contain visible text, not only invisible or control "
            "characters."
        )
    if kind == "string_too_short" and field == "id" and max_id_length is not None:
        return f"Field 'id' must be 1 to {max_id_length} characters."
    if kind == "string_pattern_mismatch" and field in _FORMATS:
        return f"Field '{field}' must be {_FORMATS[field]}."
    if kind in ("string_too_short", "string_pattern_mismatch"):
        return f"Field '{field}' must not be empty."
    if kind in ("greater_than", "greater_than_equal", "less_than_equal", "finite_number"):
        return f"Field '{field}' is out of range."
    return f"Field '{field}' is invalid."


__all__ = [
    "RETRYABLE_CODES",
    "BackendError",
    "ConfigError",
    "ErrorCode",
    "ImaginexError",
    "ProtocolError",
    "RequestError",
    "StateUnavailable",
    "invalid_type_message",
    "validation_sentence",
]
