"""The worker of ``test_call_control_live.py``: ``examples/offline_agent.py`` with call control
granted, run as ``python -m livekit.agents start tests/integration/call_control_worker.py --dev``.

Its ContextPlugin lets the test's backend and the CLI send every type, ``end_call`` and
``subscribe`` included (the sensitive types are refused unless ``permissions=`` grants them).
"""

from __future__ import annotations

from typing import Final

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, room_io

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.testing import ScriptedLLM, reply_from_context

AGENT_NAME: Final = "call-control-agent"
AGENT_CODE: Final = "CALLCTL01"
SENDERS: Final = ("backend", "imaginex-context-cli")

# its HTTP health server on loopback only (with --dev on a free port)
server = AgentServer(host="127.0.0.1")


@server.rtc_session(agent_name=AGENT_NAME)
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession = AgentSession(
        llm=ScriptedLLM(default_reply=reply_from_context),
        vad=None,
        turn_handling={"turn_detection": None},
    )
    await ContextPlugin(
        agent_code=AGENT_CODE,
        allowed_identities=list(SENDERS),
        permissions={sender: {"*"} for sender in SENDERS},
    ).start(session, ctx.room)
    await session.start(
        agent=Agent(instructions="You answer from the context you were given."),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_input=False, audio_output=False),
    )
