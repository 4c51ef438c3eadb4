"""A voice agent that a backend can drive while it runs: the one-line drop-in.

The only line this plugin adds to an ordinary livekit-agents worker is marked below. Everything
else is the standard current-API worker (``AgentServer`` + ``@server.rtc_session()``).

Run it against your LiveKit project (or a local ``livekit-server --dev``)::

    export LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export IMAGINEX_AGENT_CODE=A12345678
    python -m livekit.agents start examples/basic_agent.py --dev

The models below go through LiveKit Inference (no extra plugin packages); swap in any
``livekit-plugins-*`` models you use. With a bitHuman avatar, start the avatar session after
``session.start`` as usual: the plugin speaks through the session, so the avatar lip-syncs it.

Then, from a backend (as the trusted identity ``backend``)::

    imaginex-context speak "Your order has shipped" --room <room> --identity backend
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext

from imaginex_context_plugin import ContextPlugin

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession = AgentSession(
        stt="deepgram/nova-3",
        llm="openai/gpt-4.1-mini",
        tts="cartesia/sonic-2",
    )

    # the drop-in: trusted senders may now make the agent speak or add context; every message
    # is acknowledged. aclose() is registered as a job shutdown callback automatically.
    await ContextPlugin(allowed_identities=["backend"]).start(session, ctx.room)

    await session.start(
        agent=Agent(instructions="You are a friendly support agent for an online shop."),
        room=ctx.room,
    )
