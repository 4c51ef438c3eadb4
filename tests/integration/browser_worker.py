"""The real worker the TypeScript client's live tests drive from Chromium
(``tests/integration/test_typescript_live.py``), run as
``python -m livekit.agents start tests/integration/browser_worker.py --dev``.

Its session is a real ``AgentSession`` on the shipped test kit: ``ScriptedLLM`` with
``reply_from_context`` (it answers from the context it was given, so a transcript shows what
reached the LLM), a ``RecordingTTS`` synthesising silence played out in real time to the room
(so speech events carry ``played_s``) and a scripted STT (tests/fakes) that hears what the test
tells it through the ``test.hear`` RPC method. Faults the tests inject, through real SDK seams only:

- an RPC interceptor that loses the first response to a request whose id starts with
  ``lose-once-`` (the handler ran: the caller sees a timeout, as when a response is lost);
- ``test.echo``: a bare RPC echo on the same participant, the floor of the benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Final

from livekit import rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, room_io

from imaginex_context_plugin import ContextPlugin, accept_with_agent_code
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, reply_from_context
from tests.fakes.stt import ScriptedSTT, SilentAudioInput

AGENT_NAME: Final = "browser-agent"
AGENT_CODE: Final = "A12345678"
BROWSER: Final = "web-user"
DOCS_READER: Final = "web-docs"
"""The page running docs/typescript.md's browser example, in its own connection."""
LOSE_ONCE_PREFIX: Final = "lose-once-"

def _no_load() -> float:
    # the worker reports the machine's CPU load to the server, and livekit-server 1.13.5 offers
    # no job to a worker reporting a load near 1 ("no servers available"), whatever the
    # worker's own threshold: on a shared 2-core machine with Chromium running, that is most of
    # the time. A test worker serving one room at a time reports none.
    return 0.0


server = AgentServer(host="127.0.0.1", load_fnc=_no_load)


class LoseFirstResponse(rtc.RpcInterceptor):
    """Runs the handler, then loses the first response to each ``lose-once-`` request."""

    def __init__(self) -> None:
        self.lost: set[str] = set()

    async def intercept_incoming(
        self,
        invocation: rtc.RpcInvocationData,
        next: Callable[[rtc.RpcInvocationData], Awaitable[str | None]],
    ) -> str | None:
        response = await next(invocation)
        request_id = _request_id(invocation.payload)
        if request_id.startswith(LOSE_ONCE_PREFIX) and request_id not in self.lost:
            self.lost.add(request_id)
            raise rtc.RpcError(rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT, "response lost")
        return response


def _request_id(payload: str) -> str:
    try:
        request = json.loads(payload)
        if request.get("type") == "signed":
            request = json.loads(request["body"])
        return str(request.get("id") or "")
    except (ValueError, AttributeError, TypeError):
        return ""


@server.rtc_session(agent_name=AGENT_NAME, on_request=accept_with_agent_code(AGENT_CODE))
async def entrypoint(ctx: JobContext) -> None:
    stt = ScriptedSTT()
    session: AgentSession = AgentSession(
        llm=ScriptedLLM(default_reply=reply_from_context),
        tts=RecordingTTS(seconds_per_char=0.01),
        stt=stt,
        vad=None,
        turn_handling={
            "turn_detection": None,
            "interruption": {"resume_false_interruption": False},
        },
    )
    await ContextPlugin(
        agent_code=AGENT_CODE,
        allowed_identities=[BROWSER, DOCS_READER],
        permissions={BROWSER: {"*"}, DOCS_READER: {"*"}},
    ).start(session, ctx.room)
    await session.start(
        agent=Agent(instructions="You answer from the context you were given."),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_input=False, audio_output=True),
    )
    # a microphone for the scripted STT: the test speaks through test.hear
    session.input.audio = SilentAudioInput()
    local = ctx.room.local_participant
    local.add_rpc_interceptor(LoseFirstResponse())

    def hear(data: rtc.RpcInvocationData) -> str:
        stt.hear(data.payload)
        return "heard"

    local.register_rpc_method("test.hear", hear)
    local.register_rpc_method("test.echo", lambda data: data.payload)
