"""A real worker for the agent directory's live test: it accepts every job with
``accept_with_agent_code``, so its join token already carries ``imaginex.agent_code`` and
LiveKit's ``participant_joined`` webhook tells the gateway the code at once.

Run by ``tests/integration/test_directory_live.py`` as
``python -m livekit.agents start tests/integration/directory_worker.py --dev``.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, room_io

from imaginex_context_plugin import ContextPlugin, accept_with_agent_code
from imaginex_context_plugin.testing import ScriptedLLM, reply_from_context

AGENT_NAME = "directory-agent"
AGENT_CODE = "DIRWORKER1"
GATEWAY = "imaginex-gateway"

server = AgentServer(host="127.0.0.1")


@server.rtc_session(agent_name=AGENT_NAME, on_request=accept_with_agent_code(AGENT_CODE))
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession = AgentSession(
        llm=ScriptedLLM(default_reply=reply_from_context),
        vad=None,
        turn_handling={"turn_detection": None},
    )
    await ContextPlugin(agent_code=AGENT_CODE, allowed_identities=[GATEWAY]).start(
        session, ctx.room
    )
    await session.start(
        agent=Agent(instructions="You answer from the context you were given."),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_input=False, audio_output=False),
    )
