"""The agent's connection: the RPC method and the agent-code attribute, on every connection
(:class:`ConnectionKeeper`), and the code in the join token itself (:func:`accept_with_agent_code`).

``ContextPlugin`` publishes ``imaginex.agent_code`` with ``set_attributes`` once the room is
connected, which is usually after LiveKit sent ``participant_joined`` (that event carries the
attributes the participant has when it becomes active). A gateway keeping an agent directory
then has to list the room again to learn the code. A worker that accepts its jobs with
:func:`accept_with_agent_code` joins with the attribute already set: the webhook alone is
enough, with no lag and no ``RoomService`` call::

    server = AgentServer()

    @server.rtc_session(agent_name="support", on_request=accept_with_agent_code("A12345678"))
    async def entrypoint(ctx: JobContext) -> None:
        ...
        await ContextPlugin(agent_code="A12345678").start(session, ctx.room)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from livekit import rtc
from livekit.agents import JobRequest

from ..log import logger
from ..protocol import AGENT_CODE_ATTRIBUTE, RPC_METHOD

_CONNECT_POLL_S: Final = 0.05
_CONNECTION_CHECK_S: Final = 1.0
CODE_CONFIRM_S: Final = 5.0
"""How long the server has to echo the agent-code attribute back before it is set again."""
CODE_RETRY_FIRST_S: Final = 1.0
CODE_RETRY_MAX_S: Final = 30.0
"""Pause before setting the attribute again: doubling from the first, capped at the max."""

RpcHandler = Callable[[rtc.RpcInvocationData], Awaitable[str]]


class ConnectionKeeper:
    """Registers the RPC method and publishes the agent code each time the room connects.

    Args:
        room: The agent's room, connected or not yet.
        agent_code: Published as the ``imaginex.agent_code`` participant attribute.
        on_rpc: The RPC method's handler.
    """

    def __init__(self, room: rtc.Room, agent_code: str | None, on_rpc: RpcHandler) -> None:
        self._room = room
        self._agent_code = agent_code
        self._on_rpc = on_rpc
        self._registered = False
        self._room_left = asyncio.Event()

    def on_room_disconnected(self, _reason: object) -> None:
        """The room's ``disconnected`` listener: this connection has ended."""
        self._room_left.set()

    async def run(self) -> None:
        """Keep the method and the attribute on every connection, until cancelled.

        rtc.Room.connect() emits no "connected" event and a later connection_state_changed is
        not guaranteed, so this polls for it. A Room can be connected again after it was
        disconnected: the new local participant has neither the method nor the attribute, so
        both are set again. (LiveKit's own reconnects keep them: nothing to do there.)
        """
        room = self._room
        while True:
            while not room.isconnected():  # noqa: ASYNC110 - there is no event to wait on
                await asyncio.sleep(_CONNECT_POLL_S)
            self._room_left.clear()
            participant = room.local_participant
            participant.register_rpc_method(RPC_METHOD, self._on_rpc)
            self._registered = True
            await self._publish_agent_code(participant)
            # the "disconnected" event ends this connection; the poll is a fallback in case
            # the event is missed (it races a quick reconnect). asyncio.wait, not wait_for:
            # on Python 3.11 wait_for swallows a cancellation that arrives as the event is set,
            # which is just what a job's shutdown does (it disconnects and closes us at once),
            # and this task then polled for a connection forever.
            left = asyncio.ensure_future(self._room_left.wait())
            try:
                while not left.done() and self._still_on(participant):
                    await asyncio.wait({left}, timeout=_CONNECTION_CHECK_S)
            finally:
                left.cancel()
            self._registered = False

    def unregister(self) -> None:
        """Take the RPC method off the room (at close; the room may already be gone)."""
        if self._registered:
            self._registered = False
            with contextlib.suppress(Exception):
                self._room.local_participant.unregister_rpc_method(RPC_METHOD)

    async def _publish_agent_code(self, participant: rtc.LocalParticipant) -> None:
        """Set the code attribute until the server has echoed it back, on this connection.

        ``set_attributes`` returns without an error when the server refused or never got the
        change (the SDK drops the callback's error), and a gateway only finds an agent by this
        attribute: one lost update on a loaded server left the agent unreachable for the whole
        call. So success is the server's own echo, seen in the participant's attributes, and
        anything less is tried again while this connection lasts.
        """
        code = self._agent_code
        if not code:
            return
        pause = CODE_RETRY_FIRST_S
        attempt = 0
        while self._still_on(participant):
            attempt += 1
            try:
                await participant.set_attributes({AGENT_CODE_ATTRIBUTE: code})
            except Exception as exc:  # the SDK raises for a closed handle, not for a refusal
                logger.warning(
                    "could not publish the agent code attribute",
                    extra={"attempt": attempt, "error": type(exc).__name__},
                )
            else:
                if await self._echoed(participant, code):
                    if attempt > 1:
                        logger.info("agent code attribute published", extra={"attempt": attempt})
                    return
                logger.warning(
                    "agent code attribute not confirmed by the server",
                    extra={"attempt": attempt, "retry_in_s": pause},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, CODE_RETRY_MAX_S)

    async def _echoed(self, participant: rtc.LocalParticipant, code: str) -> bool:
        """Whether the server reports ``code`` on ``participant`` within ``CODE_CONFIRM_S``."""
        deadline = asyncio.get_running_loop().time() + CODE_CONFIRM_S
        while participant.attributes.get(AGENT_CODE_ATTRIBUTE) != code:
            if asyncio.get_running_loop().time() >= deadline or not self._still_on(participant):
                return False
            await asyncio.sleep(_CONNECT_POLL_S)
        return True

    def _still_on(self, participant: rtc.LocalParticipant) -> bool:
        room = self._room
        return room.isconnected() and room.local_participant is participant


def accept_with_agent_code(
    agent_code: str, *, name: str = "", identity: str = "", metadata: str = ""
) -> Callable[[JobRequest], Awaitable[None]]:
    """A job request handler (``on_request`` / ``request_fnc``) that accepts every job and
    joins with the ``imaginex.agent_code`` attribute set to ``agent_code``.

    Args:
        agent_code: The code; give ``ContextPlugin`` the same one.
        name: The agent's participant name. Default: LiveKit's.
        identity: Its identity. Default: ``agent-<job id>`` (livekit-agents' default).
        metadata: Its metadata. Default: none.

    Raises:
        ValueError: If ``agent_code`` is empty.
    """
    if not agent_code:
        raise ValueError("agent_code must not be empty")

    async def accept(request: JobRequest) -> None:
        await request.accept(
            name=name,
            identity=identity,
            metadata=metadata,
            attributes={AGENT_CODE_ATTRIBUTE: agent_code},
        )

    return accept
