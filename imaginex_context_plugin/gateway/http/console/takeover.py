"""Taking a call over by voice: the LiveKit token the gateway mints for an operator's browser.

The token lets the operator into one room (the call's, checked to hold an agent the tenant
owns) and nothing else: publish a microphone and no other source, subscribe (to hear the
caller), never publish data (so no data packet and no RPC of the operator ever reaches the
agent, whatever the agent trusts), never change its own metadata. The identity is made up per
take-over (``imaginex-operator-`` and 12 random hex digits), so no agent can have it in its
``allowed_identities``; the participant carries the attribute ``imaginex.operator`` (the calls
list counts operators by it).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from livekit import api

from ...._livekit.settings import LiveKitSettings

__all__ = [
    "OPERATOR_ATTRIBUTE",
    "OPERATOR_IDENTITY_PREFIX",
    "OPERATOR_TOKEN_TTL",
    "OperatorToken",
    "operator_token",
]

OPERATOR_ATTRIBUTE: Final = "imaginex.operator"
"""Set on a console operator's participant (its value: the tenant's name)."""
OPERATOR_IDENTITY_PREFIX: Final = "imaginex-operator-"
OPERATOR_NAME: Final = "Operator"
OPERATOR_TOKEN_TTL: Final = timedelta(minutes=10)
"""Only joining (and rejoining) needs the token; the server refreshes a connected one."""


@dataclass(frozen=True)
class OperatorToken:
    """What the page needs to join: the LiveKit URL, the token and the identity in it."""

    url: str
    token: str
    identity: str
    room: str

    def to_json(self) -> dict[str, str]:
        return {"url": self.url, "token": self.token, "identity": self.identity, "room": self.room}


def operator_token(
    settings: LiveKitSettings, *, url: str, room: str, tenant: str
) -> OperatorToken:
    """A token for one operator in ``room``: a microphone, listening, nothing else.

    Args:
        settings: The LiveKit key pair that signs it.
        url: The LiveKit URL as the operator's browser reaches it.
        room: The call's room.
        tenant: The operator's tenant (the attribute's value, for the room's other parties).
    """
    identity = OPERATOR_IDENTITY_PREFIX + secrets.token_hex(6)
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_publish_sources=["microphone"],
        can_publish_data=False,
        can_subscribe=True,
        can_update_own_metadata=False,
    )
    token = (
        api.AccessToken(settings.api_key, settings.api_secret)
        .with_identity(identity)
        .with_name(OPERATOR_NAME)
        .with_attributes({OPERATOR_ATTRIBUTE: tenant})
        .with_grants(grants)
        .with_ttl(OPERATOR_TOKEN_TTL)
        .to_jwt()
    )
    return OperatorToken(url=url, token=token, identity=identity, room=room)
