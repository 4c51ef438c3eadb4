"""The avatar leaving, without a server: what ``ContextPlugin`` does when the participant that
plays the agent's audio (``DataStreamAudioOutput``'s destination) leaves the room.

The session's audio output is LiveKit's real ``DataStreamAudioOutput`` on a ``LinkedRoom`` (the
in-memory relay has no data streams, so no frame is ever sent here: these tests stop short of
playing). What happens to a speech playing when the avatar leaves, on the real wire, is in
``tests/integration/test_avatar_live.py``; the tracker's side of it is tested here directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import DataStreamAudioOutput

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.protocol import (
    ServerMessage,
    SpeakRequest,
    SpeechFinishedEvent,
    SpeechStartedEvent,
)
from imaginex_context_plugin.receiver.answers import AckWriter
from imaginex_context_plugin.receiver.avatar import (
    AVATAR_GONE_MESSAGE,
    AvatarWatch,
    streams_to_avatar,
)
from imaginex_context_plugin.receiver.event_log import EventLog
from imaginex_context_plugin.receiver.jobs import Job
from imaginex_context_plugin.receiver.speech import SpeechTracker
from imaginex_context_plugin.receiver.stats import PluginStats
from imaginex_context_plugin.receiver.subscribers import Subscribers
from imaginex_context_plugin.testing import OfflineRoom
from tests.conftest import AGENT_CODE, AGENT_IDENTITY, BACKEND_IDENTITY, ROOM, Backend
from tests.fakes import LinkedRoom, RecordingAudioOutput, RecordingTTS, RelayNetwork, start_session
from tests.helpers import WAIT_S, wait_until

AVATAR = "bithuman-avatar-agent"
SPOKEN = "la " * 40  # two seconds of the kit's TTS at 0.05 s a character


@dataclass
class AvatarRoom:
    network: RelayNetwork
    agent_room: LinkedRoom
    avatar_room: LinkedRoom
    session: AgentSession[Any]
    plugin: ContextPlugin
    backend: Backend

    def avatar_leaves(self) -> Any:
        return self.avatar_room.disconnect()

    def avatar_joins(self, identity: str = AVATAR) -> LinkedRoom:
        self.avatar_room = self.network.create_room(
            ROOM,
            identity,
            kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
            attributes={ATTRIBUTE_PUBLISH_ON_BEHALF: AGENT_IDENTITY},
        )
        return self.avatar_room


@pytest.fixture
async def avatar_room() -> AsyncIterator[AvatarRoom]:
    network = RelayNetwork()
    agent_room = network.create_room(
        ROOM, AGENT_IDENTITY, kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    )
    avatar = network.create_room(
        ROOM,
        AVATAR,
        kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        attributes={ATTRIBUTE_PUBLISH_ON_BEHALF: AGENT_IDENTITY},
    )
    session = await start_session(
        audio_output=DataStreamAudioOutput(agent_room, destination_identity=AVATAR)
    )
    plugin = ContextPlugin(
        agent_code=AGENT_CODE,
        allowed_identities=[BACKEND_IDENTITY],
        permissions={BACKEND_IDENTITY: {"*"}},
        trust_server=False,
    )
    await plugin.start(session, agent_room)
    backend = Backend(network.create_room(ROOM, BACKEND_IDENTITY))
    await wait_until(lambda: AVATAR in agent_room.remote_participants, "the avatar to be seen")
    try:
        yield AvatarRoom(network, agent_room, avatar, session, plugin, backend)
    finally:
        await plugin.aclose()
        await session.aclose()
        await network.aclose()


async def gone(room: AvatarRoom) -> None:
    await room.avatar_leaves()
    await wait_until(lambda: AVATAR not in room.agent_room.remote_participants, "the avatar gone")


async def test_the_output_chain_is_recognised_as_an_avatars() -> None:
    assert streams_to_avatar(DataStreamAudioOutput(OfflineRoom("r"), destination_identity=AVATAR))
    assert not streams_to_avatar(RecordingAudioOutput())
    assert not streams_to_avatar(None)


async def test_while_the_avatar_is_gone_speech_is_refused_and_nothing_takes_effect(
    avatar_room: AvatarRoom,
) -> None:
    backend = avatar_room.backend
    await gone(avatar_room)

    spoken = await backend.request({"type": "speak", "id": "s1", "message": "Hello?"})
    replied = await backend.request(
        {"type": "add_context", "id": "c1", "context": "A fact.", "trigger_reply": True}
    )
    answered = await backend.request({"type": "user_message", "id": "u1", "text": "Hi there"})
    for ack in (spoken, replied, answered):
        assert (ack["success"], ack["error"], ack["message"]) == (
            False,
            "NOT_READY",
            AVATAR_GONE_MESSAGE,
        )
    # refused as a whole: the context of the refused add_context is not kept
    assert avatar_room.plugin.context_store.describe() == []
    # what needs no voice still works
    added = await backend.request({"type": "add_context", "id": "c2", "context": "A fact."})
    assert added["success"] is True


async def test_speech_the_llm_starts_while_the_avatar_is_gone_is_cut_at_once(
    avatar_room: AvatarRoom,
) -> None:
    await gone(avatar_room)
    handle = avatar_room.session.say("Nobody will hear this.")
    # without the cut it would wait for a report that never comes
    await asyncio.wait_for(handle.wait_for_playout(), WAIT_S)
    assert handle.interrupted


async def test_a_muted_agent_speaks_as_text_while_the_avatar_is_gone(
    avatar_room: AvatarRoom,
) -> None:
    backend = avatar_room.backend
    await gone(avatar_room)
    await backend.request({"type": "update_io", "id": "m", "agent_audio": False})
    ack = await backend.request({"type": "speak", "id": "s1", "message": "Read this."})
    assert ack["success"] is True
    finished = await backend.event("speech_finished", "s1")
    assert finished["interrupted"] is False
    # unmuted, the voice would go to the missing avatar again
    await backend.request({"type": "update_io", "id": "u", "agent_audio": True})
    refused = await backend.request({"type": "speak", "id": "s2", "message": "Hello?"})
    assert refused["error"] == "NOT_READY"


async def test_an_avatar_back_in_the_room_is_spoken_through_again(
    avatar_room: AvatarRoom,
) -> None:
    await gone(avatar_room)
    refused = await avatar_room.backend.request({"type": "speak", "id": "s1", "message": "Hi"})
    assert refused["error"] == "NOT_READY"
    # a new avatar (another identity: a relaunch) publishing on behalf of this agent
    avatar_room.avatar_joins("bithuman-avatar-agent-2")
    await wait_until(
        lambda: "bithuman-avatar-agent-2" in avatar_room.agent_room.remote_participants,
        "the new avatar to be seen",
    )
    await avatar_room.backend.request({"type": "update_io", "id": "m", "agent_audio": False})
    ack = await avatar_room.backend.request({"type": "speak", "id": "s2", "message": "Hi"})
    assert ack["success"] is True


@pytest.mark.parametrize(
    "who",
    [
        ("it-user", rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, {}),
        (
            "other-avatar",
            rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
            {ATTRIBUTE_PUBLISH_ON_BEHALF: "another-agent"},
        ),
    ],
)
async def test_someone_else_leaving_changes_nothing(
    avatar_room: AvatarRoom, who: tuple[str, int, dict[str, str]]
) -> None:
    # the collaborator itself: with our avatar here, a speech would play (and stream frames,
    # which the in-memory relay cannot carry)
    identity, kind, attributes = who
    tracker = SpeechTracker(avatar_room.session, Sent().events())
    watch = AvatarWatch(avatar_room.session, avatar_room.agent_room, tracker)
    avatar_room.agent_room.on("participant_disconnected", watch.on_participant_disconnected)
    try:
        other = avatar_room.network.create_room(ROOM, identity, kind=kind, attributes=attributes)
        await wait_until(lambda: identity in avatar_room.agent_room.remote_participants)
        await other.disconnect()
        await wait_until(lambda: identity not in avatar_room.agent_room.remote_participants)
        assert not watch.absent
        watch.require_avatar()  # does not raise
        await gone(avatar_room)
        assert watch.absent
    finally:
        avatar_room.agent_room.off("participant_disconnected", watch.on_participant_disconnected)


# ---------------------------------------------------------------------------------------------
# the tracker: a speech cut because its avatar left


class Sent:
    def __init__(self) -> None:
        self.messages: list[ServerMessage] = []

    def __call__(self, _: str | None, message: ServerMessage) -> None:
        self.messages.append(message)

    def finished(self) -> list[SpeechFinishedEvent]:
        return [m for m in self.messages if isinstance(m, SpeechFinishedEvent)]

    def events(self) -> Subscribers:
        """The tracker's way out for events, sending to nobody but this recorder."""
        return Subscribers(
            writer=AckWriter(AGENT_CODE, lambda: ROOM), stats=PluginStats(), log=EventLog(),
            send=self,
        )


def speak_job(request_id: str) -> Job:
    return Job(SpeakRequest(type="speak", id=request_id, message=SPOKEN), BACKEND_IDENTITY)


async def test_a_playing_speech_cut_for_the_avatar_ends_once_without_a_played_time() -> None:
    audio = RecordingAudioOutput()
    session = await start_session(
        tts_model=RecordingTTS(seconds_per_char=0.05), audio_output=audio
    )
    sent = Sent()
    tracker = SpeechTracker(session, sent.events())
    tracker.watch_audio_output()
    session.on("agent_state_changed", tracker.on_agent_state_changed)
    try:
        handle = session.say(SPOKEN)
        tracker.track(handle, speak_job("s1"))
        await wait_until(
            lambda: any(isinstance(m, SpeechStartedEvent) for m in sent.messages), "playout"
        )
        assert tracker.cut_all_for_avatar() == 1
        await handle
        await wait_until(lambda: bool(sent.finished()), "speech_finished")
        (finished,) = sent.finished()
        assert (finished.id, finished.interrupted, finished.reason) == ("s1", True, "avatar_left")
        # the sink said how far it got; after the avatar left that is only what was sent
        assert audio.segments[0].played > 0
        assert finished.played_s is None
        assert tracker.cut_all_for_avatar() == 0
    finally:
        tracker.unwatch_audio_output()
        await session.aclose()


async def test_a_speech_cut_for_the_avatar_before_it_was_tracked_still_says_why() -> None:
    session = await start_session(tts_model=RecordingTTS(seconds_per_char=0.05))
    sent = Sent()
    tracker = SpeechTracker(session, sent.events())
    try:
        handle = session.say(SPOKEN)
        tracker.cut_for_avatar(handle)  # as LiveKit creates it (speech_created)
        tracker.track(handle, speak_job("s1"))
        await handle
        await wait_until(lambda: bool(sent.finished()), "speech_finished")
        (finished,) = sent.finished()
        assert (finished.interrupted, finished.reason, finished.played_s) == (
            True,
            "avatar_left",
            None,
        )
    finally:
        await session.aclose()
