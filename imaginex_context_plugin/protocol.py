"""Wire protocol v1.3: the JSON that travels between a sender and the agent.

v1.1 added live call control and session events, v1.2 a signed envelope's ``sender``, v1.3 a
resumable event stream (``seq`` / ``t_ms`` on every event, a snapshot in the ``subscribe`` ack,
``subscribe{since_seq}``), ``context_used`` / ``context_dropped``, one terminal event per speech
(``speech_finished`` or ``speech_failed``) for senders that say they speak v1.3 (``protocol``),
and ``speak{audio}``. Older senders keep working unchanged.

Every request, acknowledgement and event is a pydantic model here, so the shape other languages
parse is defined in one place and pinned by ``tests/protocol/test_wire_format.py``. Requests are one
discriminated union on ``type``; :func:`parse_request` turns raw bytes into one of them or raises
:class:`ProtocolError` carrying the error code, a plain sentence and the request id (when it could
be read), which is exactly what an error ack needs.
"""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Annotated, Any, Final, Literal, TypeVar, get_args

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from .errors import ErrorCode, ProtocolError, invalid_type_message, validation_sentence

CONTEXT_TOPIC: Final = "imaginex.context"
"""Data-packet topic the receiver listens on."""
ACK_TOPIC: Final = "imaginex.context.ack"
"""Data-packet topic acks and speech events are sent on, to the sender only."""
RPC_METHOD: Final = "imaginex.context"
"""RPC method name accepting the same request JSON; the response payload is the ack JSON."""
AGENT_CODE_ATTRIBUTE: Final = "imaginex.agent_code"
"""Participant attribute the receiver publishes so senders can find the agent for a code."""
SENDER_ATTRIBUTE: Final = "imaginex.sender"
"""Participant attribute a sender joins with, so that no sender is ever taken for the agent."""

MAX_PAYLOAD_BYTES: Final = 15 * 1024  # LiveKit's reliable data packet limit
MAX_ID_LENGTH: Final = 128
MAX_KEY_LENGTH: Final = 128
MAX_ECHOED_CHARS: Final = 128
"""Longest request value an error message quotes back, so an answer always fits a packet."""
MAX_REASON_LENGTH: Final = 256
"""Longest ``end_call`` reason."""
MAX_SENDER_LENGTH: Final = 128
"""Longest ``sender`` a signed envelope may name (LiveKit identities are no longer in practice)."""
SENDER_SIGNATURE_PREFIX: Final = "imaginex-sender-v1"
"""What a signed message naming a ``sender`` starts with before it is signed: a v1 message
starts with its timestamp's digits, so the two kinds can never be mistaken for each other."""
WITHDRAWN_REPLY_TO: Final = (
    "Field 'reply_to' is no longer supported: a message sent through the server API gets no "
    "answer; send it with RoomService.PerformRpc (the gateway's --delivery server-rpc) and the "
    "answer is the call's"
)
"""The error an envelope naming a ``reply_to`` (withdrawn: answers over HTTP) gets."""
MAX_HISTORY_LIMIT: Final = 200
DEFAULT_HISTORY_LIMIT: Final = 50
PROTOCOL_VERSION: Final = "1.3"
"""The protocol version this package speaks; a request naming it (``protocol``) gets v1.3
events (``speech_failed``), one without it the v1.2 ones."""
DEFAULT_START_WITHIN_S: Final = 30.0
"""v1.3: a speak from a v1.3 sender that has not started playing this many seconds after it was
applied is cancelled (``speech_failed{reason: "not_started"}``) and never plays late."""
MAX_START_WITHIN_S: Final = 3600.0
MAX_CLIP_BYTES: Final = 4 * 1024 * 1024
"""v1.3: the largest audio clip (``speak{audio}``) an agent takes, encoded, in bytes."""
MAX_CLIP_S: Final = 30.0
"""v1.3: the longest audio clip an agent plays, in seconds of decoded audio."""
AUDIO_STREAM_TOPIC: Final = "imaginex.audio"
"""v1.3: the LiveKit byte stream topic a ``speak{audio}`` clip travels on."""


ID_REUSED_MESSAGE: Final = (
    "This id was already used for a different message; send it with a new id."
)


# v1, then v1.1 (live call control); one name a line, so that adding a type is one line
MessageType = Literal[
    "speak",
    "add_context",
    "remove_context",
    "get_state",
    "end_call",
    "interrupt",
    "cancel",
    "update_io",
    "update_instructions",
    "reset_instructions",
    "user_message",
    "get_history",
    "subscribe",
    "unsubscribe",
]
MESSAGE_TYPES: Final[tuple[str, ...]] = get_args(MessageType)
INVALID_TYPE_MESSAGE: Final = invalid_type_message(MESSAGE_TYPES)

ContextRole = Literal["system", "developer", "user", "assistant"]
DEFAULT_CONTEXT_ROLE: Final[ContextRole] = "system"
"""The chat role of added context unless the request names one."""
SpeakMode = Literal["queue", "interrupt", "if_idle"]
ContextScope = Literal["persistent", "next_turn"]
InstructionsMode = Literal["append", "replace"]

SPEAK_SUCCESS_MESSAGE: Final = "Speech triggered successfully"
ADD_CONTEXT_SUCCESS_MESSAGE: Final = "Context added successfully"
REMOVE_CONTEXT_SUCCESS_MESSAGE: Final = "Context removed successfully"
GET_STATE_SUCCESS_MESSAGE: Final = "State retrieved successfully"
END_CALL_SUCCESS_MESSAGE: Final = "Call ending"
INTERRUPT_SUCCESS_MESSAGE: Final = "Speech interrupted"
CANCEL_SUCCESS_MESSAGE: Final = "Speech cancelled"
UPDATE_IO_SUCCESS_MESSAGE: Final = "Input and output updated"
UPDATE_INSTRUCTIONS_SUCCESS_MESSAGE: Final = "Instructions updated"
RESET_INSTRUCTIONS_SUCCESS_MESSAGE: Final = "Instructions reset"
USER_MESSAGE_SUCCESS_MESSAGE: Final = "User message added"
GET_HISTORY_SUCCESS_MESSAGE: Final = "History retrieved successfully"


def oversize(payload: str | bytes) -> int | None:
    """The encoded size of ``payload`` when it is over ``MAX_PAYLOAD_BYTES``, else None.

    Each caller words its own refusal (the receiver, the sender, the gateway speak to different
    people), but they all measure the same thing: UTF-8 bytes on the wire.
    """
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode("utf-8"))
    return size if size > MAX_PAYLOAD_BYTES else None


# (millisecond, its text): every ack carries a timestamp, and a burst of acks shares a few
# milliseconds, so each millisecond is formatted once
_last_timestamp: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """The current time as ISO 8601 UTC with milliseconds and a ``Z``, as the platform sends."""
    global _last_timestamp
    millis = time.time_ns() // 1_000_000
    cached_millis, text = _last_timestamp
    if millis != cached_millis:
        seconds, milli = divmod(millis, 1000)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milli:03d}Z"
        _last_timestamp = (millis, text)
    return text


def is_text(value: str) -> bool:
    """False when ``value`` holds a lone UTF-16 surrogate: valid JSON, but not Unicode text.

    Such a string cannot be encoded as UTF-8, so it could be neither spoken nor echoed in an
    answer; every request string is checked once, here.
    """
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# nothing a listener could hear or a model could use: controls, format characters (zero-width
# spaces, joiners, bidi marks), private use, unassigned, surrogates and separators of any kind
_INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zs", "Zl", "Zp"})


def has_visible_text(value: str) -> bool:
    """True when ``value`` has at least one character that is not invisible.

    Usually decided by the first character; an all-invisible string costs one lookup per
    character, bounded by the packet size.
    """
    category = unicodedata.category
    # a plain loop, not any(<generator>): it runs for every text, and usually stops at once
    for char in value:  # noqa: SIM110
        if category(char) not in _INVISIBLE_CATEGORIES:
            return True
    return False


def echo(value: str) -> str:
    """A request value to quote in an error message, shortened so that the answer stays small."""
    if len(value) <= MAX_ECHOED_CHARS:
        return value
    return value[:MAX_ECHOED_CHARS] + "…"


def _require_text(model: BaseModel, info: ValidationInfo) -> None:
    """Refuse a string field holding a lone surrogate, naming the field.

    Only objects need the check: pydantic's JSON parser already refuses lone surrogate escapes,
    so the hot path (``validate_json``) skips it, while ``json.loads`` output (the fallback and
    a signed body) and models built in Python are checked.
    """
    if info.mode == "json":
        return
    for name, value in model.__dict__.items():
        if isinstance(value, str) and not is_text(value):
            raise ValueError(
                f"Field '{name}' is not valid text: it contains a lone UTF-16 surrogate"
            )


# ---------------------------------------------------------------------------------------------
# requests


class _Request(BaseModel):
    # strict: "true" is not a bool and 1 is not a string; unknown fields are ignored so that newer
    # senders stay compatible with older receivers.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: (
        Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)] | None
    ) = None
    """Echoed in every answer; the deduplication key (per sender, 10 minutes)."""
    room_id: str | None = None
    """If set and not this room's name, the request is refused with ``NO_ACTIVE_ROOMS``."""
    agent_code: str | None = None
    """If set and not this agent's code, the request is refused with ``AGENT_NOT_FOUND``."""
    protocol: Annotated[str, Field(pattern=r"^1\.[0-9]{1,3}$")] | None = None
    """v1.3: the protocol version the sender speaks (``"1.3"``). From ``"1.3"`` on, a speech it
    starts ends with ``speech_finished`` or ``speech_failed``; without it, with the v1.2
    ``speech_finished`` whatever happened."""

    @property
    def speaks_v1_3(self) -> bool:
        """Whether the sender said it speaks v1.3 or later."""
        version = self.protocol
        return version is not None and int(version[2:]) >= 3


def _check_visible(name: str, text: str) -> None:
    if has_visible_text(text):
        return
    if not text.strip():
        raise ValueError(f"Field '{name}' must not be empty")
    raise ValueError(
        f"Field '{name}' must contain visible text, not only invisible or control characters"
    )


def _pick_text(message: str | None, context: str | None) -> str | None:
    if message is not None and context is not None and message != context:
        raise ValueError("Give the text in 'message' or in 'context', not both")
    text = message if message is not None else context
    if text is not None:
        _check_visible("message" if message is not None else "context", text)
    return text


class AudioClipRef(BaseModel):
    """v1.3: the audio clip a ``speak`` plays: a LiveKit byte stream the same participant sent
    on ``AUDIO_STREAM_TOPIC`` before the request (at most ``MAX_CLIP_BYTES``, ``MAX_CLIP_S``)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    stream_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    """The byte stream's id (``ByteStreamWriter.info.stream_id``)."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    """The clip's SHA-256 (lowercase hex): with it, a signed request vouches for the clip too."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> AudioClipRef:
        _require_text(self, info)
        return self


class SpeakRequest(_Request):
    """Make the agent say something now, through its TTS (or phrase it, with ``instructions``,
    or play a clip, with ``audio``)."""

    type: Literal["speak"]
    message: str | None = None
    context: str | None = None
    """Same as ``message``; the platform's unified endpoint sends the text under this name."""
    instructions: str | None = None
    """Have the LLM phrase the turn (``generate_reply(instructions=...)``) instead of verbatim."""
    allow_interruptions: bool = True
    """False: the user cannot barge in, and ``mode: "interrupt"`` never cuts it either."""
    interrupt: bool = False
    """True is the same as ``mode: "interrupt"``."""
    mode: SpeakMode | None = None
    """``queue`` (default), ``interrupt`` (cut interruptible speech first) or ``if_idle``."""
    end_call_after: bool = False
    """v1.1: hang up once this speech has played out (the call is kept if the user cut it)."""
    add_to_history: bool = True
    """v1.1: False keeps the speech out of the LLM's context and the history (fillers)."""
    start_within_s: Annotated[float, Field(gt=0, le=MAX_START_WITHIN_S)] | None = None
    """v1.3: cancel the speech (``speech_failed{reason: "not_started"}``) if it has not started
    playing this many seconds after it was applied. Default: ``DEFAULT_START_WITHIN_S`` for a
    v1.3 sender (``protocol``), none for older ones."""
    audio: AudioClipRef | None = None
    """v1.3: play this clip (sent first as a LiveKit byte stream) instead of synthesizing
    speech; ``message`` is then optional: the clip's transcript, for the history."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> SpeakRequest:
        _require_text(self, info)
        text = _pick_text(self.message, self.context)
        if text is not None and self.instructions is not None:
            raise ValueError("Give either the text to say or 'instructions', not both")
        if self.audio is not None:
            if self.instructions is not None:
                raise ValueError("Give either an audio clip or 'instructions', not both")
            return self
        if text is None and self.instructions is None:
            raise ValueError("Missing field 'message' (or 'context'): the text to speak")
        if self.instructions is not None:
            _check_visible("instructions", self.instructions)
        if self.interrupt and self.mode not in (None, "interrupt"):
            raise ValueError(f"'interrupt: true' contradicts 'mode: {self.mode}'")
        return self

    @property
    def text(self) -> str | None:
        """The verbatim text to say, or None when the LLM phrases it from ``instructions``."""
        return self.message if self.message is not None else self.context

    @property
    def effective_mode(self) -> SpeakMode:
        if self.mode is not None:
            return self.mode
        return "interrupt" if self.interrupt else "queue"


class AddContextRequest(_Request):
    """Give the agent background knowledge for its next replies; nothing is spoken."""

    type: Literal["add_context"]
    message: str | None = None
    context: str | None = None
    role: ContextRole = DEFAULT_CONTEXT_ROLE
    key: Annotated[str, Field(min_length=1, max_length=MAX_KEY_LENGTH)] | None = None
    """A later add_context with the same key replaces this one in place."""
    trigger_reply: bool = False
    """After adding, let the agent respond to it."""
    scope: ContextScope = "persistent"
    """``next_turn``: removed again after the agent's next reply."""
    ttl_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] | None = None
    """Seconds after which the entry leaves the chat context."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> AddContextRequest:
        _require_text(self, info)
        if _pick_text(self.message, self.context) is None:
            raise ValueError("Missing field 'context' (or 'message'): the context to add")
        return self

    @property
    def text(self) -> str:
        text = self.context if self.context is not None else self.message
        assert text is not None  # guaranteed by _check_text
        return text


class RemoveContextRequest(_Request):
    """Remove the context entry added under ``key`` (succeeds with ``removed: false`` if none)."""

    type: Literal["remove_context"]
    key: Annotated[str, Field(min_length=1, max_length=MAX_KEY_LENGTH)]

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> RemoveContextRequest:
        _require_text(self, info)
        return self


class GetStateRequest(_Request):
    """Ask for the agent's and the user's state and the plugin's context entries."""

    type: Literal["get_state"]

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> GetStateRequest:
        _require_text(self, info)
        return self


# ---------------------------------------------------------------------------------------------
# v1.1 requests: live call control


class EndCallRequest(_Request):
    """End the conversation: the session shuts down and, inside a job, the room is deleted."""

    type: Literal["end_call"]
    after_speech: bool = True
    """True: what is playing and queued finishes first; False: cut at once, queue dropped."""
    reason: Annotated[str, Field(max_length=MAX_REASON_LENGTH)] | None = None
    """Travels in the ``call_ended`` event and the log."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> EndCallRequest:
        _require_text(self, info)
        return self


class InterruptRequest(_Request):
    """Stop what the agent is saying now, and what is queued (``session.interrupt``)."""

    type: Literal["interrupt"]
    force: bool = False
    """Also stop speech sent with ``allow_interruptions: false`` (else that is ``BUSY``)."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> InterruptRequest:
        _require_text(self, info)
        return self


class CancelRequest(_Request):
    """Drop one of our speeches by the id of the request that started it."""

    type: Literal["cancel"]
    target_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    """The ``id`` of the speak (or user_message) request whose speech to drop."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> CancelRequest:
        _require_text(self, info)
        return self


class UpdateIORequest(_Request):
    """Mute or unmute the agent's voice, listening to the user and transcription output."""

    type: Literal["update_io"]
    agent_audio: bool | None = None
    user_audio: bool | None = None
    transcription: bool | None = None

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> UpdateIORequest:
        _require_text(self, info)
        if self.agent_audio is None and self.user_audio is None and self.transcription is None:
            raise ValueError(
                "Give at least one of 'agent_audio', 'user_audio' or 'transcription'"
            )
        return self


class UpdateInstructionsRequest(_Request):
    """Steer the current agent: add to its instructions or replace them."""

    type: Literal["update_instructions"]
    instructions: str
    mode: InstructionsMode = "append"

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> UpdateInstructionsRequest:
        _require_text(self, info)
        _check_visible("instructions", self.instructions)
        return self


class ResetInstructionsRequest(_Request):
    """Give the current agent its own instructions back."""

    type: Literal["reset_instructions"]

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> ResetInstructionsRequest:
        _require_text(self, info)
        return self


class UserMessageRequest(_Request):
    """Text as the user's own turn: in the history as a user message, answered by the agent."""

    type: Literal["user_message"]
    text: str
    respond: bool = True
    """Let the agent answer it. Without it the message waits in the context for the next turn."""
    interrupt: bool = False
    """Stop the current (interruptible) speech first."""

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> UserMessageRequest:
        _require_text(self, info)
        _check_visible("text", self.text)
        return self


class GetHistoryRequest(_Request):
    """Ask for the newest conversation items."""

    type: Literal["get_history"]
    limit: Annotated[int, Field(ge=1, le=MAX_HISTORY_LIMIT)] = DEFAULT_HISTORY_LIMIT

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> GetHistoryRequest:
        _require_text(self, info)
        return self


# ---------------------------------------------------------------------------------------------
# v1.1 live events: subscribe / unsubscribe (requests here; the events under "answers")

SessionEventType = Literal[
    "user_transcript",
    "agent_transcript",
    "agent_state",
    "user_state",
    "conversation_item",
    "tool_call",
    "call_ended",
    "speech",  # v1.3: speech_started / speech_finished / speech_failed of every tracked speech
    "context",  # v1.3: context_used / context_dropped of every context entry
]
SESSION_EVENT_TYPES: Final[tuple[str, ...]] = get_args(SessionEventType)
SUBSCRIBE_SUCCESS_MESSAGE: Final = "Subscribed to session events"
UNSUBSCRIBE_SUCCESS_MESSAGE: Final = "Unsubscribed from session events"


class SubscribeRequest(_Request):
    """Receive the session's live events on the ack topic until unsubscribed or gone.

    A second subscribe from the same sender replaces the first one's options. ``call_ended``
    comes to every subscriber, listed or not, as its last event.
    """

    type: Literal["subscribe"]
    # a tuple (the request is hashed for dedup); not strict, so that a JSON array is one
    events: Annotated[
        tuple[SessionEventType, ...],
        Field(strict=False, min_length=1, max_length=2 * len(SESSION_EVENT_TYPES)),
    ]
    interim: bool = False
    """Also interim (not final) user transcripts."""
    tool_arguments: bool = False
    """Also each tool call's arguments (they may hold personal data)."""
    since_seq: Annotated[int, Field(ge=0)] | None = None
    """v1.3: first replay what the agent still holds after this ``seq`` (the last one the
    subscriber saw), marked ``replay: true``, then go live; if the agent's buffer no longer
    reaches back that far, ``events_lost`` and a fresh ``snapshot`` come first instead."""

    @model_validator(mode="before")
    @classmethod
    def _array_only(cls, data: Any) -> Any:
        # lax tuple validation would also take a string or a dict: only a JSON array is a list
        if isinstance(data, dict) and "events" in data:
            events = data["events"]
            if not isinstance(events, list | tuple):
                raise ValueError("Field 'events' must be a list of event names")
            if not events:
                raise ValueError("Field 'events' must name at least one event")
        return data

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> SubscribeRequest:
        _require_text(self, info)
        return self


class UnsubscribeRequest(_Request):
    """End the sender's own subscription (succeeds with ``removed: false`` if there was none)."""

    type: Literal["unsubscribe"]

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> UnsubscribeRequest:
        _require_text(self, info)
        return self


# every request model, one a line: a new type is one more line here (and in MessageType)
_RequestModel = (
    SpeakRequest
    | AddContextRequest
    | RemoveContextRequest
    | GetStateRequest
    | EndCallRequest
    | InterruptRequest
    | CancelRequest
    | UpdateIORequest
    | UpdateInstructionsRequest
    | ResetInstructionsRequest
    | UserMessageRequest
    | GetHistoryRequest
    | SubscribeRequest
    | UnsubscribeRequest
)
Request = Annotated[_RequestModel, Field(discriminator="type")]
_request_adapter: TypeAdapter[Request] = TypeAdapter(Request)


class SignedEnvelope(BaseModel):
    """A request signed with the shared secret; see ``security.sign_request`` for the scheme."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: Literal["signed"]
    body: str
    """The request JSON, exactly as signed."""
    timestamp: int
    """Unix seconds when it was signed; must be within 5 minutes of the receiver's clock."""
    signature: str
    """Lowercase hex HMAC-SHA256 with the shared secret of ``f"{timestamp}.{body}"``; with a
    ``sender``, of ``imaginex-sender-v1.{timestamp}.{n}.{sender}.{body}`` where ``n`` is the
    sender's length in UTF-8 bytes (see ``security.sign_request``)."""
    sender: Annotated[str, Field(min_length=1, max_length=MAX_SENDER_LENGTH)] | None = None
    """Who the message comes from, vouched for by the signature (v1.2, optional): the receiver
    deduplicates, rate limits and checks permissions by it instead of the relaying participant,
    so that gateway replicas with distinct participant identities count as one sender."""

    @model_validator(mode="before")
    @classmethod
    def _no_reply_to(cls, data: Any) -> Any:
        # the answers over HTTP were withdrawn: an old gateway still naming a URL is told
        # why, not merely that the field is unknown
        if isinstance(data, dict) and "reply_to" in data:
            raise ValueError(WITHDRAWN_REPLY_TO)
        return data

    @model_validator(mode="after")
    def _check_text(self, info: ValidationInfo) -> SignedEnvelope:
        _require_text(self, info)
        if self.sender is not None:
            _check_visible("sender", self.sender)
            if not self.sender.isprintable():
                raise ValueError("Field 'sender' must not contain control characters")
        return self


Packet = Annotated[_RequestModel | SignedEnvelope, Field(discriminator="type")]
"""What may arrive on the topic: a request, or a signed envelope around one."""
_packet_adapter: TypeAdapter[Packet] = TypeAdapter(Packet)


def load_untrusted_json(raw: bytes | str) -> Any:
    """Decode JSON someone else wrote (an agent's reply or event, an ack) with pydantic-core's
    parser, which does not recurse in Python and refuses nesting deeper than 200 levels.

    ``json.loads`` recurses: about 10 KB of ``[[[[...`` raise ``RecursionError``, which an
    ``except ValueError`` does not catch. Lone surrogate escapes are refused too (nothing we
    write carries one).

    Raises:
        ValueError: Not JSON, or nested too deeply.
    """
    return pydantic_core.from_json(raw)


def decode_object(raw: bytes | str) -> dict[str, Any]:
    """Decode a packet into a JSON object, or raise ``VALIDATION_ERROR`` saying what is wrong.

    ``json.loads``, not :func:`load_untrusted_json`: a request with a lone surrogate escape is
    valid JSON, and is answered with what is wrong with it; its ``RecursionError`` is caught.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.VALIDATION_ERROR, "Message is not valid UTF-8.") from None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError(ErrorCode.VALIDATION_ERROR, "Message is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.VALIDATION_ERROR, "Message must be a JSON object.")
    return obj


def request_id_of(obj: dict[str, Any]) -> str | None:
    """The request id to echo in an error ack, if the object carries a usable one."""
    rid = obj.get("id")
    # an id that is not text (a lone surrogate) cannot be echoed: the answer says null
    if isinstance(rid, str) and len(rid) <= MAX_ID_LENGTH and is_text(rid):
        return rid
    return None


def read_packet(raw: bytes) -> Request | SignedEnvelope:
    """Parse and validate packet bytes in one pass, or raise ``VALIDATION_ERROR``.

    The common case costs one pydantic pass over the bytes, with no dict in between. Only when
    that fails is the packet decoded again with ``json.loads``, to say what is wrong (and echo
    its id), or to accept what pydantic's stricter JSON parser refused but JSON allows (lone
    surrogate escapes, say).
    """
    try:
        return _packet_adapter.validate_json(raw)
    except ValidationError:
        pass
    obj = decode_object(raw)
    try:
        return _packet_adapter.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.VALIDATION_ERROR, _sentence(exc), request_id=request_id_of(obj)
        ) from None


def validate_request(obj: dict[str, Any]) -> Request:
    """Validate a decoded object as one of the request types (not an envelope)."""
    try:
        return _request_adapter.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.VALIDATION_ERROR, _sentence(exc), request_id=request_id_of(obj)
        ) from None


def parse_request(raw: bytes | str) -> Request:
    """Decode and validate raw packet bytes into a request (unsigned path)."""
    return validate_request(decode_object(raw))


def _sentence(exc: ValidationError) -> str:
    return validation_sentence(
        exc, types=MESSAGE_TYPES, tags=(*MESSAGE_TYPES, "signed"), max_id_length=MAX_ID_LENGTH
    )


# ---------------------------------------------------------------------------------------------
# answers


def _is_none(value: object) -> bool:
    return value is None


_OptionalT = TypeVar("_OptionalT")
Omitted = Annotated[_OptionalT | None, Field(exclude_if=_is_none)]
"""An optional answer field left out of the JSON when None, so each answer carries only what
applies (e.g. no ``speech_id`` on an add_context ack); plain ``X | None`` fields, such as ``id``,
stay present even when null."""


class _WireModel(BaseModel):
    model_config = ConfigDict(frozen=True)


def encode_message(message: _WireModel) -> bytes:
    """The message's JSON as UTF-8 bytes, byte for byte ``message.model_dump_json().encode()``.

    Straight from the model's serializer: ``model_dump_json`` adds a call with every option
    spelled out and a decode to ``str`` that the transport would only encode back.
    """
    return message.__pydantic_serializer__.to_json(message)


class LlmCall(_WireModel):
    """v1.3: the model request that carried a context entry (``context_used``)."""

    index: int
    """The how-manieth model request of the session (from 1): a pipeline LLM's inference, or a
    realtime model's response."""
    speech_id: Omitted[str] = None
    """The speech (reply) the request was for, when known."""
    realtime: Omitted[Literal[True]] = None
    """A realtime model's response: see ``docs/protocol.md`` for what "used" means there."""


class ContextEntryInfo(_WireModel):
    """One context entry the plugin holds, as reported by ``get_state``."""

    entry_id: str
    key: str | None
    role: ContextRole
    chars: int
    scope: ContextScope
    expires_in_s: float | None
    request_id: str | None
    used: Omitted[LlmCall] = None
    """The first model request that carried the entry (what its ``context_used`` said), so
    that whoever did not see the event (a page opened later, a buffer that lost it) still
    knows; absent until a request carries it."""


class IOState(_WireModel):
    """Which of the session's inputs and outputs are on (``update_io``, ``get_state``)."""

    agent_audio: bool
    user_audio: bool
    transcription: bool


class HistoryItem(_WireModel):
    """One message of the conversation, as ``get_history`` reports it."""

    id: str
    role: ContextRole
    text: str
    interrupted: bool
    created_at: str
    """ISO 8601 UTC with milliseconds, like every timestamp here."""


class AgentStateInfo(_WireModel):
    """What ``get_state`` reports.

    An answer must fit one packet (``MAX_PAYLOAD_BYTES``), so a long list is cut to its first
    items; then ``*_truncated`` is true and ``*_total`` says how many there are in all.
    """

    agent_state: str
    user_state: str
    current_agent: str | None
    context_entries: list[ContextEntryInfo]
    context_chars: int
    pending_speeches: list[str]
    context_entries_truncated: Omitted[Literal[True]] = None
    context_entries_total: Omitted[int] = None
    pending_speeches_truncated: Omitted[Literal[True]] = None
    pending_speeches_total: Omitted[int] = None
    io: Omitted[IOState] = None
    """v1.1: the session's input and output switches."""


class PendingSpeech(_WireModel):
    """v1.3: a speech the plugin started that is still queued or playing (snapshots)."""

    speech_id: str
    request_id: str | None
    playing: bool


class Snapshot(_WireModel):
    """v1.3: where the call stands: in the ``subscribe`` ack, and as a ``snapshot`` event after
    ``events_lost``. ``seq``: the live stream continues after it."""

    seq: int
    state: AgentStateInfo
    """As ``get_state`` reports it."""
    items: list[HistoryItem]
    """The newest conversation messages, oldest first (at most ``SNAPSHOT_MAX_ITEMS``, fewer
    when they would not fit one packet: then ``items_truncated``)."""
    pending_speeches: list[PendingSpeech]
    items_truncated: Omitted[Literal[True]] = None


class AckData(_WireModel):
    agent_code: str | None
    context_type: MessageType
    delivered_to_rooms: int = 1
    room_id: str
    timestamp: str
    speech_id: Omitted[str] = None
    method: Omitted[Literal["say", "generate_reply"]] = None
    fallback: Omitted[Literal["generate_reply"]] = None
    key: Omitted[str] = None
    removed: Omitted[bool] = None
    evicted: Omitted[int] = None
    state: Omitted[AgentStateInfo] = None
    # v1.1
    interrupted: Omitted[bool] = None
    """interrupt: whether any speech was playing or queued (and so was cut)."""
    target_id: Omitted[str] = None
    """cancel: the request id whose speech was dropped."""
    cancelled: Omitted[Literal["queued", "playing"]] = None
    """cancel: whether the speech was removed before it began, or cut while playing."""
    io: Omitted[IOState] = None
    """update_io: the resulting state of every switch."""
    instructions_mode: Omitted[InstructionsMode] = None
    history: Omitted[list[HistoryItem]] = None
    """get_history: the newest items, oldest first."""
    truncated: Omitted[Literal[True]] = None
    """get_history: fewer items than asked for and available, to fit one packet."""
    events: Omitted[list[SessionEventType]] = None
    """subscribe: the events this sender now receives (``call_ended`` always)."""
    snapshot: Omitted[Snapshot] = None
    """v1.3, subscribe: where the call stands; the live events continue after its ``seq``."""
    replayed: Omitted[int] = None
    """v1.3, subscribe with ``since_seq``: how many events follow before the live ones (each
    ``replay: true``); ``events_lost`` and ``snapshot`` count too."""


class SuccessAck(_WireModel):
    type: Literal["ack"] = "ack"
    id: str | None
    success: Literal[True] = True
    message: str
    data: AckData
    duplicate: Omitted[bool] = None


class ErrorAck(_WireModel):
    type: Literal["ack"] = "ack"
    id: str | None
    success: Literal[False] = False
    error: ErrorCode
    message: str
    retry_after: Omitted[float] = None


Ack = Annotated[SuccessAck | ErrorAck, Field(discriminator="success")]


# ---------------------------------------------------------------------------------------------
# events: everything the agent sends besides acks
#
# v1.3: every event carries ``seq`` (strictly increasing per agent session, shared by all the
# agent's events, so one subscriber sees gaps where events went to others) and ``t_ms``
# (milliseconds since the session started, on the agent's clock); both are absent only from
# an older agent. An event replayed from the agent's buffer (``subscribe{since_seq}``) says
# ``replay: true``. Every event may carry ``dropped``: events this subscriber lost just before
# it because it fell behind. Texts longer than fits one packet are cut and marked
# ``text_truncated`` (``arguments_truncated``).


class _Event(_WireModel):
    type: str  # each event's own literal; declared here so that it comes first
    seq: Omitted[int] = None
    """v1.3: this event's number, strictly increasing per agent session."""
    t_ms: Omitted[int] = None
    """v1.3: milliseconds since the session started, on the agent's clock."""


class SpeechStartedEvent(_Event):
    """Sent when the speech's playout really begins (not when it is queued)."""

    type: Literal["speech_started"] = "speech_started"
    id: str | None
    speech_id: str
    timestamp: str
    dropped: Omitted[int] = None
    replay: Omitted[Literal[True]] = None


class SpeechFinishedEvent(_Event):
    """Sent when playout has ended or was cut; never at scheduling time.

    To a v1.3 sender (``protocol``) it means the speech played (in full, or cut by the user or
    an ``interrupt``); every other end is a :class:`SpeechFailedEvent`. An older sender gets
    this event for every end, with ``failed`` / ``reason`` / ``cancelled`` saying which.
    """

    type: Literal["speech_finished"] = "speech_finished"
    id: str | None
    speech_id: str
    interrupted: bool
    played_s: Omitted[float] = None
    """Seconds of audio played, when the audio output reports it."""
    failed: Omitted[Literal[True]] = None
    """v1.2 senders: present (true) when the speech ended because the TTS or the model failed."""
    reason: Omitted[Literal["shutdown", "avatar_left"]] = None
    """v1.2 senders: ``shutdown``: the agent stopped before this speech ended, so its end was not
    observed. ``avatar_left``: the avatar playing the agent's audio left the room (or crashed)
    before the speech ended, or was gone when it would have started; nobody heard the rest, and
    how much was played is unknown (no ``played_s``). (v1.3 senders get ``speech_failed`` with
    the same reasons, ``shutdown`` as ``session_closed``.)"""
    cancelled: Omitted[Literal[True]] = None
    """v1.1: dropped by a ``cancel``, an ``end_call`` or the ``end_call_after`` before it (v1.2
    senders; v1.3 ones get ``speech_failed{reason: "cancelled"}``)."""
    call_kept: Omitted[Literal[True]] = None
    """v1.1: a speak with ``end_call_after`` was cut by the user, so the call goes on."""
    timestamp: str
    dropped: Omitted[int] = None
    replay: Omitted[Literal[True]] = None


SpeechFailureReason = Literal[
    "not_started", "tts_error", "llm_error", "session_closed", "cancelled", "avatar_left"
]


class SpeechFailedEvent(_Event):
    """v1.3: the speech ended without playing as asked; the other terminal event.

    ``reason``: ``not_started`` (not playing within ``start_within_s``: cancelled, it never
    plays late), ``tts_error`` (the TTS failed), ``llm_error`` (the model failed to phrase a
    reply), ``session_closed`` (the session or the agent stopped first), ``cancelled`` (a
    ``cancel``, an ``end_call``, or an ``interrupt`` that emptied the queue before it began),
    ``avatar_left`` (the avatar playing the agent's audio left the room before the speech ended,
    or was gone when it would have started: nobody heard the rest, no ``played_s``).
    """

    type: Literal["speech_failed"] = "speech_failed"
    id: str | None
    speech_id: str
    reason: SpeechFailureReason
    started: bool
    """Whether any of it had begun playing."""
    played_s: Omitted[float] = None
    timestamp: str
    dropped: Omitted[int] = None
    replay: Omitted[Literal[True]] = None


SpeechEvent = SpeechStartedEvent | SpeechFinishedEvent | SpeechFailedEvent


# ---------------------------------------------------------------------------------------------
# v1.1 live events, to subscribers (``subscribe``) on the ack topic


class _SessionEvent(_Event):
    timestamp: str
    dropped: Omitted[int] = None
    """Events this subscriber lost just before this one (it fell behind)."""
    replay: Omitted[Literal[True]] = None
    """v1.3: replayed from the agent's buffer (``subscribe{since_seq}``), not live."""


class UserTranscriptEvent(_SessionEvent):
    """What the user said, from the STT: final, or (opt-in ``interim``) interim."""

    type: Literal["user_transcript"] = "user_transcript"
    text: str
    final: bool
    language: Omitted[str] = None
    speaker_id: Omitted[str] = None
    text_truncated: Omitted[Literal[True]] = None


class AgentTranscriptEvent(_SessionEvent):
    """What the agent actually said in one speech (cut where the user interrupted it)."""

    type: Literal["agent_transcript"] = "agent_transcript"
    speech_id: str
    text: str
    interrupted: bool
    text_truncated: Omitted[Literal[True]] = None


class _StateChangeEvent(_SessionEvent):
    old_state: str
    new_state: str


class AgentStateEvent(_StateChangeEvent):
    type: Literal["agent_state"] = "agent_state"


class UserStateEvent(_StateChangeEvent):
    type: Literal["user_state"] = "user_state"


class ConversationItemEvent(_SessionEvent):
    """An item added to the session's history: a message, or an agent handoff."""

    type: Literal["conversation_item"] = "conversation_item"
    item_id: str
    item_type: Literal["message", "agent_handoff"]
    role: Omitted[ContextRole] = None
    text: Omitted[str] = None
    interrupted: Omitted[bool] = None
    new_agent: Omitted[str] = None
    """agent_handoff: the agent that took over (its id, or class name)."""
    text_truncated: Omitted[Literal[True]] = None


class ToolCallEvent(_SessionEvent):
    """A function tool the agent ran; its arguments only with ``tool_arguments: true``."""

    type: Literal["tool_call"] = "tool_call"
    call_id: str
    name: str
    status: Literal["completed", "error"]
    arguments: Omitted[str] = None
    """The arguments' JSON text, as the model sent it."""
    arguments_truncated: Omitted[Literal[True]] = None


class CallEndedEvent(_SessionEvent):
    """The session ended: every subscriber's last event, subscribed to or not."""

    type: Literal["call_ended"] = "call_ended"
    reason: str
    """The session's close reason (``user_initiated``, ``participant_disconnected``, ...),
    ``end_call``'s reason, or ``shutdown`` when the plugin stopped first."""


class ContextUsedEvent(_SessionEvent):
    """v1.3: the first model request that really carried this context entry.

    Detected from the chat context handed to the agent's LLM (its ``llm_node``), or for a
    realtime model from the conversation the realtime session held when it began a response.
    A keyed entry replaced by a later ``add_context`` is a new entry (its own ``request_id``).
    """

    type: Literal["context_used"] = "context_used"
    entry_id: str
    key: str | None
    request_id: str | None
    llm_call: LlmCall


ContextDropReason = Literal["removed", "replaced", "expired", "evicted", "session_closed"]


class ContextDroppedEvent(_SessionEvent):
    """v1.3: a context entry left before any model request carried it (never sent otherwise)."""

    type: Literal["context_dropped"] = "context_dropped"
    entry_id: str
    key: str | None
    request_id: str | None
    reason: ContextDropReason


class EventsLostEvent(_SessionEvent):
    """v1.3: the agent's buffer no longer holds the events from ``from_seq`` to ``to_seq``
    (``subscribe{since_seq}`` reached back too far); a ``snapshot`` event follows at once."""

    type: Literal["events_lost"] = "events_lost"
    from_seq: int
    to_seq: int


class SnapshotEvent(_SessionEvent):
    """v1.3: a fresh :class:`Snapshot` after ``events_lost`` (the same fields, as an event)."""

    type: Literal["snapshot"] = "snapshot"
    state: AgentStateInfo
    items: list[HistoryItem]
    pending_speeches: list[PendingSpeech]
    items_truncated: Omitted[Literal[True]] = None


SessionEvent = (
    UserTranscriptEvent
    | AgentTranscriptEvent
    | AgentStateEvent
    | UserStateEvent
    | ConversationItemEvent
    | ToolCallEvent
    | CallEndedEvent
    | ContextUsedEvent
    | ContextDroppedEvent
    | EventsLostEvent
    | SnapshotEvent
)

Event = SpeechEvent | SessionEvent
"""Every event the agent sends (everything but acks)."""
EVENT_KINDS: Final[dict[str, str]] = {
    "speech_started": "speech",
    "speech_finished": "speech",
    "speech_failed": "speech",
    "context_used": "context",
    "context_dropped": "context",
}
"""Event types a subscription names by their kind (``speech``, ``context``); every other
subscribable event by its type. ``events_lost`` and ``snapshot`` go to whoever resumes."""


def event_kind(event_type: str) -> str:
    """The name a subscription uses for events of ``event_type``."""
    return EVENT_KINDS.get(event_type, event_type)


ServerMessage = SuccessAck | ErrorAck | Event


def error_ack(
    code: ErrorCode, message: str, request_id: str | None, *, retry_after: float | None = None
) -> ErrorAck:
    return ErrorAck(id=request_id, error=code, message=message, retry_after=retry_after)


_ack_adapter: TypeAdapter[SuccessAck | ErrorAck] = TypeAdapter(SuccessAck | ErrorAck)
_event_adapter: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])


def parse_ack(raw: bytes | str) -> SuccessAck | ErrorAck:
    """Parse an ack received by a sender (raises ``pydantic.ValidationError`` if malformed)."""
    return _ack_adapter.validate_json(raw)


def parse_server_message(raw: bytes | str) -> ServerMessage:
    """Parse anything the receiver sends on ``ACK_TOPIC``.

    Raises:
        ValueError: Malformed (pydantic's ``ValidationError`` is one), nested too deeply
            included.
    """
    obj = load_untrusted_json(raw)
    if isinstance(obj, dict) and obj.get("type") == "ack":
        return _ack_adapter.validate_python(obj)
    return _event_adapter.validate_python(obj)


def request_json_schema() -> dict[str, Any]:
    """JSON Schema of the request union, for senders in other languages."""
    return _request_adapter.json_schema()


def packet_json_schema() -> dict[str, Any]:
    """JSON Schema of everything a sender may put on the topic: a request, or a signed envelope
    around one (``sender`` included)."""
    return _packet_adapter.json_schema()


def ack_json_schema() -> dict[str, Any]:
    """JSON Schema of an ack (success or error) exactly as the receiver sends it: fields that
    are always written are required, and the optional ones (absent when unset) are never null."""
    return _as_sent(_ack_adapter.json_schema(mode="serialization"))


def parse_event(raw: bytes | str) -> Event:
    """Parse one event the receiver sent (raises ``ValueError`` if malformed)."""
    return _event_adapter.validate_python(load_untrusted_json(raw))


def server_message_json_schema() -> dict[str, Any]:
    """JSON Schema of everything the receiver sends on ``ACK_TOPIC`` (acks, speech events,
    session events), as sent (see :func:`ack_json_schema`)."""
    return _as_sent(TypeAdapter(ServerMessage).json_schema(mode="serialization"))


_SENT_MODELS: Final[tuple[type[BaseModel], ...]] = (
    SuccessAck, ErrorAck, AckData, AgentStateInfo, ContextEntryInfo, IOState, HistoryItem,
    SpeechStartedEvent, SpeechFinishedEvent, UserTranscriptEvent, AgentTranscriptEvent,
    AgentStateEvent, UserStateEvent, ConversationItemEvent, ToolCallEvent, CallEndedEvent,
    SpeechFailedEvent, ContextUsedEvent, ContextDroppedEvent, LlmCall, PendingSpeech, Snapshot,
    EventsLostEvent, SnapshotEvent,
)


def _as_sent(schema: dict[str, Any]) -> dict[str, Any]:
    return as_sent_schema(schema, _SENT_MODELS)


def as_sent_schema(
    schema: dict[str, Any],
    models: tuple[type[BaseModel], ...],
    *,
    omitted: frozenset[tuple[str, str]] = frozenset(),
) -> dict[str, Any]:
    """Make a serialization schema say what the serializer writes, for ``models``' ``$defs``:
    a field with a default is always written (required), and one excluded when None
    (``exclude_if``, or named in ``omitted`` as ``(model, field)``) is optional, never null."""
    by_name = {model.__name__: model for model in models}
    for name, definition in schema.get("$defs", {}).items():
        model = by_name.get(name)
        if model is None:
            continue
        required: list[str] = []
        for field_name, field in model.model_fields.items():
            prop = definition["properties"][field_name]
            if field.exclude_if is None and (name, field_name) not in omitted:
                required.append(field_name)
                continue
            prop.pop("default", None)
            branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
            if "anyOf" in prop and len(branches) == 1:
                del prop["anyOf"]
                prop.update(branches[0])
            elif "anyOf" in prop:
                prop["anyOf"] = branches
        definition["required"] = required
    return schema


def wire_json_schemas() -> dict[str, dict[str, Any]]:
    """The wire's unions by name, each a JSON Schema: ``Request``, ``Packet`` (what a sender
    may send), ``Ack``, ``SpeechEvent``, ``SessionEvent`` and ``ServerMessage`` (what the
    receiver sends, as sent)."""
    def sent(union: Any) -> dict[str, Any]:
        return _as_sent(TypeAdapter(union).json_schema(mode="serialization"))

    return {
        "Request": request_json_schema(),
        "Packet": packet_json_schema(),
        "Ack": ack_json_schema(),
        "SpeechEvent": sent(SpeechEvent),
        "SessionEvent": sent(SessionEvent),
        "ServerMessage": server_message_json_schema(),
    }


def merged_json_schema(parts: dict[str, dict[str, Any]], *, title: str) -> dict[str, Any]:
    """One JSON Schema document for code generators: every part's ``$defs`` together, and each
    part itself as a definition under its name (its root properties name them all).

    Raises:
        ValueError: Two parts define one name differently.
    """
    defs: dict[str, Any] = {}
    named: dict[str, Any] = {}
    for name, schema in parts.items():
        part = dict(schema)
        for def_name, definition in part.pop("$defs", {}).items():
            if defs.setdefault(def_name, definition) != definition:
                raise ValueError(f"two schemas define {def_name} differently")
        part.pop("discriminator", None)  # an OpenAPI keyword; the union is the same without it
        if part != {"$ref": f"#/$defs/{name}"}:  # else: already filed under its own name
            named[name] = {**part, "title": name}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {name: {"$ref": f"#/$defs/{name}"} for name in parts},
        "additionalProperties": False,
        "$defs": {**dict(sorted(defs.items())), **named},
    }
