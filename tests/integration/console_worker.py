"""The real worker behind the operator console's live tests and benchmark
(``tests/integration/test_console_live.py``, ``benchmarks/bench_console.py``), run as
``python -m livekit.agents start tests/integration/console_worker.py --dev``.

A support agent on a real ``AgentSession`` with ``RoomIO`` (so it publishes its state and its
voice to the room): a small scripted LLM that looks orders up with a real function tool
(``lookup_order``) and otherwise answers from the context it holds (``reply_from_context``), a
``RecordingTTS`` played out in real time to the room, and a scripted STT that hears what a
participant tells it through the ``test.hear`` RPC method (the live test's "caller"; and
``test.hear_interim``, words not yet ended, for the benchmark). The
plugin trusts the gateway's identity with every message type: the console reaches the agent
through the gateway.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NoReturn

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    JobContext,
    function_tool,
    llm,
    room_io,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from imaginex_context_plugin import ContextPlugin, accept_with_agent_code
from imaginex_context_plugin.gateway import DEFAULT_GATEWAY_IDENTITY
from imaginex_context_plugin.testing import RecordingTTS, reply_from_context
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


class SupportLLM(llm.LLM[NoReturn]):
    """Calls ``lookup_order`` when the user names an order, answers from its output, and
    otherwise answers from the context the plugin gave it."""

    @property
    def model(self) -> str:
        return "support-scripted"

    @property
    def provider(self) -> str:
        return "imaginex-tests"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        return _SupportStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _SupportStream(llm.LLMStream):
    async def _run(self) -> None:
        items = self.chat_ctx.items
        last = items[-1] if items else None
        if isinstance(last, llm.FunctionCallOutput):
            self._say(f"Good news: {last.output}")
            return
        said = last.text_content if isinstance(last, llm.ChatMessage) else None
        match = ORDER.search(said or "") if last is not None and last.role == "user" else None
        if match is not None:
            call = llm.FunctionToolCall(
                name="lookup_order",
                arguments=json.dumps({"order_id": match.group(1)}),
                call_id=f"call_{match.group(1)}_{len(items)}",
            )
            delta = llm.ChoiceDelta(role="assistant", tool_calls=[call])
            self._event_ch.send_nowait(llm.ChatChunk(id="support", delta=delta))
            return
        self._say(reply_from_context(self.chat_ctx))

    def _say(self, reply: str) -> None:
        for i, word in enumerate(reply.split(" ")):
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id="support",
                    delta=llm.ChoiceDelta(role="assistant", content=word if i == 0 else " " + word),
                )
            )


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
        llm=SupportLLM(),
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
