"""``speak{audio}`` on the agent (protocol v1.3): clips arrive as byte streams over the relay
(real ``rtc.Room`` handlers), are bounded, checked against their ``sha256``, and play through
the session's audio output like TTS speech, with the same modes and playout events; a realtime
model without any TTS plays them too."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from livekit import rtc

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.protocol import AUDIO_STREAM_TOPIC, MAX_CLIP_BYTES
from imaginex_context_plugin.receiver.clip_player import MAX_CLIPS_PER_SENDER
from tests.conftest import AGENT_CODE, AGENT_IDENTITY, BACKEND_IDENTITY, ROOM, Backend, Harness
from tests.fakes import FakeRealtimeModel, RecordingAudioOutput, RelayNetwork, start_session
from tests.helpers import wait_until
from tests.sender.test_client_v1_3 import wav_clip

V13 = {"protocol": "1.3"}


async def stream(backend: Backend, data: bytes, stream_id: str, **kwargs: Any) -> None:
    writer = await backend.room.local_participant.stream_bytes(
        "clip", stream_id=stream_id, topic=AUDIO_STREAM_TOPIC,
        destination_identities=[AGENT_IDENTITY], mime_type="audio/wav", **kwargs,
    )
    await writer.write(data)
    await writer.aclose()


async def test_a_clip_plays_with_the_speech_events_and_its_checksum(harness: Harness) -> None:
    clip = wav_clip(0.3)
    await stream(harness.backend, clip, "c1")
    ack = await harness.backend.request(
        {"type": "speak", "id": "s1", "message": "Ding.", **V13,
         "audio": {"stream_id": "c1", "sha256": hashlib.sha256(clip).hexdigest()}}
    )
    assert ack["success"] is True
    assert ack["data"]["method"] == "say"
    await harness.backend.event("speech_started", "s1")
    finished = await harness.backend.event("speech_finished", "s1")
    assert abs(finished["played_s"] - 0.3) < 0.05
    assert harness.tts.texts == []


async def test_a_clip_that_is_not_the_one_named_is_refused(harness: Harness) -> None:
    await stream(harness.backend, wav_clip(0.2), "c1")
    ack = await harness.backend.request(
        {"type": "speak", "id": "s1", "audio": {"stream_id": "c1", "sha256": "0" * 64}}
    )
    assert ack["error"] == "VALIDATION_ERROR"
    assert "not the one 'audio.sha256' names" in ack["message"]
    assert harness.plugin._clips.pending == 0  # used up all the same


async def test_a_clip_announced_too_large_is_never_read(harness: Harness) -> None:
    await stream(harness.backend, b"RIFF", "big", total_size=MAX_CLIP_BYTES + 1)
    ack = await harness.backend.request(
        {"type": "speak", "id": "s1", "audio": {"stream_id": "big"}}
    )
    assert ack["error"] == "PAYLOAD_TOO_LARGE"


async def test_one_sender_holds_at_most_a_few_clips(harness: Harness) -> None:
    for n in range(MAX_CLIPS_PER_SENDER + 1):
        await stream(harness.backend, wav_clip(0.05), f"c{n}")
    await asyncio.sleep(0.05)
    assert harness.plugin._clips.pending == MAX_CLIPS_PER_SENDER
    extra = await harness.backend.request(
        {"type": "speak", "id": "s", "audio": {"stream_id": f"c{MAX_CLIPS_PER_SENDER}"}}
    )
    assert extra["error"] == "VALIDATION_ERROR"
    assert "No audio clip" in extra["message"]


async def test_if_idle_refuses_a_busy_agent_and_keeps_the_clip(harness: Harness) -> None:
    await harness.backend.request(
        {"type": "speak", "id": "long", "message": "A long announcement. " * 10}
    )
    await harness.backend.event("speech_started", "long")
    await stream(harness.backend, wav_clip(0.1), "c1")
    busy = await harness.backend.request(
        {"type": "speak", "id": "s1", "mode": "if_idle", "audio": {"stream_id": "c1"}}
    )
    assert busy["error"] == "BUSY"
    await harness.backend.event("speech_finished", "long")
    await wait_until(lambda: harness.session.agent_state != "speaking")
    again = await harness.backend.request(
        {"type": "speak", "id": "s2", "mode": "if_idle", "audio": {"stream_id": "c1"}}
    )
    assert again["success"] is True


async def test_a_realtime_model_without_tts_plays_a_clip() -> None:
    network = RelayNetwork()
    model = FakeRealtimeModel()
    audio = RecordingAudioOutput(speed=20)
    session = await start_session(llm_model=model, no_tts=True, audio_output=audio)
    kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    room = network.create_room(ROOM, AGENT_IDENTITY, kind=kind)
    plugin = ContextPlugin(agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY])
    backend = Backend(network.create_room(ROOM, BACKEND_IDENTITY))
    await plugin.start(session, room)
    try:
        await stream(backend, wav_clip(0.2), "c1")
        ack = await backend.request(
            {"type": "speak", "id": "s1", "message": "Chime.", "audio": {"stream_id": "c1"}}
        )
        assert ack["data"]["method"] == "say"
        finished = await backend.event("speech_finished", "s1")
        assert abs(finished["played_s"] - 0.2) < 0.05
        assert model.said == []  # the model never spoke it: the clip did
    finally:
        await plugin.aclose()
        await session.aclose()
        await network.aclose()
