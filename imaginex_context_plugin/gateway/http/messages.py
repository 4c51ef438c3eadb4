"""The message the gateway sends the agents: a protocol request, signed when configured, and
refused up front when it cannot fit one LiveKit packet (or the agents would refuse it).

Each endpoint turns its body into an :class:`Outgoing`: the protocol request's own fields; the
id, the agent code and the room are added per room by :meth:`MessageWriter.write`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ...errors import ErrorCode, ProtocolError
from ...protocol import (
    MAX_PAYLOAD_BYTES,
    MAX_SENDER_LENGTH,
    Request,
    SignedEnvelope,
    oversize,
    validate_request,
)
from ...security import SplicedBodies, sign_request
from ..models import ControlEndpoint
from ..refusals import Refusal, invalid

Endpoint = Literal["speak", "add-context", "events"] | ControlEndpoint

DEFAULT_GATEWAY_SENDER: Final = "imaginex-gateway"
"""The sender a signed message names (``sign_request(sender=...)``): the same for every replica,
so that an agent applies a request id once whichever replica relays it. It equals the default
participant identity, so agents granting ``permissions`` to that identity keep working."""


@dataclass(frozen=True)
class Outgoing:
    """What one API call sends to every room.

    Args:
        endpoint: The endpoint it came through.
        fields: The protocol request's fields, ``type`` included, without ``id``,
            ``agent_code`` and ``room_id`` (added per room).
        text_field: The body field holding the long text, named when the message is too long.
        text: That field's value (logged at DEBUG only).
    """

    endpoint: Endpoint
    fields: Mapping[str, Any]
    text_field: str | None = None
    text: str | None = None

    @property
    def kind(self) -> str:
        """The protocol message type."""
        kind: str = self.fields["type"]
        return kind

    def fingerprint(self, room_id: str | None) -> tuple[str | None, ...]:
        """What an Idempotency-Key is bound to: the endpoint, the fields and the room."""
        canonical = json.dumps(
            dict(self.fields), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return (self.endpoint, canonical, room_id)


class MessageWriter:
    """Writes the agents' messages.

    Args:
        signing_secret: Sign every message with it (``ContextPlugin(secret=...)``); None: not
            signed.
        sender: The sender signed messages name; None: v1 envelopes without one (the relaying
            participant is the sender, as agents before protocol v1.2 expect). Default
            ``imaginex-gateway``.
    """

    def __init__(
        self, *, signing_secret: str | None, sender: str | None = DEFAULT_GATEWAY_SENDER
    ) -> None:
        if sender is not None:
            try:
                SignedEnvelope(type="signed", body="{}", timestamp=0, signature="", sender=sender)
            except ValueError:  # pydantic's ValidationError is a ValueError
                raise ValueError(
                    f"sender must be 1 to {MAX_SENDER_LENGTH} visible characters, no control "
                    "characters: the agents would refuse every message naming it"
                ) from None
        self._signing_secret = signing_secret
        self._sender = sender
        # the request last written, without its room: a fan-out writes the same request for
        # every room, so it is validated once, and each room's copy is spliced from one dump
        self._last: _Written | None = None
        # the room_id of that dump: a string no room is, found once in its JSON
        self._placeholder = f"\x00{secrets.token_hex(16)}\x00"
        self._placeholder_json = json.dumps(self._placeholder)

    @property
    def sender(self) -> str | None:
        """The sender signed messages name (None: none)."""
        return self._sender

    def write(self, outgoing: Outgoing, request_id: str, agent_code: str, room: str | None) -> str:
        """The exact text sent to the agent in ``room`` (None: any room).

        Raises:
            ProtocolError: The fields are not a valid request (checked first by
                :meth:`check_fits`).
        """
        written = self._written(outgoing, request_id, agent_code)
        if room is not None and written.rooms is not None:
            return written.rooms.message(room)
        request = written.request
        if room is not None:
            # a room name is any string LiveKit gave us, as the model's room_id is
            request = request.model_copy(update={"room_id": room})
        body = request.model_dump_json(exclude_defaults=True)
        if self._signing_secret:
            return sign_request(body, self._signing_secret, sender=self._sender)
        return body

    def _written(self, outgoing: Outgoing, request_id: str, agent_code: str) -> _Written:
        last = self._last
        if (
            last is not None
            and last.outgoing is outgoing
            and last.request_id == request_id
            and last.agent_code == agent_code
        ):
            return last
        obj: dict[str, Any] = {**outgoing.fields, "id": request_id, "agent_code": agent_code}
        request = validate_request(obj)
        dumped = request.model_copy(update={"room_id": self._placeholder}).model_dump_json(
            exclude_defaults=True
        )
        parts = dumped.split(self._placeholder_json)
        rooms = None
        if len(parts) == 2:  # else a field held the placeholder too: each room is dumped whole
            rooms = SplicedBodies(
                parts[0], parts[1], secret=self._signing_secret, sender=self._sender
            )
        self._last = _Written(outgoing, request_id, agent_code, request, rooms)
        return self._last

    def check_fits(
        self, outgoing: Outgoing, request_id: str, agent_code: str, room: str | None
    ) -> None:
        """Refuse a message the agents would refuse, or that cannot fit, before asking LiveKit
        anything.

        Raises:
            Refusal: 400 ``VALIDATION_ERROR`` (the agents' own rule says why), or 413
                ``PAYLOAD_TOO_LARGE`` naming the body field that is too long.
        """
        try:
            payload = self.write(outgoing, request_id, agent_code, room)
        except ProtocolError as exc:
            raise invalid(exc.message) from None
        size = oversize(payload)
        if size is not None:
            what = "The request is too large"
            if outgoing.text_field:
                what = f"Field '{outgoing.text_field}' is too long"
            raise Refusal(
                413,
                ErrorCode.PAYLOAD_TOO_LARGE.value,
                f"{what}: the message for the agent would be {size} bytes; "
                f"the limit is {MAX_PAYLOAD_BYTES} bytes (15 KiB).",
            )


@dataclass(frozen=True)
class _Written:
    """A request as validated for one API call, and how each room's copy is written."""

    outgoing: Outgoing
    request_id: str
    agent_code: str
    request: Request
    rooms: SplicedBodies | None
