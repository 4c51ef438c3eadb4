"""The agent code in the agent's join token, so that LiveKit's ``participant_joined`` webhook
already carries it.

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

from collections.abc import Awaitable, Callable

from livekit.agents import JobRequest

from ..protocol import AGENT_CODE_ATTRIBUTE


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
