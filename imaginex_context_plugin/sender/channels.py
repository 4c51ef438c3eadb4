"""The two ways a request reaches the agent: RPC (the response is the ack) or data packets.

Each ``attempt`` sends once and returns the agent's ack, raises :class:`NoAck` when none came in
time (the caller decides about retrying), or :class:`~..errors.ContextError`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from livekit import rtc

from .. import protocol
from .._livekit.rpc import call_agent
from ..errors import ErrorCode
from ..protocol import CONTEXT_TOPIC, ErrorAck, SuccessAck
from ..request_errors import ContextError
from .options import FIRST_CONTACT_RESEND_S
from .waiters import Pending


class NoAck(Exception):
    """One attempt got no answer in time."""


class Channel(Protocol):
    async def attempt(
        self, pending: Pending, agent: str, payload: str, timeout: float
    ) -> SuccessAck | ErrorAck: ...


class RpcChannel:
    """``perform_rpc(method="imaginex.context")``; the response is the ack JSON."""

    def __init__(self, room: rtc.Room) -> None:
        self._room = room

    async def attempt(
        self, pending: Pending, agent: str, payload: str, timeout: float
    ) -> SuccessAck | ErrorAck:
        request_id = pending.request_id
        try:
            response = await asyncio.wait_for(
                call_agent(
                    self._room.local_participant,
                    agent,
                    payload,
                    timeout=timeout,
                    request_id=request_id,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise NoAck from None
        except ContextError as exc:
            if exc.code is ErrorCode.TIMEOUT:
                raise NoAck from None
            raise
        return _own_ack(response, agent, request_id)


def _own_ack(response: str, agent: str, request_id: str) -> SuccessAck | ErrorAck:
    try:
        ack = protocol.parse_ack(response)
    except ValueError:
        raise ContextError(
            ErrorCode.INTERNAL_ERROR,
            f"Participant '{agent}' answered the RPC with something that is not an ack.",
            request_id=request_id,
            retryable=False,
        ) from None
    # an error ack may carry no id (the agent could not read the request); anything else
    # must be this request's ack, or a broken agent could confirm what it never applied
    if ack.id != request_id and not (isinstance(ack, ErrorAck) and ack.id is None):
        raise ContextError(
            ErrorCode.INTERNAL_ERROR,
            f"Participant '{agent}' answered the RPC with the ack of another request; "
            "whether this one was applied is unknown.",
            request_id=request_id,
            retryable=False,
        )
    return ack


class DataChannel:
    """A data packet on ``imaginex.context``; the ack comes back on ``imaginex.context.ack``."""

    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        # agents that have answered a data packet of ours: they know who we are
        self._heard_from: set[str] = set()

    async def attempt(
        self, pending: Pending, agent: str, payload: str, timeout: float
    ) -> SuccessAck | ErrorAck:
        # registered before publishing: the ack may arrive before publish_data returns
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SuccessAck | ErrorAck] = loop.create_future()
        pending.future = future
        deadline = loop.time() + timeout
        try:
            while True:
                await self._publish_to(agent, payload, pending.request_id)
                # Until the agent has answered us once, it may not know us yet: on a real
                # server a newcomer's first packets can reach it before the news that we
                # joined, and then arrive without a sender, which it must refuse unanswered.
                # So the same packet (same id: applied at most once) goes again shortly.
                wait = deadline - loop.time()
                if agent not in self._heard_from:
                    wait = min(wait, FIRST_CONTACT_RESEND_S)
                done, _ = await asyncio.wait({future}, timeout=max(wait, 0.0))
                if done:
                    self._heard_from.add(agent)
                    return future.result()
                if loop.time() >= deadline:
                    raise NoAck
        finally:
            pending.future = None

    async def _publish_to(self, agent: str, payload: str, request_id: str) -> None:
        try:
            await self._room.local_participant.publish_data(
                payload.encode("utf-8"),
                reliable=True,
                destination_identities=[agent],
                topic=CONTEXT_TOPIC,
            )
        except Exception as exc:
            raise ContextError(
                ErrorCode.LIVEKIT_UNAVAILABLE,
                f"Could not send the message to agent '{agent}'.",
                request_id=request_id,
                retryable=True,
            ) from exc
