"""Protocol v1.3 on a real ``livekit-server``: a subscriber whose connection dropped mid-call
resumes with no gap and no duplicate (the Python client, and the gateway's SSE on another
replica), a pre-recorded clip crosses the server as a real LiveKit byte stream and plays, and
the outcome events arrive. Nothing of LiveKit is faked here.
"""

from __future__ import annotations

import asyncio
import io
import uuid
import wave
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin import SpeechFailedError
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.testing import RecordingAudioOutput
from tests.helpers import wait_until
from tests.integration.live import BACKEND, WAIT_S, LiveAgent, live_agent
from tests.sse import Sse

WATCHER = "it-watcher"
REPLICA_B = "imaginex-gateway-b"
SECRET = "integration-gateway-secret"
LONG = "A long announcement that keeps the agent talking for a while. " * 4


def wav(seconds: float, rate: int = 16_000) -> bytes:
    frames = int(seconds * rate)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes((i * 5) % 256 for i in range(2 * frames)))
    return buffer.getvalue()


@pytest.fixture
async def agent(livekit: ServerInfo) -> AsyncIterator[LiveAgent]:
    identities = [BACKEND, WATCHER, DEFAULT_GATEWAY_IDENTITY, REPLICA_B]
    async with live_agent(
        livekit,
        agent_code=f"IT{uuid.uuid4().hex[:8].upper()}",
        allowed_identities=identities,
        permissions={identity: {"*"} for identity in identities},
    ) as joined:
        yield joined


async def test_a_client_dropped_mid_call_resumes_with_no_gap_and_no_duplicate(
    agent: LiveAgent,
) -> None:
    kinds: Any = ["speech", "agent_transcript", "context"]
    async with await agent.client() as speaker:
        watcher = await agent.client(identity=WATCHER)
        seen: list[Any] = []
        events = await watcher.subscribe(events=kinds)
        await speaker.speak("One.", id="s1", wait_for_playout=True, playout_timeout=WAIT_S)
        async for event in events:
            seen.append(event)
            if event.type == "agent_transcript":
                break
        last = events.last_seq
        await watcher.aclose()  # the watcher's connection drops: it leaves the room

        await speaker.speak("Two.", id="s2", wait_for_playout=True, playout_timeout=WAIT_S)
        await speaker.add_context("Note one.", key="n")
        await speaker.add_context("Note two.", key="n")  # the first one replaced unused
        await speaker.speak("Three.", id="s3", wait_for_playout=True, playout_timeout=WAIT_S)

        async with await agent.client(identity=WATCHER) as back:
            resumed = await back.subscribe(events=kinds, since_seq=last)
            got: list[Any] = []
            async for event in resumed:
                got.append(event)
                if len(got) == resumed.replayed:
                    break
            await speaker.speak("Four.", id="s4", wait_for_playout=True, playout_timeout=WAIT_S)
            async for event in resumed:
                got.append(event)
                if event.type == "agent_transcript":
                    break
    assert all(e.replay for e in got[: resumed.replayed])
    assert not any(e.replay for e in got[resumed.replayed:])
    seqs = [e.seq for e in seen + got]
    assert seqs == sorted(set(seqs)), "a gap in order, or a duplicate"
    transcripts = [e.text for e in got if e.type == "agent_transcript"]
    assert transcripts == ["Two.", "Three.", "Four."]
    dropped = [e for e in got if e.type == "context_dropped"]
    assert [(d.key, d.reason) for d in dropped] == [("n", "replaced")]


async def test_a_clip_crosses_the_server_as_a_byte_stream_and_plays(agent: LiveAgent) -> None:
    async with await agent.client() as client:
        result = await client.speak(
            "Chime.", audio=wav(0.5), wait_for_playout=True, playout_timeout=WAIT_S
        )
    assert result.ack.data.method == "say"
    assert result.finished.played_s == pytest.approx(0.5, abs=0.1)
    assert agent.tts.texts == []  # the clip, not the TTS


async def test_a_speech_that_cannot_start_in_time_fails_over_the_server(
    agent: LiveAgent,
) -> None:
    audio = agent.session.output.audio
    assert isinstance(audio, RecordingAudioOutput)
    audio.speed = 1.0  # real time: the long speech holds the floor
    async with await agent.client() as client:
        await client.speak(LONG, allow_interruptions=False)
        await wait_until(lambda: agent.session.agent_state == "speaking")
        with pytest.raises(SpeechFailedError) as failed:
            await client.speak(
                "Late.", start_within_s=0.3, wait_for_playout=True, playout_timeout=WAIT_S
            )
    assert failed.value.reason == "not_started"


# ---------------------------------------------------------------------------------------------
# the gateway's events stream on two replicas, against the real server


@pytest.fixture
async def replicas(livekit: ServerInfo) -> AsyncIterator[list[TestClient[Any, Any]]]:
    settings = LiveKitSettings(
        url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret
    )
    clients = []
    for identity in (DEFAULT_GATEWAY_IDENTITY, REPLICA_B):
        backend = LiveKitBackend(settings, identity=identity)
        client: TestClient[web.Request, web.Application] = TestClient(
            TestServer(create_app(backend, ApiSecrets(secret=SECRET)), host="127.0.0.1")
        )
        await client.start_server()
        clients.append(client)
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()


async def test_the_events_stream_resumes_on_another_replica(
    agent: LiveAgent, replicas: list[TestClient[Any, Any]]
) -> None:
    a, b = replicas
    code = agent.plugin.agent_code
    headers = {"api-secret": SECRET}
    path = f"/v1/agent/{code}/events"
    params = {"room_id": agent.room_name, "events": "agent_transcript,speech"}

    async def open_on(client: TestClient[Any, Any], last: int | None = None) -> Sse:
        sent = dict(headers)
        if last is not None:
            sent["Last-Event-ID"] = str(last)
        response = await client.get(path, params=params, headers=sent)
        assert response.status == 200, await response.text()
        return Sse(response)

    async def speak(text: str) -> None:
        response = await a.post(
            f"/v1/agent/{code}/speak", json={"message": text, "room_id": agent.room_name},
            headers=headers,
        )
        assert response.status == 200, await response.text()

    await wait_until(agent.code_listed, "the agent's code attribute to reach RoomService")
    control = await open_on(a)
    watcher = await open_on(a)
    await wait_until(lambda: DEFAULT_GATEWAY_IDENTITY in agent.plugin.subscribers)
    await speak("One.")
    await wait_until(lambda: watcher.texts() == ["One."], "One. on the watcher")
    last = watcher.events[-1][0]
    assert last is not None
    await watcher.close()  # the client's connection drops mid-call
    await speak("Two.")
    await wait_until(lambda: control.texts() == ["One.", "Two."], "Two. on the control")

    back = await open_on(b, last)  # it comes back through the other replica
    await wait_until(lambda: REPLICA_B in agent.plugin.subscribers, "replica B subscribed")
    await speak("Three.")
    await wait_until(lambda: back.texts()[-1:] == ["Three."], "Three. on the resumed stream")
    await wait_until(lambda: control.texts()[-1:] == ["Three."], "Three. on the control")

    def after(sse: Sse) -> list[tuple[int | None, str]]:
        return [(i, n) for i, n, _ in sse.events if i is not None and i > last]

    await asyncio.sleep(0.3)  # the last speech's end, on both
    assert after(back) == after(control)
    assert back.texts() == ["Two.", "Three."]
    for sse in (control, back):
        await sse.close()
