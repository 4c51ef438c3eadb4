"""Speaking through an avatar on the real server: the platform's deployment shape.

``examples/avatar_agent.py`` runs as a real worker (``start --dev``, dispatched by the server)
with ``ContextPlugin`` and ``session.output.audio = DataStreamAudioOutput(...)``; for each room it
launches ``examples/avatar_worker.py``, a separate process that joins as its own participant,
receives the agent's audio over the LiveKit data stream, plays it in real time with LiveKit's
``AvatarRunner`` (a tiny video track in step) and reports playback started / finished back over
RPC. A user (publishing a microphone) and a backend sit in the room. Nothing of LiveKit is faked:
the TTS is the test kit's silence of a known length (20 characters a second), the VAD the
on-device Silero model livekit-agents ships.

Each avatar writes what it did to a journal (``AVATAR_JOURNAL_DIR``): the test compares the
agent's events with what the avatar reported, time and position.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc

from devtools.livekit_server import ServerInfo
from tests.integration.avatar_call import (
    AvatarCall,
    avatar_agent_worker,
    avatar_call,
    kill,
    settle,
    words,
)

# the avatar plays in real time; its report comes back a round trip after the audio played
PLAYED_TOLERANCE_S = 0.25
QUIET_S = 2.0  # how long to watch for an event that must not come


@pytest.fixture
async def call(livekit: ServerInfo, tmp_path: Path) -> AsyncIterator[AvatarCall]:
    # a worker per test: livekit-server only dispatches to a worker whose reported load (the
    # machine's CPU) is under 0.7, and a fresh worker reports 0 until its first refresh
    with avatar_agent_worker(livekit, tmp_path) as (worker, journals):
        async with avatar_call(livekit, worker, journals) as started:
            try:
                yield started
            except BaseException:
                print(f"journal: {started.journal()}\nworker log:\n{started.worker.log()}")
                raise


def finished_reports(call: AvatarCall) -> list[dict[str, object]]:
    return call.avatar_events("playback_finished")


async def test_speech_finished_comes_after_the_avatar_reported_the_playback(
    call: AvatarCall,
) -> None:
    backend = call.backend
    ack = await backend.speak("s1", words(2.0))
    assert ack["data"]["method"] == "say"
    started_at, started = await backend.wait_for("s1", "speech_started")
    finished_at, finished = await backend.wait_for("s1", "speech_finished")

    (received,) = call.avatar_events("segment_received")
    (playback_started,) = call.avatar_events("playback_started")
    (report,) = finished_reports(call)
    assert received["audio_s"] == pytest.approx(2.0, abs=0.05)
    assert report == {**report, "interrupted": False}
    # the agent sent the whole speech at once, seconds before the avatar had played it: the
    # event waited for the avatar's report, and carries the position the avatar reported
    assert received["t"] < report["t"] - 1.0
    assert finished_at >= report["t"]
    assert finished["interrupted"] is False
    assert finished["played_s"] == report["played_s"]
    assert finished["speech_id"] == started["speech_id"] == ack["data"]["speech_id"]
    # speech_started is the avatar's own playback_started, not the agent's first frame sent
    assert started_at >= playback_started["t"]
    # the avatar played the whole 2 s before speech_finished: timed on the avatar's own clock
    # readings (the events' arrival at the backend lags by whatever the machine's load adds)
    assert report["t"] - playback_started["t"] >= 2.0 - PLAYED_TOLERANCE_S
    assert finished_at >= playback_started["t"] + 2.0 - PLAYED_TOLERANCE_S


async def _after_playing(call: AvatarCall, started_at: float, seconds: float) -> None:
    await call.wait(lambda: time.time() - started_at >= seconds, f"{seconds} s of playout")


CUTS = ["interrupt", "speak_mode_interrupt", "cancel_playing", "user_barge_in"]


@pytest.mark.parametrize("cut", CUTS)
async def test_a_cut_ends_the_avatars_playback_with_the_position_it_reported(
    call: AvatarCall, cut: str
) -> None:
    backend = call.backend
    await backend.speak("long", words(5.0))
    started_at, _ = await backend.wait_for("long", "speech_started")
    await _after_playing(call, started_at, 1.0)

    if cut == "interrupt":
        ack = await backend.request({"type": "interrupt", "id": "cut"})
        assert ack["success"] is True, ack
        assert ack["data"]["interrupted"] is True
    elif cut == "speak_mode_interrupt":
        await backend.speak("next", words(1.0), mode="interrupt")
    elif cut == "cancel_playing":
        ack = await backend.request({"type": "cancel", "id": "cut", "target_id": "long"})
        assert ack["success"] is True, ack
        assert ack["data"]["cancelled"] == "playing"
    else:
        # the user talks over the agent: real audio, the session's own VAD cuts the speech
        call.microphone.say(1.5)
    finished_at, finished = await backend.wait_for("long", "speech_finished")

    report = finished_reports(call)[0]
    assert report["interrupted"] is True
    assert call.avatar_events("clear_buffer"), "the agent told the avatar to clear its buffer"
    assert finished["interrupted"] is True
    assert finished["played_s"] == report["played_s"]
    assert 1.0 - PLAYED_TOLERANCE_S <= finished["played_s"] < 5.0 - 1.0
    assert finished_at >= report["t"]
    assert finished.get("cancelled") is (True if cut == "cancel_playing" else None)
    if cut == "speak_mode_interrupt":
        # the speech that cut it plays in full, on the same avatar
        _, after = await backend.wait_for("next", "speech_finished")
        assert after["interrupted"] is False
        assert after["played_s"] == finished_reports(call)[1]["played_s"]
    await settle(QUIET_S)
    assert len(backend.of("long", "speech_finished")) == 1


async def test_a_cancelled_queued_speech_never_reaches_the_avatar(call: AvatarCall) -> None:
    backend = call.backend
    await backend.speak("first", words(2.0))
    await backend.speak("queued", words(2.0))
    await backend.wait_for("first", "speech_started")
    ack = await backend.request({"type": "cancel", "id": "cut", "target_id": "queued"})
    assert ack["success"] is True, ack
    assert ack["data"]["cancelled"] == "queued"

    _, cancelled = await backend.wait_for("queued", "speech_finished")
    assert (cancelled["interrupted"], cancelled["cancelled"]) == (True, True)
    assert "played_s" not in cancelled  # nothing of it was played
    _, first = await backend.wait_for("first", "speech_finished")
    assert first["interrupted"] is False
    await settle(QUIET_S)
    # the avatar got the first speech only, and played all of it
    assert [e["audio_s"] for e in call.avatar_events("segment_received")] == [
        pytest.approx(2.0, abs=0.05)
    ]
    assert [r["played_s"] for r in finished_reports(call)] == [first["played_s"]]
    assert backend.of("queued", "speech_started") == []


async def test_muting_stops_audio_reaching_the_avatar_and_unmuting_resumes(
    call: AvatarCall,
) -> None:
    backend = call.backend
    muted = await backend.request({"type": "update_io", "id": "mute", "agent_audio": False})
    assert muted["data"]["io"]["agent_audio"] is False, muted
    await backend.speak("muted", words(1.0))
    _, silent = await backend.wait_for("muted", "speech_finished")
    # text only: nothing was sent to the avatar, nothing played
    assert silent["interrupted"] is False
    assert "played_s" not in silent
    await settle(QUIET_S)
    assert call.avatar_events("segment_received") == []

    unmuted = await backend.request({"type": "update_io", "id": "unmute", "agent_audio": True})
    assert unmuted["data"]["io"]["agent_audio"] is True, unmuted
    await backend.speak("heard", words(1.0))
    _, heard = await backend.wait_for("heard", "speech_finished")
    assert heard["interrupted"] is False
    (report,) = finished_reports(call)
    assert heard["played_s"] == report["played_s"] == pytest.approx(1.0, abs=0.15)


async def test_end_call_after_speaking_waits_for_the_avatars_playback(call: AvatarCall) -> None:
    backend = call.backend
    await backend.speak("bye", words(2.0))
    ended = await backend.request({"type": "end_call", "id": "end", "reason": "done"})
    assert ended["success"] is True, ended

    finished_at, finished = await backend.wait_for("bye", "speech_finished")
    (report,) = finished_reports(call)
    # the goodbye played in full on the avatar before the call ended
    assert report["interrupted"] is False
    assert finished["interrupted"] is False
    assert finished["played_s"] == report["played_s"] == pytest.approx(2.0, abs=0.15)
    await call.wait(lambda: bool(call.disconnects), "the user to be hung up on")
    (hung_up_at, reason), *_ = call.disconnects
    assert reason == rtc.DisconnectReason.ROOM_DELETED
    assert hung_up_at > report["t"]
    assert hung_up_at > finished_at


@pytest.mark.parametrize("how", ["leaves", "crashes"])
async def test_the_avatar_going_mid_speech_ends_it_once_and_a_new_avatar_is_heard(
    call: AvatarCall, how: str
) -> None:
    backend = call.backend
    await backend.speak("long", words(5.0))
    await backend.speak("queued", words(1.0))
    started_at, _ = await backend.wait_for("long", "speech_started")
    await _after_playing(call, started_at, 1.0)
    gone_at = time.time()
    kill(call.avatar_pid(), signal.SIGTERM if how == "leaves" else signal.SIGKILL)

    # a crashed avatar is gone once the server drops it (about 20 s on livekit-server 1.13)
    _, long = await backend.wait_for("long", "speech_finished", timeout=60.0)
    _, queued = await backend.wait_for("queued", "speech_finished", timeout=15.0)
    for finished in (long, queued):
        assert finished["interrupted"] is True
        assert finished["reason"] == "avatar_left"
        assert "played_s" not in finished  # nobody reported what was played
    assert backend.of("queued", "speech_started") == []
    assert not call.avatar_in_room()
    print(f"avatar {how}: speech ended {time.time() - gone_at:.1f} s after")

    # while no avatar is there, a speak is refused (retryable) instead of hanging
    refused = await backend.request({"type": "speak", "id": "meanwhile", "message": "Hello?"})
    assert (refused["success"], refused["error"]) == (False, "NOT_READY"), refused
    assert "avatar" in refused["message"]

    async with call.standalone_avatar():
        await call.wait(call.avatar_video_published, "a new avatar to publish its video")
        await backend.speak("back", words(1.0))
        _, back = await backend.wait_for("back", "speech_finished")
        assert back["interrupted"] is False
        assert back["played_s"] == finished_reports(call)[-1]["played_s"]
        assert back["played_s"] == pytest.approx(1.0, abs=0.15)
    await settle(QUIET_S)
    for request_id in ("long", "queued", "back"):
        assert len(backend.of(request_id, "speech_finished")) == 1
