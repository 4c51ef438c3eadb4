"""This agent's success acks, written straight to the bytes that go on the wire.

A success ack is the one answer every applied message gets, so it is on the hot path. Building
it as two pydantic models and serializing them cost about 9 µs a message; writing the same JSON
from a cached head (everything but the id, the timestamp and the per-request fields) costs a
fraction of that. The bytes are exactly what ``protocol.encode_message(SuccessAck(...))`` makes,
field for field and escape for escape: ``json.encoder.encode_basestring`` escapes strings as
pydantic does (checked over every code point, and pinned by ``tests/receiver/test_ack_writer.py``).
The state in a ``get_state`` answer is serialized by its model (and cached while it does not
change, ``state.StateAnswers``); only an answer too large for one packet, cut to fit, goes
through the ack models.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, Final, Literal

from .. import protocol
from ..errors import ErrorCode
from ..protocol import AckData, AgentStateInfo, MessageType, Request, SuccessAck, error_ack
from .jobs import Success

_INTERNAL_ERROR_MESSAGE: Final = (
    "The agent could not apply the message because of an internal error."
)


def _json_str(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


class AckWriter:
    """Writes the success acks of one agent in one room.

    Args:
        agent_code: Reported in every ack.
        room_name: The room's current name (read per ack: a room is named once it connects).
    """

    def __init__(self, agent_code: str | None, room_name: Callable[[], str]) -> None:
        self._agent_code = agent_code
        self._room_name = room_name
        self._room: str | None = None
        # (context type, message) -> the ack from after the id up to the timestamp's value
        self._heads: dict[tuple[str, str], str] = {}

    def success(
        self,
        request: Request,
        message: str,
        *,
        speech_id: str | None = None,
        method: Literal["say", "generate_reply"] | None = None,
        fallback: Literal["generate_reply"] | None = None,
        key: str | None = None,
        removed: bool | None = None,
        evicted: int | None = None,
        state: AgentStateInfo | None = None,
        state_json: str | None = None,
    ) -> Success:
        """The success ack for ``request``; fields left None are left out, as on the models.

        ``state_json`` is a state already encoded (``encode_message(state)``, decoded): a
        ``get_state`` answer reuses it while nothing it reports has changed.
        """
        parts = [
            '{"type":"ack","id":',
            _json_str(request.id),
            self._head(request.type, message),
            protocol.utc_timestamp(),
            '"',
        ]
        # in AckData's field order
        if speech_id is not None:
            parts += (',"speech_id":', encode_basestring(speech_id))
        if method is not None:
            parts += (',"method":"', method, '"')
        if fallback is not None:
            parts += (',"fallback":"', fallback, '"')
        if key is not None:
            parts += (',"key":', encode_basestring(key))
        if removed is not None:
            parts.append(',"removed":true' if removed else ',"removed":false')
        if evicted is not None:
            parts += (',"evicted":', str(evicted))
        if state is not None:
            state_json = protocol.encode_message(state).decode()
        if state_json is not None:
            parts += (',"state":', state_json)
        parts.append("}}")
        return Success("".join(parts).encode())

    def _head(self, context_type: MessageType, message: str) -> str:
        room = self._room_name()
        if room != self._room:
            self._room = room
            self._heads.clear()
        head = self._heads.get((context_type, message))
        if head is None:
            head = (
                f',"success":true,"message":{_json_str(message)},"data":{{'
                f'"agent_code":{_json_str(self._agent_code)},"context_type":"{context_type}",'
                f'"delivered_to_rooms":1,"room_id":{_json_str(room)},"timestamp":"'
            )
            self._heads[(context_type, message)] = head
        return head

    def success_model(self, request: Request, message: str, **data: Any) -> SuccessAck:
        """The same ack as a model, for an answer that is inspected before it is sent."""
        return SuccessAck(
            id=request.id,
            message=message,
            data=AckData(
                agent_code=self._agent_code,
                context_type=request.type,
                room_id=self._room_name(),
                timestamp=protocol.utc_timestamp(),
                **data,
            ),
        )


def internal_error(request_id: str | None) -> protocol.ErrorAck:
    """The answer to a message an unexpected failure kept from being applied."""
    return error_ack(ErrorCode.INTERNAL_ERROR, _INTERNAL_ERROR_MESSAGE, request_id)


def as_duplicate(first: bytes) -> Success:
    """The first ack of a request again, marked ``"duplicate": true``.

    ``duplicate`` is the last field of ``SuccessAck`` and absent from a first ack, so it is
    written in before the final brace: byte for byte what the model would serialize.
    """
    return Success(first[:-1] + b',"duplicate":true}', duplicate=True)
