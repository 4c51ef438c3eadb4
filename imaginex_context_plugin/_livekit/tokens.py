"""Join tokens for senders: they may join one room and publish data, nothing else."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from livekit import api

from ..protocol import SENDER_ATTRIBUTE
from .settings import LiveKitSettings

DEFAULT_TOKEN_TTL: Final = timedelta(hours=6)
GATEWAY_DISPLAY_NAME: Final = "imaginex gateway"


def sender_token(
    api_key: str,
    api_secret: str,
    *,
    room: str,
    identity: str,
    hidden: bool = False,
    name: str | None = None,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
) -> str:
    """A LiveKit access token for a sender: it may join ``room`` and publish data, nothing else.

    The sender joins as a participant of kind AGENT carrying the attribute ``imaginex.sender``:
    LiveKit counts such a participant as dependent (it never keeps a room open and never
    triggers an agent dispatch), an agent's ``RoomIO`` never links it as the user, and senders
    looking for the agent skip it.

    Args:
        api_key: LiveKit API key.
        api_secret: LiveKit API secret.
        room: The room to join.
        identity: The participant identity; the agent trusts senders by identity
            (``ContextPlugin(allowed_identities=...)``) unless the messages are signed.
        hidden: Invisible to the other participants. Default False, and only for senders that
            expect no answer: a real LiveKit server strips a hidden participant's identity from
            everything it sends, so the agent sees its RPCs with an empty caller (the response
            never comes back) and its data packets as if the server API had sent them.
        name: Display name. Default: none.
        ttl: Token lifetime (default 6 hours); it only matters when (re)connecting.

    Returns:
        The signed JWT.
    """
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=False,
        can_publish_data=True,
        # kept True: the acks and speech events come back as data packets
        can_subscribe=True,
        hidden=hidden,
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_attributes({SENDER_ATTRIBUTE: "1"})
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if name:
        token = token.with_name(name)
    return token.to_jwt()


def gateway_token(settings: LiveKitSettings, *, identity: str, room: str) -> str:
    """A token to join ``room`` as a sender that may only send data (see ``sender_token``).

    Not hidden: a real server strips a hidden participant's identity from its RPCs, so the
    agent could neither trust nor answer the gateway. As a dependent participant it never keeps
    a room open, never triggers a dispatch, and no agent's RoomIO takes it for the user.
    """
    return sender_token(
        settings.api_key,
        settings.api_secret,
        room=room,
        identity=identity,
        name=GATEWAY_DISPLAY_NAME,
    )
