"""The message the gateway sends the agents: a protocol v1 request, signed when configured, and
refused up front when it cannot fit one LiveKit packet.
"""

from __future__ import annotations

from typing import Literal

from .._packet import oversize
from ..protocol import (
    MAX_PAYLOAD_BYTES,
    AddContextRequest,
    ErrorCode,
    SpeakRequest,
)
from ..security import sign_request
from .models import ContextType
from .refusals import Refusal

Endpoint = Literal["speak", "add-context"]


class MessageWriter:
    """Writes the agents' messages.

    Args:
        signing_secret: Sign every message with it (``ContextPlugin(secret=...)``); None: not
            signed.
    """

    def __init__(self, *, signing_secret: str | None) -> None:
        self._signing_secret = signing_secret

    def write(
        self, kind: ContextType, text: str, request_id: str, agent_code: str, room: str | None
    ) -> str:
        """The exact text sent to the agent in ``room`` (None: any room)."""
        request: SpeakRequest | AddContextRequest
        if kind == "speak":
            request = SpeakRequest(
                type="speak", id=request_id, message=text, agent_code=agent_code, room_id=room
            )
        else:
            request = AddContextRequest(
                type="add_context", id=request_id, context=text, agent_code=agent_code, room_id=room
            )
        body = request.model_dump_json(exclude_defaults=True)
        if self._signing_secret:
            return sign_request(body, self._signing_secret)
        return body

    def check_fits(
        self,
        endpoint: Endpoint,
        kind: ContextType,
        text: str,
        request_id: str,
        agent_code: str,
        room: str | None,
    ) -> None:
        """Refuse text that cannot fit, before asking LiveKit anything.

        Raises:
            Refusal: 413 ``PAYLOAD_TOO_LARGE``, naming the body field that is too long.
        """
        size = oversize(self.write(kind, text, request_id, agent_code, room))
        if size is not None:
            field = "message" if endpoint == "speak" else "context"
            raise Refusal(
                413,
                ErrorCode.PAYLOAD_TOO_LARGE.value,
                f"Field '{field}' is too long: the message for the agent would be {size} bytes; "
                f"the limit is {MAX_PAYLOAD_BYTES} bytes (15 KiB).",
            )
