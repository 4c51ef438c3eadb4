"""The real worker behind the operator console's live tests and benchmark
(``tests/integration/test_console_live.py``, ``benchmarks/bench_console.py``), run as
``python -m livekit.agents start tests/integration/console_worker.py --dev``.

A support agent on a real ``AgentSession`` with ``RoomIO`` (so it publishes its state and its
voice to the room): the kit's ``ScriptedLLM`` scripted to look orders up with a real function tool
(``lookup_order``) and otherwise answer from the context it holds (``reply_from_context``), a
``RecordingTTS`` played out in real time to the room, and a scripted STT that hears what a
participant tells it through the ``test.hear`` RPC method (the live test's "caller"; and
``test.hear_interim``, words not yet ended, for the benchmark). The
plugin trusts the gateway's identity with every message type: the console reaches the agent
through the gateway.
"""

from __future__ import annotations

import json
import re
from typing import Final

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    JobContext,
    function_tool,
    llm,
    room_io,
)

from imaginex_context_plugin import ContextPlugin, accept_with_agent_code
from imaginex_context_plugin.gateway import DEFAULT_GATEWAY_IDENTITY
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, reply_from_context
from imaginex_context_plugin.testing.llm import Reply
from tests.fakes.stt import ScriptedSTT, SilentAudioInput

AGENT_NAME: Final = "console-agent"
AGENT_CODE: Final = "SUPPORT01"
EVENT_BUFFER: Final = 12
ORDER: Final = re.compile(r"order\s*#?\s*(\d+)", re.IGNORECASE)


def _no_load() -> float:
    # livekit-server 1.13.5 offers no job to a worker reporting a load near 1, which a shared
    # 2-core machine running Chromium reaches: a test worker serving a few rooms reports none
    return 0.0


server = AgentServer(host="127.0.0.1", load_fnc=_no_load)


def support_reply(chat_ctx: llm.ChatContext) -> Reply:
    """Call ``lookup_order`` when the user names an order, answer from its output, and
    otherwise answer from the context the plugin gave the agent."""
    items = chat_ctx.items
    last = items[-1] if items else None
    if isinstance(last, llm.FunctionCallOutput):
        return f"Good news: {last.output}"
    said = last.text_content if isinstance(last, llm.ChatMessage) else None
    match = ORDER.search(said or "") if last is not None and last.role == "user" else None
    if match is not None:
        return llm.FunctionToolCall(
            name="lookup_order",
            arguments=json.dumps({"order_id": match.group(1)}),
            call_id=f"call_{match.group(1)}_{len(items)}",
        )
    return reply_from_context(chat_ctx)


# a chunk per word, as a model streams it
WORD_CHUNKS: Final = 1_000


class SupportAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You are a support agent for an online shop.")

    @function_tool
    async def lookup_order(self, order_id: str) -> str:
        """Look an order up by its number."""
        return f"order {order_id} shipped yesterday and arrives on Thursday."


@server.rtc_session(agent_name=AGENT_NAME, on_request=accept_with_agent_code(AGENT_CODE))
async def entrypoint(ctx: JobContext) -> None:
    stt = ScriptedSTT()
    session: AgentSession = AgentSession(
        llm=ScriptedLLM(default_reply=support_reply, chunks=WORD_CHUNKS),
        tts=RecordingTTS(seconds_per_char=0.03),
        stt=stt,
        vad=None,
        turn_handling={
            "turn_detection": None,
            "interruption": {"resume_false_interruption": False},
        },
    )
    gateway = DEFAULT_GATEWAY_IDENTITY
    await ContextPlugin(
        agent_code=AGENT_CODE,
        allowed_identities=[gateway],
        permissions={gateway: {"*"}},
        # small, so that the console's live test can reach back past it (events_lost)
        event_buffer=EVENT_BUFFER,
    ).start(session, ctx.room)
    await session.start(
        agent=SupportAgent(),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_input=False, audio_output=True),
    )
    # a microphone for the scripted STT: a participant speaks through test.hear
    session.input.audio = SilentAudioInput()

    def hear(data: rtc.RpcInvocationData) -> str:
        stt.hear(data.payload)
        return "heard"

    def hear_interim(data: rtc.RpcInvocationData) -> str:
        # words still being spoken: a user_transcript event, no turn, no reply (the benchmark)
        stt.hear(data.payload, final=False)
        return "heard"

    ctx.room.local_participant.register_rpc_method("test.hear", hear)
    ctx.room.local_participant.register_rpc_method("test.hear_interim", hear_interim)
