"""Live call control on the real server: ``end_call`` inside a real job deletes the room, and the
gateway's events stream follows a real room until the call ends.

The job is ``tests/integration/call_control_worker.py`` run as a real worker (``start --dev``,
dispatched with the agent dispatch API, as ``test_worker_live.py`` runs the offline example). A
plain ``rtc.Room`` user sits in the room; a backend (``ContextClient``) and the CLI
(``imaginex-context subscribe``, a subprocess) watch the call, and the backend ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api, rtc

from devtools.agent_worker import WorkerProcess, agent_worker, livekit_env
from devtools.livekit_server import ROOT, ServerInfo
from devtools.processes import communicate_within
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextClient
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.protocol import AgentTranscriptEvent, CallEndedEvent, SessionEvent
from tests.helpers import wait_until
from tests.integration.call_control_worker import AGENT_CODE, AGENT_NAME
from tests.integration.live import live_agent, participant_token, read_events, room_name
from tests.integration.test_worker_live import (
    AGENT_STATE_ATTRIBUTE,
    CLI,
    wait_for,
)

WORKER_FILE = "tests/integration/call_control_worker.py"
GATEWAY_SECRET = "integration-events-secret"
STREAM_TIMEOUT_S = 30.0


@contextlib.contextmanager
def call_control_worker(lk: ServerInfo, tmp_path: Path) -> Iterator[WorkerProcess]:
    with agent_worker(lk, WORKER_FILE, tmp_path / "call-control-agent.log") as worker:
        yield worker


class User:
    """A plain participant in the room: the caller, who is hung up on."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.disconnects: list[int] = []
        self.room.on("disconnected", self.disconnects.append)

    def agent_listening(self) -> bool:
        return any(
            p.attributes.get(AGENT_CODE_ATTRIBUTE) == AGENT_CODE
            and p.attributes.get(AGENT_STATE_ATTRIBUTE) == "listening"
            for p in self.room.remote_participants.values()
        )


async def listed_rooms(lk: ServerInfo) -> list[str]:
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        listing = await lkapi.room.list_rooms(api.ListRoomsRequest())
    return [room.name for room in listing.rooms]


async def start_cli_subscriber(lk: ServerInfo, room: str) -> asyncio.subprocess.Process:
    """``imaginex-context subscribe --json`` in the room, once it printed its subscribe ack."""
    process = await asyncio.create_subprocess_exec(
        str(CLI),
        "subscribe",
        "--room",
        room,
        "--agent-code",
        AGENT_CODE,
        "--json",
        cwd=ROOT,
        env=livekit_env(lk),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), STREAM_TIMEOUT_S)
    if not first:
        assert process.stderr is not None
        pytest.fail(f"the CLI subscriber printed nothing: {(await process.stderr.read())!r}")
    ack = json.loads(first)
    assert (ack["type"], ack["success"]) == ("ack", True), ack
    return process


async def cli_output(process: asyncio.subprocess.Process) -> tuple[int, list[dict[str, Any]]]:
    out, err = await communicate_within(process, STREAM_TIMEOUT_S)
    assert process.returncode is not None
    assert process.returncode == 0, err.decode(errors="replace")
    return process.returncode, [json.loads(line) for line in out.decode().splitlines()]


async def test_end_call_in_a_real_job_deletes_the_room_and_hangs_up_on_the_user(
    livekit: ServerInfo, tmp_path: Path
) -> None:
    room = room_name("it-end-call")
    user = User()
    await user.room.connect(livekit.url, participant_token(livekit, room, "it-caller"))
    cli_subscriber: asyncio.subprocess.Process | None = None
    with call_control_worker(livekit, tmp_path) as worker:
        try:
            async with api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret) as lkapi:
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room)
                )
            await wait_for(worker, user.agent_listening, "the dispatched agent's session to run")

            # Ctrl-C: the CLI unsubscribes as it leaves, and exits 0
            cli_subscriber = await start_cli_subscriber(livekit, room)
            cli_subscriber.send_signal(signal.SIGINT)
            await cli_output(cli_subscriber)
            await wait_for(
                worker,
                lambda: "session events unsubscribed" in worker.text(),
                "the agent to log the CLI's unsubscribe",
            )

            cli_subscriber = await start_cli_subscriber(livekit, room)
            client = await ContextClient.connect(
                livekit.url,
                livekit.api_key,
                livekit.api_secret,
                room,
                identity="backend",
                agent_code=AGENT_CODE,
            )
            async with client, client.subscribe(events=["agent_transcript"]) as events:
                result = await client.speak("Thanks for calling, goodbye.", wait_for_playout=True)
                assert result.interrupted is False
                ack = await client.end_call(reason="Order complete")
                assert ack.data.context_type == "end_call"
                received = await asyncio.wait_for(collect(events), STREAM_TIMEOUT_S)

            transcripts = [e for e in received if isinstance(e, AgentTranscriptEvent)]
            assert [t.text for t in transcripts] == ["Thanks for calling, goodbye."]
            assert isinstance(received[-1], CallEndedEvent)
            assert received[-1].reason == "Order complete"

            # the job deleted the room: the user was disconnected, RoomService lists it no more
            await wait_for(worker, lambda: bool(user.disconnects), "the user to be hung up on")
            assert user.disconnects == [rtc.DisconnectReason.ROOM_DELETED]
            await wait_for(
                worker,
                lambda: listed_rooms_without(livekit, room),
                "RoomService to stop listing the room",
            )
            # the job's log reaches the worker's file through its parent process: it may lag
            await wait_for(
                worker,
                lambda: "deleting the room: the call was ended" in worker.text(),
                "the job to log that it deleted the room",
            )

            # the CLI watched the same call and stopped after call_ended, exit status 0
            _, printed = await cli_output(cli_subscriber)
            cli_subscriber = None
            kinds = [doc["type"] for doc in printed]
            assert "agent_transcript" in kinds
            assert kinds[-1] == "call_ended"
            assert printed[-1]["reason"] == "Order complete"
        except BaseException:
            print(f"worker log:\n{worker.log()}")
            raise
        finally:
            if cli_subscriber is not None and cli_subscriber.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(cli_subscriber.pid, signal.SIGKILL)
                await cli_subscriber.wait()
            await user.room.disconnect()


async def collect(events: AsyncIterator[SessionEvent]) -> list[SessionEvent]:
    return [event async for event in events]


async def listed_rooms_without(lk: ServerInfo, room: str) -> bool:
    return room not in await listed_rooms(lk)


# ---------------------------------------------------------------------------------------------
# the gateway's GET /v1/agent/{code}/events on a real room


@pytest.fixture
async def gateway(livekit: ServerInfo) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    backend = LiveKitBackend(
        LiveKitSettings(url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret)
    )
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(backend, ApiSecrets(secret=GATEWAY_SECRET)), host="127.0.0.1")
    )
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_the_gateway_streams_a_real_rooms_events_until_end_call(
    livekit: ServerInfo, gateway: TestClient[web.Request, web.Application]
) -> None:
    code = f"IT{uuid.uuid4().hex[:8].upper()}"
    async with live_agent(
        livekit,
        agent_code=code,
        allowed_identities=[DEFAULT_GATEWAY_IDENTITY],
        permissions={DEFAULT_GATEWAY_IDENTITY: {"*"}},
    ) as agent:
        await wait_until(agent.code_listed, "the agent's code attribute to reach RoomService")
        headers = {"api-secret": GATEWAY_SECRET}
        response = await gateway.get(
            f"/v1/agent/{code}/events",
            params={"room_id": agent.room_name, "events": "agent_state,agent_transcript"},
            headers=headers,
        )
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        reader = asyncio.ensure_future(read_events(response))

        spoken = await gateway.post(
            f"/v1/agent/{code}/speak",
            json={"message": "Your table is booked for 8 pm.", "room_id": agent.room_name},
            headers=headers,
        )
        assert spoken.status == 200, await spoken.text()
        await wait_until(lambda: agent.said() == ["Your table is booked for 8 pm."])
        ended = await gateway.post(
            f"/v1/agent/{code}/end-call",
            json={"reason": "Booked", "room_id": agent.room_name},
            headers=headers,
        )
        assert ended.status == 200, await ended.text()
        # the stream closes by itself after call_ended
        events = await asyncio.wait_for(reader, STREAM_TIMEOUT_S)
        response.release()

    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "call_ended"
    assert events[-1][1]["reason"] == "Booked"
    assert ("agent_state", "speaking") in [(k, e.get("new_state")) for k, e in events]
    transcript = next(e for k, e in events if k == "agent_transcript")
    assert transcript["text"] == "Your table is booked for 8 pm."
    assert transcript["interrupted"] is False
    assert all(e["type"] == k for k, e in events)
    assert "user_transcript" not in kinds  # not asked for


async def test_the_documented_javascript_watch_example_runs_on_a_real_room(
    livekit: ServerInfo, gateway: TestClient[web.Request, web.Application], tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    text = (ROOT / "docs" / "gateway" / "examples.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```javascript[ \t]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    (watch,) = [code for code in blocks if "/events?room_id=watched_room" in code]
    script = tmp_path / "watch.mjs"  # .mjs: the example uses top-level await
    script.write_text(watch, encoding="utf-8")
    # the example's own agent code and room, on the real server
    async with live_agent(
        livekit,
        room="watched_room",
        agent_code="A87654321",
        allowed_identities=[DEFAULT_GATEWAY_IDENTITY],
        permissions={DEFAULT_GATEWAY_IDENTITY: {"*"}},
    ) as agent:
        await wait_until(agent.code_listed, "the agent's code attribute to reach RoomService")
        env = {
            **os.environ,
            "GATEWAY_URL": str(gateway.make_url("")).rstrip("/"),
            "IMAGINEX_API_SECRET": GATEWAY_SECRET,
        }
        process = await asyncio.create_subprocess_exec(
            node,
            str(script),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), STREAM_TIMEOUT_S)
        output = out.decode(errors="replace")
        assert process.returncode == 0, output
        assert agent.said() == ["Your table is booked for 8 pm."]

    assert "agent is speaking" in output
    assert "agent said: Your table is booked for 8 pm." in output
    assert output.rstrip().endswith("call ended: Booking done")
