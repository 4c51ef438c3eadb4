"""The gateway's HTTP bodies, as the platform's Agent Context API documents them.

Request bodies accept exactly the documented fields (others are ignored); responses keep the
documented shape and add ``request_id`` and a per-room ``rooms`` list inside ``data``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from ..errors import invalid_type_message
from ..protocol import has_visible_text

ContextType = Literal["speak", "add_context"]
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


class SpeakBody(_Body):
    """``POST /v1/agent/{agent_code}/speak``: make the agent say ``message`` now."""

    message: VisibleText = Field(description="What the agent says, verbatim, through its TTS.")
    room_id: NonBlank | None = Field(
        default=None, description="Only this room; by default every room where the agent is live."
    )


class AddContextBody(_Body):
    """``POST /v1/agent/{agent_code}/add-context``: give background knowledge, or speak it."""

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


class ErrorResponse(BaseModel):
    """Every error. ``data`` is present only when the message was sent and no agent took it."""

    model_config = ConfigDict(frozen=True)

    success: Literal[False] = False
    error: str = Field(examples=["AGENT_NOT_FOUND"])
    message: str = Field(examples=["Agent with code 'A12345678' not found"])
    data: SpeakData | AddContextData | None = None

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
