"""The Python client on protocol v1.3, against the real AgentSession over the relay: it says it
speaks v1.3, a speech that did not play raises ``SpeechFailedError`` with its reason, a playout
wait that runs out says why, ``speak(audio=...)`` streams a clip and the agent plays it through
the same path as TTS, and ``subscribe(since_seq=...)`` resumes with nothing missing and nothing
twice.
"""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from imaginex_context_plugin import (
    ContextClient,
    ContextError,
    ErrorCode,
    PlayoutTimeoutError,
    SpeechFailedError,
)
from imaginex_context_plugin.protocol import (
    ACK_TOPIC,
    MAX_CLIP_BYTES,
    ContextUsedEvent,
    SpeechFinishedEvent,
)
from imaginex_context_plugin.receiver import AckTransport
from imaginex_context_plugin.sender.clips import AudioClip
from tests.conftest import BACKEND_IDENTITY, ROOM, Harness, HarnessFactory
from tests.helpers import wait_until

LONG = "A long announcement that keeps the agent talking for a while. " * 4
GRANTED: dict[str, Any] = {
    "permissions": {BACKEND_IDENTITY: {"*"}, "watcher": {"subscribe"}},
    "allowed_identities": [BACKEND_IDENTITY, "watcher"],
}


def wav_clip(seconds: float, *, rate: int = 16_000) -> bytes:
    """A WAV file of ``seconds`` of a quiet tone (not silence: a decoder must read samples)."""
    frames = int(seconds * rate)
    samples = bytes((i * 7) % 256 for i in range(2 * frames))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return buffer.getvalue()


async def test_the_client_says_it_speaks_v1_3(harness: Harness) -> None:
    sent: list[bytes] = []
    harness.network.published  # noqa: B018 - the relay records every packet
    async with ContextClient(harness.backend.room, via="data") as client:
        await client.add_context("A note.", key="k")
        sent = [p.payload for p in harness.network.published if p.topic != ACK_TOPIC]
    assert sent
    assert all(b'"protocol":"1.3"' in payload for payload in sent)


async def test_a_speech_that_did_not_start_in_time_raises_with_its_reason(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(speed=1.0)
    async with ContextClient(harness.backend.room) as client:
        await client.speak(LONG, id="long", allow_interruptions=False)
        await wait_until(lambda: harness.session.agent_state == "speaking")
        with pytest.raises(SpeechFailedError) as failed:
            await client.speak(
                "Your table is ready.", start_within_s=0.2, wait_for_playout=True,
                playout_timeout=30,
            )
        finished = await client.wait_for_playout("long")
    assert failed.value.reason == "not_started"
    assert failed.value.code is ErrorCode.SPEECH_FAILED
    assert failed.value.retryable is True
    assert failed.value.accepted is not None  # the speak itself was applied
    assert failed.value.event.started is False
    assert isinstance(finished, SpeechFinishedEvent)


class DropEnds(AckTransport):
    """The agent's real transport, except that speech ends never leave: a lost event."""

    async def send(self, payload: bytes, destination_identity: str) -> None:
        if b'"speech_finished"' in payload or b'"speech_failed"' in payload:
            return
        await super().send(payload, destination_identity)


async def test_a_playout_wait_that_runs_out_says_why(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(speed=1.0, ack_transport_for=DropEnds)
    async with ContextClient(harness.backend.room) as client:
        await client.speak(LONG, id="long")
        with pytest.raises(PlayoutTimeoutError) as pending:
            await client.wait_for_playout("long", timeout=0.2)
        await wait_until(lambda: not harness.plugin._parts.speeches.pending(), "the end")
        with pytest.raises(PlayoutTimeoutError) as lost:
            await client.wait_for_playout("long", timeout=0.1)
    assert pending.value.why == "pending"
    assert "still has it queued or playing" in pending.value.message
    assert lost.value.why == "lost"
    assert "its end was sent but did not arrive" in lost.value.message


async def test_a_clip_plays_through_the_same_path_as_tts(
    make_harness: HarnessFactory, tmp_path: Path
) -> None:
    harness: Harness = await make_harness()
    assert harness.audio is not None
    clip = wav_clip(0.4)
    path = tmp_path / "chime.wav"
    path.write_bytes(clip)
    async with ContextClient(harness.backend.room) as client:
        result = await client.speak(
            "Ding.", audio=path, id="chime", wait_for_playout=True, playout_timeout=30
        )
        no_text = await client.speak(audio=clip, id="chime2", wait_for_playout=True)
    assert result.ack.data.method == "say"
    assert result.finished.interrupted is False
    assert result.finished.played_s == pytest.approx(0.4, abs=0.05)
    assert no_text.finished.played_s == pytest.approx(0.4, abs=0.05)
    assert harness.tts.texts == []  # the clip, not the TTS
    # the transcript went to the history; the text-less one added nothing there
    texts = [m.text_content for m in harness.session.history.messages()]
    assert "Ding." in texts
    assert harness.plugin._clips.pending == 0  # used up


@pytest.mark.parametrize(
    ("audio", "code", "sentence"),
    [
        (b"not audio at all" * 10, ErrorCode.VALIDATION_ERROR, "could not be decoded"),
        (wav_clip(31.0, rate=8_000), ErrorCode.VALIDATION_ERROR, "longer than 30 s"),
    ],
)
async def test_a_clip_the_agent_cannot_play_is_refused(
    harness: Harness, audio: bytes, code: ErrorCode, sentence: str
) -> None:
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(ContextError) as refused:
            await client.speak(audio=audio, id="bad")
    assert refused.value.code is code
    assert sentence in refused.value.message
    assert harness.tts.texts == []


async def test_clip_limits_on_the_sender(harness: Harness) -> None:
    with pytest.raises(ContextError) as large:
        AudioClip.of(b"\0" * (MAX_CLIP_BYTES + 1))
    assert large.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(ContextError, match="empty"):
        AudioClip.of(b"")
    assert AudioClip.of(wav_clip(0.1)).mime_type == "audio/wav"
    # a speak naming a clip that never came
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(ContextError) as missing:
            await client.send({"type": "speak", "audio": {"stream_id": "never-sent"}})
    assert missing.value.code is ErrorCode.VALIDATION_ERROR
    assert "No audio clip" in missing.value.message


async def test_a_clip_from_someone_untrusted_is_never_read(harness: Harness) -> None:
    stranger = harness.network.create_room(ROOM, "stranger")
    writer = await stranger.local_participant.stream_bytes(
        "clip", stream_id="s1", topic="imaginex.audio", destination_identities=["agent"]
    )
    await writer.write(wav_clip(0.1))
    await writer.aclose()
    await asyncio.sleep(0.05)
    assert harness.plugin._clips.pending == 0


async def test_subscribe_resumes_after_a_dropped_connection(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**GRANTED)
    first_room = harness.network.create_room(ROOM, "watcher")
    seen: list[Any] = []
    async with ContextClient(harness.backend.room) as speaker:
        async with ContextClient(first_room) as watcher:
            events = await watcher.subscribe(events=["speech", "context", "agent_transcript"])
            assert events.snapshot is not None
            await speaker.speak("One.", id="s1", wait_for_playout=True)
            async for event in events:
                seen.append(event)
                if event.type == "agent_transcript":
                    break
            last = events.last_seq
            assert last == seen[-1].seq
        await first_room.disconnect()  # gone mid-call
        await speaker.speak("Two.", id="s2", wait_for_playout=True)
        await speaker.add_context("Note.", key="n")
        await speaker.speak("Three.", id="s3", instructions=None, wait_for_playout=True)

        back_room = harness.network.create_room(ROOM, "watcher")
        async with ContextClient(back_room) as watcher:
            resumed_events = await watcher.subscribe(
                events=["speech", "context", "agent_transcript"], since_seq=last
            )
            assert resumed_events.replayed >= 6
            resumed: list[Any] = []
            async for event in resumed_events:
                resumed.append(event)
                if len(resumed) == resumed_events.replayed:
                    break
    assert all(e.replay for e in resumed)
    seqs = [e.seq for e in seen + resumed]
    assert seqs == sorted(set(seqs)), "a gap in order or a repeat"
    # every speech's start and end that was not handed out before the drop comes again
    started = [e.id for e in resumed if e.type == "speech_started"]
    finished = [e.id for e in resumed if e.type == "speech_finished"]
    assert started == ["s2", "s3"]
    assert finished[-2:] == ["s2", "s3"]
    assert set(finished) <= {"s1", "s2", "s3"}
    assert not any(isinstance(e, ContextUsedEvent) for e in resumed)  # no model call carried it


async def test_since_seq_is_checked(harness: Harness) -> None:
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(ValueError, match="since_seq"):
            client.subscribe(since_seq=-1)
    _ = rtc
