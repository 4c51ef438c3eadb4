"""The OpenAPI 3.1 document served at ``GET /openapi.json``, built from the pydantic models."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ...version import __version__
from ..directory.webhook import WEBHOOK_PATH
from ..models import (
    CONTROL_BODIES,
    AddContextBody,
    AddContextResponse,
    ControlEndpoint,
    ControlResponse,
    ErrorResponse,
    HealthResponse,
    SpeakBody,
    SpeakResponse,
)

_REF: Final = "#/components/schemas/{model}"

# the call-control endpoints: (summary, operationId, an example body)
_CONTROL_DOCS: Final[dict[ControlEndpoint, tuple[str, str, dict[str, Any]]]] = {
    "remove-context": (
        "Remove the context entry added under a key",
        "removeContext",
        {"key": "order", "room_id": "room_123"},
    ),
    "get-state": (
        "The agent's state, its context entries, pending speeches and I/O switches",
        "getState",
        {"room_id": "room_123"},
    ),
    "end-call": (
        "End the call (after what is playing and queued, by default)",
        "endCall",
        {"after_speech": True, "reason": "Order complete", "room_id": "room_123"},
    ),
    "interrupt": (
        "Stop what the agent is saying now",
        "interrupt",
        {"force": False, "room_id": "room_123"},
    ),
    "cancel": (
        "Drop one speech by the request_id of the call that started it",
        "cancel",
        {"target_id": "promo-42", "room_id": "room_123"},
    ),
    "update-io": (
        "Mute or unmute the agent's voice, listening to the user, transcription",
        "updateIo",
        {"user_audio": False, "room_id": "room_123"},
    ),
    "update-instructions": (
        "Add to the agent's instructions, or replace them",
        "updateInstructions",
        {"instructions": "Answer in French.", "mode": "append", "room_id": "room_123"},
    ),
    "reset-instructions": (
        "Give the agent its own instructions back",
        "resetInstructions",
        {"room_id": "room_123"},
    ),
    "user-message": (
        "Add text as the user's own turn (and let the agent answer it)",
        "userMessage",
        {"text": "I'd like to change my delivery address.", "room_id": "room_123"},
    ),
    "get-history": (
        "The newest conversation items",
        "getHistory",
        {"limit": 20, "room_id": "room_123"},
    ),
}

# (status, description, error codes possible) shared by both endpoints
_ERRORS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (400, "The body or a header is invalid.", ("VALIDATION_ERROR",)),
    (401, "The api-secret header is missing or wrong.", ("UNAUTHORIZED",)),
    (
        404,
        "No such agent for this api-secret, or no room where it is live (cancel: no such "
        "speech queued or playing).",
        ("AGENT_NOT_FOUND", "NO_ACTIVE_ROOMS", "NOT_FOUND"),
    ),
    (
        409,
        "The agent was busy (speech that must not queue; interrupt without force of speech "
        "that does not allow interruptions), or the first request with this Idempotency-Key "
        "is still being delivered (retry after Retry-After seconds for its answer).",
        ("BUSY", "REQUEST_IN_PROGRESS"),
    ),
    (
        408,
        "The body did not arrive within the body timeout; the connection is closed.",
        ("REQUEST_TIMEOUT",),
    ),
    (413, "The body, or the message built from it, is too large.", ("PAYLOAD_TOO_LARGE",)),
    (
        422,
        "The Idempotency-Key was already used (within 10 minutes) for a request with another "
        "body or endpoint; nothing was sent. Send a new key.",
        ("ID_REUSED",),
    ),
    (
        429,
        "Too many requests for this api-secret, or for the agent. See Retry-After.",
        ("RATE_LIMITED",),
    ),
    (502, "The agent refused or failed to apply the message.", ("INTERNAL_ERROR",)),
    (
        503,
        "LiveKit cannot be reached, the agent's session is not running (or the call ended), or "
        "the replicas' shared state (Redis) cannot be reached (nothing was sent).",
        ("LIVEKIT_UNAVAILABLE", "NOT_READY", "STATE_UNAVAILABLE"),
    ),
    (504, "No agent answered in time; retry with the same Idempotency-Key.", ("TIMEOUT",)),
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _operation(
    *,
    summary: str,
    operation_id: str,
    body: type[BaseModel],
    response: type[BaseModel],
    examples: dict[str, Any],
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "Delivered to at least one room.",
            "content": _json(response),
            "headers": {
                "Idempotent-Replayed": {
                    "description": (
                        "true when this is the first answer to this Idempotency-Key given "
                        "again (nothing was sent again); absent otherwise. Any status may "
                        "carry it."
                    ),
                    "schema": {"type": "string", "enum": ["true"]},
                }
            },
        }
    }
    for status, description, codes in _ERRORS:
        responses[str(status)] = {
            "description": f"{description} error: {', '.join(codes)}.",
            "content": _json(ErrorResponse),
        }
        if status in (409, 429, 503):
            responses[str(status)]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
    return {
        "summary": summary,
        "operationId": operation_id,
        "security": [{"apiSecret": []}],
        "parameters": [
            {
                "name": "agent_code",
                "in": "path",
                "required": True,
                "description": "The agent's code, e.g. A12345678.",
                "schema": {"type": "string"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Becomes the message id (at most 128 characters): a retried call with the "
                    "same key, on any gateway replica, gets the first call's answer again "
                    "(Idempotent-Replayed: true) and nothing is sent again; while the first is "
                    "still being delivered, the retry waits for it (409 REQUEST_IN_PROGRESS if "
                    "that takes too long). An answer with a room that timed out or could not be "
                    "reached is not kept: the retry delivers again, and each agent applies the "
                    "id once. A key is bound to its first request for 10 minutes: reusing it "
                    "with another body or endpoint is a 422 ID_REUSED."
                ),
                "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"\S"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(body), "examples": examples}},
        },
        "responses": responses,
    }


def build_openapi(*, events: bool = True, webhook: bool = False) -> dict[str, Any]:
    """The OpenAPI document of the gateway: the routes every gateway serves, plus those its
    backend adds (``create_app`` says which it serves).

    Args:
        events: ``GET /v1/agent/{agent_code}/events`` (a backend holding room connections).
        webhook: ``POST /livekit/webhook`` (a backend keeping an agent directory).
    """
    models: tuple[type[BaseModel], ...] = (
        SpeakBody,
        AddContextBody,
        SpeakResponse,
        AddContextResponse,
        *CONTROL_BODIES,
        ControlResponse,
        ErrorResponse,
        HealthResponse,
    )
    _, schemas = models_json_schema(
        [(model, "validation") for model in models], ref_template=_REF
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imaginex Agent Context API (self-hosted gateway)",
            "version": __version__,
            "description": (
                "Make LiveKit agents running ContextPlugin speak, or give them background "
                "context. The same API as the imaginex platform, served in front of a "
                "self-hosted LiveKit server."
            ),
        },
        "paths": _paths(events=events, webhook=webhook),
        "components": {
            "schemas": {**schemas.get("$defs", {}), **_ROUTE_SCHEMAS},
            "securitySchemes": {
                "apiSecret": {"type": "apiKey", "in": "header", "name": "api-secret"},
                "livekitWebhook": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": (
                        "The JWT LiveKit signs each webhook with, by the gateway's LiveKit API "
                        "key; its sha256 claim is the body's hash. A 'Bearer ' prefix is "
                        "accepted."
                    ),
                },
            },
        },
    }


def _paths(*, events: bool, webhook: bool) -> dict[str, Any]:
    """The endpoints: the API calls (with examples), the health check, this document, and
    the routes the backend adds."""
    paths: dict[str, Any] = {
        "/v1/agent/{agent_code}/speak": {
            "post": _operation(
                summary="Make the agent speak",
                operation_id="speak",
                body=SpeakBody,
                response=SpeakResponse,
                examples={
                    "speak": {
                        "value": {
                            "message": "Hello! I have an important update for you.",
                            "room_id": "room_123",
                        }
                    }
                },
            )
        },
        "/v1/agent/{agent_code}/add-context": {
            "post": _operation(
                summary="Add background context, or speak it (type: speak)",
                operation_id="addContext",
                body=AddContextBody,
                response=AddContextResponse,
                examples={
                    "add_context": {
                        "value": {
                            "context": "User John Smith is a premium customer.",
                            "type": "add_context",
                            "room_id": "room_456",
                        }
                    },
                    "speak": {
                        "value": {
                            "context": "Your issue has been resolved!",
                            "type": "speak",
                            "room_id": "support_session_1",
                        }
                    },
                },
            )
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": {"200": {"description": "Up.", "content": _json(HealthResponse)}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "The OpenAPI document of this gateway.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    paths.update(_control_paths())
    if events:
        paths.update(_events_path())
    if webhook:
        paths.update(_webhook_path())
    return paths


def _control_paths() -> dict[str, Any]:
    """The call-control endpoints (protocol v1.1), one per body model."""
    paths: dict[str, Any] = {}
    for model, endpoint in CONTROL_BODIES.items():
        summary, operation_id, example = _CONTROL_DOCS[endpoint]
        paths[f"/v1/agent/{{agent_code}}/{endpoint}"] = {
            "post": _operation(
                summary=summary,
                operation_id=operation_id,
                body=model,
                response=ControlResponse,
                examples={operation_id: {"value": example}},
            )
        }
    return paths


def _events_path() -> dict[str, Any]:
    """``GET .../events``: a room's live events as Server-Sent Events."""

    def query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> Any:
        return {
            "name": name, "in": "query", "required": required, "description": description,
            "schema": schema,
        }

    errors = {
        str(status): {"description": f"{description} error: {', '.join(codes)}.",
                      "content": _json(ErrorResponse)}
        for status, description, codes in _ERRORS
        if status != 408  # no body to wait for
    }
    return {
        "/v1/agent/{agent_code}/events": {
            "get": {
                "summary": "Stream a room's live events (Server-Sent Events)",
                "description": (
                    "The gateway subscribes to the agent's session events on the caller's "
                    "behalf (the agent must grant the gateway's identity the 'subscribe' "
                    "permission). Each event is 'id: <seq>', 'event: <type>' and "
                    "'data: <JSON>'; a ': heartbeat' comment is sent every 15 s while nothing "
                    "happens; the stream ends after call_ended or when the agent leaves the "
                    "room. Resumable: a client that reconnects with Last-Event-ID (a browser's "
                    "EventSource does it by itself), on this replica or another, first gets "
                    "what it missed (marked replay), or events_lost and a fresh snapshot when "
                    "the agent no longer holds it, then the live events: no gap, nothing twice."
                ),
                "operationId": "events",
                "security": [{"apiSecret": []}],
                "parameters": [
                    {"name": "agent_code", "in": "path", "required": True,
                     "description": "The agent's code, e.g. A12345678.",
                     "schema": {"type": "string"}},
                    query("room_id", "The room to watch.", {"type": "string"}, required=True),
                    query(
                        "events",
                        "Comma-separated event types, or the kinds speech (speech_started, "
                        "speech_finished, speech_failed) and context (context_used, "
                        "context_dropped) (default: all); call_ended always comes.",
                        {"type": "string", "example": "user_transcript,agent_transcript"},
                    ),
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "description": "Resume after this event's id (its seq): what the agent "
                     "sent after it comes first.",
                     "schema": {"type": "string", "pattern": "^[0-9]*$"}},
                    query(
                        "last_event_id",
                        "The same as the Last-Event-ID header, for a client that cannot set "
                        "headers.",
                        {"type": "integer", "minimum": 0},
                    ),
                    query("interim", "Also interim user transcripts.",
                          {"type": "boolean", "default": False}),
                    query("tool_arguments", "Also each tool call's arguments.",
                          {"type": "boolean", "default": False}),
                    query(
                        "playout",
                        "Also the playout events (speech_started, speech_finished, "
                        "speech_failed): from a v1.3 agent those of every speech of the call, "
                        "from an older agent those of the speeches sent through this gateway's "
                        "room connection.",
                        {"type": "boolean", "default": False},
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        # each event, as SSE tools read a stream's schema: its fields
                        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                    },
                    **errors,
                },
            }
        }
    }


_SSE_EVENT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "description": "The event's type."},
        "data": {"type": "string", "description": "The event's JSON."},
        "id": {"type": "string", "description": "Its seq (v1.3): the Last-Event-ID to resume."},
    },
    "required": ["event", "data"],
}
"""One Server-Sent Event of ``GET .../events`` (the ``: heartbeat`` comments are not events)."""


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null: protobuf's JSON form reads null as the field's default."""
    return {"anyOf": [schema, {"type": "null"}]}


_ACCEPTED: Final = "Accepted"
# the bodies of the route LiveKit calls, which no pydantic model reads
_ROUTE_SCHEMAS: Final[dict[str, Any]] = {
    _ACCEPTED: {
        "type": "object",
        "properties": {"success": {"const": True}},
        "required": ["success"],
    },
    "WebhookEvent": {
        "type": "object",
        "description": (
            "livekit.WebhookEvent in protobuf's JSON form, as livekit-api's WebhookReceiver "
            "reads it: any field may be null (its default), an enum is its name or its number, "
            "unknown fields are ignored. participant_joined, participant_left, "
            "participant_connection_aborted and room_finished keep the agent directory; other "
            "events are taken and ignored."
        ),
        "properties": {
            "event": _nullable({"type": "string", "examples": ["participant_joined"]}),
            "id": _nullable({"type": "string"}),
            "room": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "name": _nullable({"type": "string"}),
                        "sid": _nullable({"type": "string"}),
                    },
                }
            ),
            "participant": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "identity": _nullable({"type": "string"}),
                        "sid": _nullable({"type": "string"}),
                        "kind": _nullable(
                            {"type": ["string", "integer"], "examples": ["AGENT"]}
                        ),
                        "attributes": _nullable(
                            {"type": "object", "additionalProperties": {"type": "string"}}
                        ),
                    },
                }
            ),
        },
    },
}


def _error(description: str, *codes: str) -> dict[str, Any]:
    return {
        "description": f"{description} error: {', '.join(codes)}.",
        "content": _json(ErrorResponse),
    }


def _webhook_path() -> dict[str, Any]:
    """``POST /livekit/webhook``: LiveKit's webhooks, feeding the agent directory."""
    return {
        WEBHOOK_PATH: {
            "post": {
                "summary": "LiveKit's webhooks (configure the server to send them here)",
                "operationId": "livekitWebhook",
                "security": [{"livekitWebhook": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/webhook+json": {"schema": _ref_name("WebhookEvent")}},
                },
                "responses": {
                    "200": {
                        "description": "Verified and applied to the agent directory.",
                        "content": {"application/json": {"schema": _ref_name(_ACCEPTED)}},
                    },
                    "401": _error(
                        "Not signed with this gateway's LiveKit API key, signed for another "
                        "body, or not a webhook event",
                        "UNAUTHORIZED",
                    ),
                    "408": _error("The body did not arrive in time", "REQUEST_TIMEOUT"),
                    "413": _error("The body is too large", "PAYLOAD_TOO_LARGE"),
                    "503": _error(
                        "The agent directory cannot be written (Redis); LiveKit retries",
                        "STATE_UNAVAILABLE",
                    ),
                },
            }
        }
    }


def _ref_name(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}
