"""An agent that speaks through an avatar, in the shape of a bitHuman deployment, with no model
API keys and no avatar service: for local testing with ``livekit-server --dev``.

In production (a bitHuman avatar on the imaginex platform) the entrypoint reads::

    from livekit.plugins import bithuman

    await ctx.connect()
    session = AgentSession(
        stt=..., llm=..., tts=..., vad=...,
        # an avatar cannot pause its audio: a false interruption cannot be resumed
        turn_handling={"interruption": {"resume_false_interruption": False}},
    )
    await ContextPlugin(agent_code="A12345678", allowed_identities=["backend"]).start(
        session, ctx.room
    )
    # launches the avatar into the room (its own participant, publishing on behalf of this
    # agent) and routes the agent's audio to it: session.output.audio = DataStreamAudioOutput(
    # ctx.room, destination_identity="bithuman-avatar-agent")
    await bithuman.AvatarSession(avatar_id="A78WKV4515").start(session, room=ctx.room)
    await session.start(
        agent=Agent(instructions=...),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_output=False),  # the avatar publishes the audio
    )

Here :class:`LocalAvatar` stands where ``bithuman.AvatarSession`` stands: it launches
``examples/avatar_worker.py`` (a real avatar process: LiveKit's ``AvatarRunner`` with a
solid-colour face) into the room with its own join token, and sets the same
``DataStreamAudioOutput``, waiting for the avatar's video track and for the avatar's own
``lk.playback_started`` report, so that ``speech_started`` means "the avatar started playing".
The model side needs no keys: the test kit's ``ScriptedLLM`` with ``reply_from_context``
answers from the context it was given,
``RecordingTTS`` (the test kit) speaks silence as long as the text, and the VAD is the
on-device Silero model that livekit-agents ships (the user can barge in by talking).

Run it (``docs/avatar.md`` has the whole story)::

    scripts/livekit-server --dev                                   # terminal 1
    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    .venv/bin/python -m livekit.agents start examples/avatar_agent.py --dev   # terminal 2

and dispatch it into a room where a user is (``lk dispatch create --room demo --agent-name
avatar-agent``); then ``imaginex-context speak --room demo --wait-playout "Hello"`` returns once
the avatar has played it. ``tests/integration/test_avatar_live.py`` runs this worker against a
real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Final

from livekit import api, rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, inference, room_io
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import DataStreamAudioOutput

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, reply_from_context

AGENT_NAME: Final = "avatar-agent"
AGENT_CODE: Final = "AVATAR001"
AVATAR_IDENTITY: Final = "imaginex-avatar"
SENDERS: Final = ("backend", "imaginex-context-cli")
SECONDS_PER_CHAR: Final = 0.05
"""How long the silent TTS speaks per character of text (20 characters: one second)."""
AVATAR_WORKER: Final = Path(__file__).resolve().parent / "avatar_worker.py"
JOURNAL_DIR_ENV: Final = "AVATAR_JOURNAL_DIR"
"""If set, each launched avatar appends what it did to ``<dir>/<room>.jsonl`` (tests read it)."""
STOP_TIMEOUT_S: Final = 5.0

# its HTTP health server on loopback only (with --dev on a free port, else 8081)
server = AgentServer(host="127.0.0.1")


class LocalAvatar:
    """Launches ``examples/avatar_worker.py`` into the room and routes the agent's audio to it,
    as ``bithuman.AvatarSession`` launches a bitHuman avatar.

    Args:
        identity: The avatar's participant identity.
    """

    def __init__(self, *, identity: str = AVATAR_IDENTITY) -> None:
        self.identity = identity
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, session: AgentSession[Any], room: rtc.Room) -> None:
        """Launch the avatar and make it the session's audio output; ``room`` is connected."""
        token = (
            api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
            .with_identity(self.identity)
            .with_name("avatar")
            .with_kind("agent")
            # the avatar publishes on behalf of this agent: RoomIO never takes it for the user,
            # and ContextPlugin knows it for this agent's avatar
            .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: room.local_participant.identity})
            .with_grants(api.VideoGrants(room_join=True, room=room.name))
            .to_jwt()
        )
        args = [str(AVATAR_WORKER), "--identity", self.identity]
        journal_dir = os.getenv(JOURNAL_DIR_ENV)
        if journal_dir:
            args += ["--journal", str(Path(journal_dir) / f"{room.name}.jsonl")]
        # the token travels in the environment, not on the command line other users can read
        env = {**os.environ, "LIVEKIT_TOKEN": token}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        session.output.audio = DataStreamAudioOutput(
            room,
            destination_identity=self.identity,
            # the first speech waits until the avatar is in the room with its video
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,
            # playback_started (the agent's "speaking", the plugin's speech_started) is the
            # avatar's own report, not the moment the first audio frame was sent to it
            wait_playback_start=True,
        )

    async def aclose(self) -> None:
        """Stop the avatar process (it also leaves by itself when the agent leaves)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


@server.rtc_session(agent_name=AGENT_NAME)
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()  # the avatar's token names this agent, whose identity comes with it
    session: AgentSession[Any] = AgentSession(
        llm=ScriptedLLM(default_reply=reply_from_context),
        tts=RecordingTTS(seconds_per_char=SECONDS_PER_CHAR),
        vad=inference.VAD(),
        turn_handling={
            "turn_detection": "vad",
            # the avatar cannot pause its audio, so a false interruption cannot be resumed
            "interruption": {"mode": "vad", "resume_false_interruption": False},
        },
    )
    await ContextPlugin(
        agent_code=AGENT_CODE,
        # any participant named here may drive this local test agent; never in production
        allowed_identities=list(SENDERS),
        permissions={sender: {"*"} for sender in SENDERS},
    ).start(session, ctx.room)

    avatar = LocalAvatar()
    ctx.add_shutdown_callback(avatar.aclose)
    await avatar.start(session, ctx.room)

    await session.start(
        agent=Agent(instructions="You answer from the context you were given."),
        room=ctx.room,
        room_options=room_io.RoomOptions(audio_output=False),  # the avatar publishes the audio
    )
