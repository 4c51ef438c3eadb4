"""The gateway's HTTP bodies, as the platform's Agent Context API documents them.

Request bodies accept exactly the documented fields (others are ignored); responses keep the
documented shape and add ``request_id`` and a per-room ``rooms`` list inside ``data``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    TypeAdapter,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from ..errors import invalid_type_message
from ..protocol import (
    DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_ID_LENGTH,
    MAX_KEY_LENGTH,
    MAX_REASON_LENGTH,
    InstructionsMode,
    SpeakMode,
    as_sent_schema,
    has_visible_text,
)

ContextType = Literal["speak", "add_context"]
ControlEndpoint = Literal[
    "remove-context",
    "get-state",
    "end-call",
    "interrupt",
    "cancel",
    "update-io",
    "update-instructions",
    "reset-instructions",
    "user-message",
    "get-history",
]
CONTEXT_TYPES: Final[tuple[str, ...]] = ("speak", "add_context")
INVALID_TYPE_MESSAGE: Final = invalid_type_message(CONTEXT_TYPES)

NonBlank = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]


def _visible(value: str) -> str:
    # the agent's own rule (protocol.py), checked before any room is joined; a lone surrogate
    # is already refused by pydantic itself (string_unicode)
    if not has_visible_text(value):
        raise PydanticCustomError("invisible_text", "no visible text")
    return value


VisibleText = Annotated[NonBlank, AfterValidator(_visible)]
"""Text that can be spoken or used: not only invisible, format or control characters."""


class _Body(BaseModel):
    # strict: 5 is not a message and "true" is not a room id; unknown fields are ignored as the
    # platform ignores them
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    text_field: ClassVar[str | None] = None
    """The field holding the long text, if any (named when the message is too long)."""

    def long_text(self) -> str | None:
        """The value of ``text_field``, for the debug log."""
        value = getattr(self, self.text_field) if self.text_field else None
        return value if isinstance(value, str) else None


class SpeakBody(_Body):
    """``POST /v1/agent/{agent_code}/speak``: make the agent say ``message`` now."""

    text_field: ClassVar[str | None] = "message"

    message: VisibleText = Field(description="What the agent says, verbatim, through its TTS.")
    room_id: NonBlank | None = Field(
        default=None, description="Only this room; by default every room where the agent is live."
    )
    end_call_after: bool = Field(
        default=False,
        description="Hang up once this speech has played out (not if the user cut it).",
    )
    add_to_history: bool = Field(
        default=True,
        description="false: keep it out of the LLM's context and the history (fillers).",
    )
    mode: SpeakMode | None = Field(
        default=None,
        description="queue (the default): after what is playing and queued; interrupt: cut "
        "what is playing first; if_idle: only if nothing is playing or queued (else 409 BUSY).",
    )

    def fields(self) -> dict[str, Any]:
        """The protocol request's fields (without id, agent code and room)."""
        return {"type": "speak", **self.model_dump(exclude={"room_id"}, exclude_none=True)}


class AddContextBody(_Body):
    """``POST /v1/agent/{agent_code}/add-context``: give background knowledge, or speak it."""

    text_field: ClassVar[str | None] = "context"

    context: VisibleText = Field(
        description="The knowledge to add, or with type speak the text."
    )
    type: ContextType = Field(
        default="add_context",
        description="add_context (default): nothing is spoken. speak: the context is spoken.",
    )
    room_id: NonBlank | None = Field(
        default=None, description="Only this room; by default every room where the agent is live."
    )
    key: Annotated[NonBlank, StringConstraints(max_length=MAX_KEY_LENGTH)] | None = Field(
        default=None,
        description="add_context: a later add with the same key replaces this entry in place, "
        "and remove-context removes it. Ignored with type speak.",
    )

    def fields(self) -> dict[str, Any]:
        """The protocol request's fields (without id, agent code and room)."""
        fields: dict[str, Any] = {"type": self.type, "context": self.context}
        if self.key is not None and self.type == "add_context":
            fields["key"] = self.key
        return fields


class ControlBody(_Body):
    """A call-control endpoint's body: the protocol message's own fields, and ``room_id``."""

    message_type: ClassVar[str]
    """The protocol type the body becomes."""

    room_id: NonBlank | None = Field(
        default=None, description="Only this room; by default every room where the agent is live."
    )

    def fields(self) -> dict[str, Any]:
        """The protocol request's fields (without id, agent code and room)."""
        dumped = self.model_dump(exclude={"room_id"}, exclude_none=True)
        return {"type": self.message_type, **dumped}


class RemoveContextBody(ControlBody):
    """``POST /v1/agent/{agent_code}/remove-context``: remove the context entry added under a
    key (succeeds with ``removed: false`` when there is none)."""

    message_type: ClassVar[str] = "remove_context"

    key: Annotated[NonBlank, StringConstraints(max_length=MAX_KEY_LENGTH)] = Field(
        description="The key the entry was added under (add-context's key)."
    )


class GetStateBody(ControlBody):
    """``POST /v1/agent/{agent_code}/get-state``: the agent's and the user's state, the
    context entries the agent holds, the pending speeches and the I/O switches."""

    message_type: ClassVar[str] = "get_state"


class EndCallBody(ControlBody):
    """``POST /v1/agent/{agent_code}/end-call``: end the conversation."""

    message_type: ClassVar[str] = "end_call"
    text_field: ClassVar[str | None] = "reason"

    after_speech: bool = Field(
        default=True,
        description="true: what is playing and queued finishes first; false: cut at once.",
    )
    reason: Annotated[str, StringConstraints(max_length=MAX_REASON_LENGTH)] | None = Field(
        default=None, description="Why; it travels in the call_ended event and the agent's log."
    )


class InterruptBody(ControlBody):
    """``POST /v1/agent/{agent_code}/interrupt``: stop what the agent is saying now."""

    message_type: ClassVar[str] = "interrupt"

    force: bool = Field(
        default=False,
        description="Also stop speech that does not allow interruptions (else 409 BUSY).",
    )


class CancelBody(ControlBody):
    """``POST /v1/agent/{agent_code}/cancel``: drop one speech the gateway sent, by its id."""

    message_type: ClassVar[str] = "cancel"

    target_id: Annotated[NonBlank, StringConstraints(max_length=MAX_ID_LENGTH)] = Field(
        description="The request_id of the speak (or user-message) call whose speech to drop."
    )


class UpdateIOBody(ControlBody):
    """``POST /v1/agent/{agent_code}/update-io``: mute or unmute the agent, the user, the
    transcription."""

    message_type: ClassVar[str] = "update_io"
    # the agents' rule (protocol.UpdateIORequest), so that the document says it too
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "boolean"}}}
                for name in ("agent_audio", "user_audio", "transcription")
            ]
        }
    )

    agent_audio: bool | None = Field(default=None, description="The agent's voice on or off.")
    user_audio: bool | None = Field(
        default=None, description="Listening to the user on or off."
    )
    transcription: bool | None = Field(
        default=None, description="Transcription output on or off."
    )


class UpdateInstructionsBody(ControlBody):
    """``POST /v1/agent/{agent_code}/update-instructions``: steer the current agent."""

    message_type: ClassVar[str] = "update_instructions"
    text_field: ClassVar[str | None] = "instructions"

    instructions: VisibleText = Field(description="The instructions to add, or the new ones.")
    mode: InstructionsMode = Field(
        default="append",
        description="append (default): added to the agent's own; replace: instead of them.",
    )


class ResetInstructionsBody(ControlBody):
    """``POST /v1/agent/{agent_code}/reset-instructions``: the agent's own instructions back."""

    message_type: ClassVar[str] = "reset_instructions"


class UserMessageBody(ControlBody):
    """``POST /v1/agent/{agent_code}/user-message``: text as the user's own turn."""

    message_type: ClassVar[str] = "user_message"
    text_field: ClassVar[str | None] = "text"

    text: VisibleText = Field(description="What the user says.")
    respond: bool = Field(default=True, description="Let the agent answer it.")
    interrupt: bool = Field(default=False, description="Stop the agent's current speech first.")


class GetHistoryBody(ControlBody):
    """``POST /v1/agent/{agent_code}/get-history``: the newest conversation items."""

    message_type: ClassVar[str] = "get_history"

    limit: int = Field(
        default=DEFAULT_HISTORY_LIMIT,
        ge=1,
        le=MAX_HISTORY_LIMIT,
        description="How many of the newest items, at most (fewer if they cannot fit a packet).",
    )


def _is_none(value: object) -> bool:
    return value is None


CONTROL_BODIES: Final[dict[type[ControlBody], ControlEndpoint]] = {
    RemoveContextBody: "remove-context",
    GetStateBody: "get-state",
    EndCallBody: "end-call",
    InterruptBody: "interrupt",
    CancelBody: "cancel",
    UpdateIOBody: "update-io",
    UpdateInstructionsBody: "update-instructions",
    ResetInstructionsBody: "reset-instructions",
    UserMessageBody: "user-message",
    GetHistoryBody: "get-history",
}
"""Each call-control body and its endpoint, ``POST /v1/agent/{agent_code}/<endpoint>``."""


class RoomResult(BaseModel):
    """What happened in one room the message was sent to."""

    model_config = ConfigDict(frozen=True)

    room: str
    delivered: bool = Field(description="The agent in this room acknowledged the message.")
    error: str | None = Field(default=None, description="The error code when not delivered.")
    message: str | None = Field(default=None, description="A sentence saying why, if not.")
    duplicate: bool = Field(
        default=False,
        description="The agent had already applied a message with this Idempotency-Key.",
    )
    result: dict[str, Any] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Call-control endpoints: what the agent reported beyond success (io, "
        "history, speech_id, ...). Absent otherwise.",
    )


class SpeakData(BaseModel):
    model_config = ConfigDict(frozen=True)

    agent_code: str
    delivered_to_rooms: int = Field(description="Rooms whose agent acknowledged the message.")
    timestamp: str = Field(description="ISO 8601 UTC.")
    request_id: str = Field(
        description="The message id: the Idempotency-Key header, or one the gateway made up."
    )
    rooms: list[RoomResult]


class AddContextData(BaseModel):
    model_config = ConfigDict(frozen=True)

    agent_code: str
    context_type: ContextType
    delivered_to_rooms: int = Field(description="Rooms whose agent acknowledged the message.")
    timestamp: str = Field(description="ISO 8601 UTC.")
    request_id: str = Field(
        description="The message id: the Idempotency-Key header, or one the gateway made up."
    )
    rooms: list[RoomResult]


class ControlData(BaseModel):
    model_config = ConfigDict(frozen=True)

    agent_code: str
    context_type: str = Field(description="The message type sent, e.g. end_call.")
    delivered_to_rooms: int = Field(description="Rooms whose agent acknowledged the message.")
    timestamp: str = Field(description="ISO 8601 UTC.")
    request_id: str = Field(
        description="The message id: the Idempotency-Key header, or one the gateway made up."
    )
    rooms: list[RoomResult]


AnswerData = SpeakData | AddContextData | ControlData
"""The ``data`` of an answer: per endpoint, the fields and the per-room list."""


class SpeakResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    success: Literal[True] = True
    message: str = Field(examples=["Speech triggered successfully"])
    data: SpeakData


class AddContextResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    success: Literal[True] = True
    message: str = Field(examples=["Context added successfully"])
    data: AddContextData


class ControlResponse(BaseModel):
    """The answer of every call-control endpoint."""

    model_config = ConfigDict(frozen=True)

    success: Literal[True] = True
    message: str = Field(examples=["Call ending"])
    data: ControlData


class ErrorResponse(BaseModel):
    """Every error. ``data`` is present only when the message was sent and no agent took it."""

    model_config = ConfigDict(frozen=True)

    success: Literal[False] = False
    error: str = Field(examples=["AGENT_NOT_FOUND"])
    message: str = Field(examples=["Agent with code 'A12345678' not found"])
    data: SpeakData | AddContextData | ControlData | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if dumped.get("data", 0) is None:
            del dumped["data"]
        return dumped


class HealthResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Literal["ok"] = "ok"
    version: str


def gateway_json_schemas() -> dict[str, dict[str, Any]]:
    """The REST API's bodies (as accepted) and answers (as sent), each a JSON Schema by name,
    for code generators (the TypeScript gateway client's types come from them)."""
    answers = (
        RoomResult, SpeakData, AddContextData, ControlData, SpeakResponse, AddContextResponse,
        ControlResponse, ErrorResponse, HealthResponse,
    )

    def sent(model: type[BaseModel]) -> dict[str, Any]:
        # the validation schema: ErrorResponse's serializer (it drops a None data) hides its
        # fields from the serialization one, and as_sent_schema says what is written
        schema = TypeAdapter(model).json_schema()
        # the model's own schema is the root here: file it under $defs like the others
        defs = schema.pop("$defs", {})
        schema = {"$defs": {**defs, model.__name__: schema}, "$ref": f"#/$defs/{model.__name__}"}
        return as_sent_schema(schema, answers, omitted=frozenset({("ErrorResponse", "data")}))

    body_models: tuple[type[_Body], ...] = (SpeakBody, AddContextBody, *CONTROL_BODIES)
    bodies = {model.__name__: TypeAdapter(model).json_schema() for model in body_models}
    return {
        **bodies,
        **{
            model.__name__: sent(model)
            for model in (
                SpeakResponse, AddContextResponse, ControlResponse, ErrorResponse, HealthResponse
            )
        },
    }
