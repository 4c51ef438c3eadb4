"""The same drop-in with no model API keys: a scripted LLM and text output only.

For testing the wiring locally with a real LiveKit server and no model provider::

    livekit-server --dev                      # in another terminal (see the README)
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    python -m livekit.agents start examples/offline_agent.py --dev

Dispatch the agent into a room (join it from the LiveKit playground, or
``lk dispatch create --room demo --agent-name offline-agent``), then send it messages::

    imaginex-context add-context "The customer is John, a VIP." --room demo
    imaginex-context speak "Hello from the backend!" --room demo --wait-playout

The agent "speaks" as text (transcription output), and answers user text messages from the
context it was given (``OfflineLLM``), so you can see add_context work end to end.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, room_io

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.demo import OfflineLLM

# its HTTP health server on loopback only (with --dev on a free port, else 8081)
server = AgentServer(host="127.0.0.1")


@server.rtc_session(agent_name="offline-agent")
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession = AgentSession(
        llm=OfflineLLM(), vad=None, turn_handling={"turn_detection": None}
    )

    await ContextPlugin(
        agent_code="OFFLINE01",
        # any participant may drive this local test agent; never do this in production
        allowed_identities=["backend", "imaginex-context-cli"],
    ).start(session, ctx.room)

    await session.start(
        agent=Agent(instructions="You answer from the context you were given."),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_input=False, audio_output=False),
    )
