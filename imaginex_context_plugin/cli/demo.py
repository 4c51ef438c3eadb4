"""``imaginex-context demo``: the plugin at work, with no LiveKit server and no API keys.

A real ``AgentSession`` runs in-process with the test kit's offline LLM
(``ScriptedLLM(default_reply=reply_from_context)``, which answers from the context it is given)
and text output. Each scripted message goes in through
``ContextPlugin.ingest()``, the exact path that bytes from a LiveKit room take once the SDK has
delivered them, and every answer comes out through an ``AckTransport`` subclass that prints it
instead of publishing it. The room is an ``OfflineRoom`` (``imaginex_context_plugin.testing``): a
real ``rtc.Room`` that never connects. Only public, supported seams are used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import click
from livekit import rtc
from livekit.agents import llm
from livekit.agents.voice import Agent, AgentSession
from livekit.agents.voice.events import ConversationItemAddedEvent

from ..receiver import AckTransport, ContextPlugin
from ..testing import OfflineRoom, ScriptedLLM, reply_from_context

DEFAULT_PACE_S: Final = 0.3
"""Seconds between the script's steps."""
DEMO_AGENT_CODE = "A12345678"
DEMO_ROOM = "customer_session_1"
BACKEND = "crm-backend"


class _PrintingTransport(AckTransport):
    def __init__(self, room: rtc.Room, emit: Callable[[str, str], None]) -> None:
        super().__init__(room)
        self._emit = emit

    async def send(self, payload: bytes, destination_identity: str) -> None:
        self._emit(f"-> {destination_identity}", payload.decode())


@dataclass(frozen=True)
class UserTurn:
    """The user asks something (a reply is generated from what the agent knows)."""

    question: str


@dataclass(frozen=True)
class BackendMessage:
    """A sender's message to the plugin, with a note on what it shows."""

    sender: str
    message: dict[str, Any] | str
    note: str


SCRIPT: Final[tuple[UserTurn | BackendMessage, ...]] = (
    UserTurn("Do you know who I am?"),
    BackendMessage(
        BACKEND,
        {
            "type": "add_context",
            "id": "ctx-1",
            "key": "customer",
            "context": "Customer John Smith is a premium member since 2021 and prefers email.",
        },
        "background knowledge, nothing is spoken",
    ),
    UserTurn("Do you know who I am?"),
    BackendMessage(
        BACKEND,
        {"type": "speak", "id": "say-1", "message": "Your order #1234 has shipped!"},
        "proactive speech",
    ),
    BackendMessage(BACKEND, {"type": "shout", "message": "hi"}, "a bad message"),
    BackendMessage(BACKEND, "{not json", "not even JSON"),
    BackendMessage(
        "stranger",
        {"type": "speak", "id": "x-1", "message": "I am not allowed to say this."},
        "an unauthorised sender",
    ),
    BackendMessage(
        BACKEND,
        {"type": "speak", "id": "say-1", "message": "Your order #1234 has shipped!"},
        "a retry of say-1: acked again, not spoken twice",
    ),
    BackendMessage(
        BACKEND,
        {
            "type": "add_context",
            "id": "ctx-2",
            "key": "customer",
            "context": "Customer John Smith upgraded to the enterprise plan today.",
        },
        "same key: replaces the earlier context",
    ),
    UserTurn("What do you know now?"),
    BackendMessage(
        BACKEND,
        {
            "type": "add_context",
            "id": "ctx-3",
            "context": "Today only: free shipping on every order.",
            "scope": "next_turn",
            "trigger_reply": True,
        },
        "one-turn context, and let the agent respond to it",
    ),
    BackendMessage(
        BACKEND,
        {
            "type": "speak",
            "id": "say-2",
            "instructions": "Thank John for upgrading.",
            "mode": "if_idle",
        },
        "the LLM phrases it, only if nobody is speaking",
    ),
    BackendMessage(BACKEND, {"type": "get_state", "id": "state-1"}, "what does the agent hold?"),
    BackendMessage(
        BACKEND,
        {"type": "remove_context", "id": "rm-1", "key": "customer"},
        "forget the customer",
    ),
    UserTurn("And now?"),
)
"""What the demo does, step by step: the platform's use cases, and what the plugin refuses."""


async def run_demo(
    *, out: Callable[[str], None] = print, pace_s: float = DEFAULT_PACE_S
) -> dict[str, Any]:
    """Run the scripted demo; returns a summary (used by the tests)."""
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"acks": [], "said": []}

    def line(who: str, what: str) -> None:
        out(f"{(time.perf_counter() - t0) * 1000:7.0f} ms  {who:<22} {what}")

    def on_ack(who: str, payload: str) -> None:
        summary["acks"].append(json.loads(payload))
        line(who, payload)

    room = OfflineRoom(DEMO_ROOM)
    session: AgentSession[Any] = AgentSession(
        llm=ScriptedLLM(default_reply=reply_from_context),
        vad=None,
        turn_handling={"turn_detection": None},
    )
    session.output.audio = None

    def on_item(ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if isinstance(item, llm.ChatMessage) and item.role == "assistant":
            summary["said"].append(item.text_content)
            line("agent says", repr(item.text_content))

    session.on("conversation_item_added", on_item)
    await session.start(Agent(instructions="You are a helpful support agent."))

    plugin = ContextPlugin(
        agent_code=DEMO_AGENT_CODE,
        allowed_identities=[BACKEND],
        trust_server=False,  # no LiveKit server here, so no server-API packets either
        ack_transport=_PrintingTransport(room, on_ack),
    )
    await plugin.start(session, room)
    line("plugin", f"attached to room {DEMO_ROOM!r} as agent {DEMO_AGENT_CODE}")

    async def send(sender: str | None, message: dict[str, Any] | str, note: str) -> None:
        payload = message if isinstance(message, str) else json.dumps(message)
        line(f"{sender} sends", f"{payload}   # {note}")
        plugin.ingest(payload, sender_identity=sender)
        await asyncio.sleep(pace_s)

    async def user_asks(question: str) -> None:
        line("user asks", repr(question))
        await session.generate_reply(user_input=question)
        await asyncio.sleep(pace_s / 3)

    try:
        for step in SCRIPT:
            if isinstance(step, UserTurn):
                await user_asks(step.question)
            else:
                await send(step.sender, step.message, step.note)
        summary["knowledge"] = [e.text for e in plugin.context_store.entries()]
    finally:
        await plugin.aclose()
        await session.aclose()
    line("done", f"{len(summary['acks'])} answers, {len(summary['said'])} things said")
    return summary


@click.command("demo")
@click.option(
    "--pace", default=DEFAULT_PACE_S, show_default=True, help="Seconds between scripted steps."
)
@click.option("-v", "--verbose", is_flag=True, help="Show the plugin's log lines too.")
def demo_command(pace: float, verbose: bool) -> None:
    """Run an agent session with the plugin in-process and feed it a scripted sequence.

    Needs no LiveKit server and no API keys: the messages take the same code path that bytes
    from a room take, and the answers are printed instead of published.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    asyncio.run(run_demo(pace_s=pace))
