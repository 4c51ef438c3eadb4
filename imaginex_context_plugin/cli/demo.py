"""``imaginex-context demo``: the plugin at work, with no LiveKit server and no API keys.

A real ``AgentSession`` runs in-process with the test kit's offline LLM
(``ScriptedLLM(default_reply=reply_from_context)``, which answers from the context it is given)
and text output. Each scripted message goes in through
``ContextPlugin.ingest()``, the exact path that bytes from a LiveKit room take once the SDK has
delivered them, and every answer comes out through an ``AckTransport`` subclass that prints it
instead of publishing it. The room is an ``OfflineRoom`` (``imaginex_context_plugin.testing``): a
real ``rtc.Room`` that never connects. Only public, supported seams are used.

``--avatar`` (``run_demo(avatar=True)``) speaks through an avatar instead of printing text: the
session's audio goes through LiveKit's ``QueueAudioOutput``, the in-process avatar transport
(what bitHuman's local mode uses), to :class:`DemoAvatar`, which plays it against the clock and
reports each playback (started, finished with the position played, cut) back to the session, as
an avatar worker does over RPC. So ``speech_finished`` waits for the avatar and ``played_s`` is
its report. An avatar as its own participant in the room (a bitHuman cloud avatar, reached over
a LiveKit data stream) needs a LiveKit server: ``docs/avatar.md``.
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
from livekit.agents.voice.avatar import AudioReceiver, AudioSegmentEnd, QueueAudioOutput
from livekit.agents.voice.events import ConversationItemAddedEvent

from ..receiver import AckTransport, ContextPlugin
from ..testing import OfflineRoom, RecordingTTS, ScriptedLLM, reply_from_context

DEFAULT_PACE_S: Final = 0.3
"""Seconds between the script's steps."""
DEMO_AGENT_CODE = "A12345678"
DEMO_ROOM = "customer_session_1"
BACKEND = "crm-backend"
AVATAR_SECONDS_PER_CHAR: Final = 0.02
"""How long the avatar variant's (silent) TTS speaks per character of text."""


class _PrintingTransport(AckTransport):
    def __init__(self, room: rtc.Room, emit: Callable[[str, str], None]) -> None:
        super().__init__(room)
        self._emit = emit

    async def send(self, payload: bytes, destination_identity: str) -> None:
        self._emit(f"-> {destination_identity}", payload.decode())


class DemoAvatar:
    """An avatar in the agent's process: plays what the agent sends and reports each playback.

    It reads LiveKit's ``QueueAudioOutput`` as an avatar runner does (frames, then an
    ``AudioSegmentEnd`` per speech), plays each frame against the clock (``speed`` times faster
    than real time), and reports back through the same object: playback started on the first
    frame, finished with the position at the segment's end, or at once, as interrupted with the
    position reached, when the agent clears the buffer (an interruption).
    """

    def __init__(
        self,
        audio: QueueAudioOutput,
        report: Callable[[str, str], None],
        *,
        speed: float = 1.0,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._audio = audio
        self._receiver: AudioReceiver = audio  # the same object, seen as an avatar sees it
        self._report = report
        self._speed = speed
        self._playing = False
        self._position = 0.0
        self._frame_started: float | None = None  # loop time the frame playing now started
        self._cleared = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._receiver.on("clear_buffer", self._on_clear_buffer)
        self._task = asyncio.create_task(self._play_all(), name="demo_avatar")

    async def aclose(self) -> None:
        self._receiver.off("clear_buffer", self._on_clear_buffer)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _play_all(self) -> None:
        async for item in self._audio:
            if isinstance(item, AudioSegmentEnd):
                if self._playing:
                    self._finish(interrupted=False)
                continue
            await self._play(item)

    async def _play(self, frame: rtc.AudioFrame) -> None:
        if not self._playing:
            self._playing, self._position = True, 0.0
            self._audio.notify_playback_started()
            self._report("avatar", "starts playing")
        loop = asyncio.get_running_loop()
        self._frame_started = loop.time()
        self._cleared.clear()
        try:
            await asyncio.wait_for(self._cleared.wait(), frame.duration / self._speed)
        except asyncio.TimeoutError:
            self._position += frame.duration
        finally:
            self._frame_started = None

    def _on_clear_buffer(self) -> None:
        if not self._playing:
            return
        if self._frame_started is not None:  # cut mid-frame: count what of it played
            elapsed = asyncio.get_running_loop().time() - self._frame_started
            self._position += elapsed * self._speed
        self._cleared.set()
        self._finish(interrupted=True)

    def _finish(self, *, interrupted: bool) -> None:
        self._playing = False
        self._audio.notify_playback_finished(
            playback_position=self._position, interrupted=interrupted
        )
        what = "was cut after" if interrupted else "played"
        self._report("avatar", f"{what} {self._position:.2f} s, reported to the agent")


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

AVATAR_SCRIPT: Final[tuple[UserTurn | BackendMessage, ...]] = (
    *SCRIPT,
    BackendMessage(
        BACKEND,
        {
            "type": "speak",
            "id": "say-3",
            "message": "Let me read you our terms and conditions, which are rather long.",
        },
        "a long speech for the avatar",
    ),
    BackendMessage(
        BACKEND,
        {"type": "interrupt", "id": "cut-1"},
        "cut it: the avatar stops and reports how far it got",
    ),
)
"""The avatar variant: the same, then a speech cut while the avatar plays it."""


async def _until_quiet(session: AgentSession[Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while session.current_speech is not None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def run_demo(
    *,
    out: Callable[[str], None] = print,
    pace_s: float = DEFAULT_PACE_S,
    avatar: bool = False,
    avatar_speed: float = 1.0,
) -> dict[str, Any]:
    """Run the scripted demo; returns a summary (used by the tests).

    Args:
        out: Where each line goes.
        pace_s: Seconds between scripted steps.
        avatar: Speak through an in-process avatar (:class:`DemoAvatar`) instead of as text.
        avatar_speed: How much faster than real time that avatar plays.
    """
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"acks": [], "said": []}

    def line(who: str, what: str) -> None:
        out(f"{(time.perf_counter() - t0) * 1000:7.0f} ms  {who:<22} {what}")

    def on_ack(who: str, payload: str) -> None:
        summary["acks"].append(json.loads(payload))
        line(who, payload)

    room = OfflineRoom(DEMO_ROOM)
    demo_avatar: DemoAvatar | None = None
    if avatar:
        audio = QueueAudioOutput(wait_playback_start=True)  # started = the avatar's report
        session: AgentSession[Any] = AgentSession(
            llm=ScriptedLLM(default_reply=reply_from_context),
            tts=RecordingTTS(seconds_per_char=AVATAR_SECONDS_PER_CHAR),
            vad=None,
            # an avatar cannot pause its audio: a false interruption cannot be resumed
            turn_handling={
                "turn_detection": None,
                "interruption": {"resume_false_interruption": False},
            },
        )
        session.output.audio = audio
        demo_avatar = DemoAvatar(audio, line, speed=avatar_speed)
        demo_avatar.start()
    else:
        session = AgentSession(
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
        for step in AVATAR_SCRIPT if avatar else SCRIPT:
            if isinstance(step, UserTurn):
                await user_asks(step.question)
            else:
                await send(step.sender, step.message, step.note)
        summary["knowledge"] = [e.text for e in plugin.context_store.entries()]
        if avatar:  # the last speech's end is reported before the agent goes
            await _until_quiet(session)
    finally:
        await plugin.aclose()
        await session.aclose()
        if demo_avatar is not None:
            await demo_avatar.aclose()
    line("done", f"{len(summary['acks'])} answers, {len(summary['said'])} things said")
    return summary


@click.command("demo")
@click.option(
    "--pace", default=DEFAULT_PACE_S, show_default=True, help="Seconds between scripted steps."
)
@click.option("-v", "--verbose", is_flag=True, help="Show the plugin's log lines too.")
@click.option(
    "--avatar",
    is_flag=True,
    help="Speak through an in-process avatar that plays the audio and reports each playback.",
)
def demo_command(pace: float, verbose: bool, avatar: bool) -> None:
    """Run an agent session with the plugin in-process and feed it a scripted sequence.

    Needs no LiveKit server and no API keys: the messages take the same code path that bytes
    from a room take, and the answers are printed instead of published. With --avatar the agent
    speaks through an avatar in its own process (LiveKit's QueueAudioOutput, as bitHuman's local
    mode); an avatar in the room as its own participant needs a server (docs/avatar.md).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    asyncio.run(run_demo(pace_s=pace, avatar=avatar))
