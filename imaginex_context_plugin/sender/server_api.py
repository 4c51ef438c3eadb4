"""Sending without joining the room: LiveKit's server API, which cannot be acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
from livekit import api
from pydantic import BaseModel

from .._livekit.agents import choose_agent
from .._livekit.rooms import summarize
from ..errors import ErrorCode
from ..log import logger
from ..protocol import CONTEXT_TOPIC, Request
from ..request_errors import ContextError
from ..security import sign_request
from .requests import check_size, encode, prepare_request
from .results import ServerSendResult


async def send_via_server_api(
    request: Request | BaseModel | Mapping[str, Any],
    *,
    room: str,
    agent_identity: str | None = None,
    agent_code: str | None = None,
    lkapi: api.LiveKitAPI | None = None,
    url: str | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    secret: str | bytes | None = None,
) -> ServerSendResult:
    """Send a request with LiveKit's server API (``RoomService.SendData``), without joining.

    **It cannot be acknowledged.** The agent receives the packet with no sender participant, so
    it has nobody to send an ack or speech events to: this function returns once LiveKit
    accepted the packet, and ``ServerSendResult.acknowledged`` is always False. Whether the
    agent applied it is unknown. The request is signed, with ``secret`` if given, else with the
    LiveKit API secret: the agent cannot tell a server packet from a hidden or newly joined
    participant's, so it trusts only signed ones (``ContextPlugin(trust_server=True)``, the
    default, checks the LiveKit API secret). Use :class:`ContextClient` when you need the
    answer.

    Args:
        request: A request model or mapping; without an id it gets a random one.
        room: The room the agent is in.
        agent_identity: The agent to send to. Default: looked up with ``ListParticipants`` (the
            participant publishing ``agent_code``, else the one agent participant).
        agent_code: See ``agent_identity``; also put in the request.
        lkapi: A ``LiveKitAPI`` to use (left open). Default: one made from ``url``,
            ``api_key``, ``api_secret`` (or ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``,
            ``LIVEKIT_API_SECRET``) and closed again.
        url: LiveKit server URL, when ``lkapi`` is not given.
        api_key: LiveKit API key, when ``lkapi`` is not given.
        api_secret: LiveKit API secret, when ``lkapi`` is not given.
        secret: Sign the request with this shared secret (the agent's ``secret``). Default:
            sign it with the LiveKit API secret (``api_secret``, ``LIVEKIT_API_SECRET``, or
            ``lkapi``'s).

    Returns:
        The request id and where it went, with ``acknowledged=False``.

    Raises:
        ContextError: ``VALIDATION_ERROR`` / ``PAYLOAD_TOO_LARGE`` for a bad request,
            ``AGENT_NOT_FOUND`` if no agent is in the room (or several match),
            ``NO_ACTIVE_ROOMS`` if the room does not exist, ``LIVEKIT_UNAVAILABLE`` if the
            server cannot be reached or refuses the call.
        ValueError: If no ``lkapi`` is given and the URL or credentials are missing.
    """
    obj = prepare_request(request, agent_code=agent_code)
    request_id: str = obj["id"]
    body = encode(obj)
    own_api = lkapi is None
    client = lkapi if lkapi is not None else api.LiveKitAPI(url, api_key, api_secret)
    try:
        payload = sign_request(body, secret or client.room.api_secret)
        check_size(payload, request_id)
        if agent_identity is None:
            agent_identity = await _find_agent(client, room, agent_code, request_id)
        await client.room.send_data(
            api.SendDataRequest(
                room=room,
                data=payload.encode("utf-8"),
                kind=api.DataPacket.Kind.RELIABLE,
                destination_identities=[agent_identity],
                topic=CONTEXT_TOPIC,
            )
        )
    except (api.TwirpError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise _not_sent(exc, room, request_id) from exc
    finally:
        if own_api:
            await client.aclose()
    logger.info(
        "context request sent through the server API",
        extra={"request_id": request_id, "room": room, "agent": agent_identity},
    )
    return ServerSendResult(request_id=request_id, room=room, destination_identity=agent_identity)


def _not_sent(
    exc: api.TwirpError | aiohttp.ClientError | asyncio.TimeoutError, room: str, request_id: str
) -> ContextError:
    """What the caller should do about a failed server-API call, as a ContextError."""
    if not isinstance(exc, api.TwirpError):
        return ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE,
            "The LiveKit server could not be reached.",
            request_id=request_id,
            retryable=True,
        )
    if exc.code == api.TwirpErrorCode.NOT_FOUND:
        return ContextError(
            ErrorCode.NO_ACTIVE_ROOMS,
            f"Room '{room}' does not exist on the LiveKit server.",
            request_id=request_id,
            retryable=False,
        )
    return ContextError(
        ErrorCode.LIVEKIT_UNAVAILABLE,
        f"The LiveKit server refused the call ({exc.code}).",
        request_id=request_id,
        retryable=exc.status >= 500,
    )


async def _find_agent(
    client: api.LiveKitAPI, room: str, agent_code: str | None, request_id: str
) -> str:
    listing = await client.room.list_participants(api.ListParticipantsRequest(room=room))
    summaries = [summarize(p) for p in listing.participants]
    agent = choose_agent(
        ((p.identity, p.kind, p.attributes) for p in summaries),
        agent_code=agent_code,
        room=room,
    )
    if agent is None:
        which = f"with agent code '{agent_code}' " if agent_code else ""
        raise ContextError(
            ErrorCode.AGENT_NOT_FOUND,
            f"No agent {which}is in room '{room}'.",
            request_id=request_id,
            retryable=False,
        )
    return agent
