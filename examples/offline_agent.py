"""The same drop-in with no model API keys: a scripted LLM and text output only.

For testing the wiring locally with a real LiveKit server and no model provider
(``docs/local-testing.md`` has the details)::

    scripts/livekit-server --dev                                   # terminal 1
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    .venv/bin/python -m livekit.agents start examples/offline_agent.py --dev   # terminal 2

It registers as ``offline-agent`` and joins a room when dispatched there: with the agent
dispatch API (``api.LiveKitAPI().agent_dispatch.create_dispatch(
api.CreateAgentDispatchRequest(agent_name="offline-agent", room="demo"))``, see the docs) or
``lk dispatch create --room demo --agent-name offline-agent``. Then, in terminal 3::

    .venv/bin/imaginex-context speak --room demo --wait-playout "Hello from the backend!"
    .venv/bin/imaginex-context add-context --room demo --key customer "The customer is John, a VIP."
    .venv/bin/imaginex-context add-context --room demo --reply "Greet the customer."

The agent "speaks" as text (the ``lk.transcription`` stream, published once a user is in the
room), and answers from the context it was given (the test kit's ``ScriptedLLM`` with
``reply_from_context``): after the last command it says
"Here is what I know: The customer is John, a VIP. Greet the customer."
``tests/integration/test_worker_live.py`` runs this against ``scripts/livekit-server --dev``.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, room_io

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.testing import ScriptedLLM, reply_from_context

# its HTTP health server on loopback only (with --dev on a free port, else 8081)
server = AgentServer(host="127.0.0.1")


@server.rtc_session(agent_name="offline-agent")
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession = AgentSession(
        llm=ScriptedLLM(default_reply=reply_from_context),
        vad=None,
        turn_handling={"turn_detection": None},
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
