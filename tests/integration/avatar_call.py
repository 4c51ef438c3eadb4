"""A call with an avatar on the real server: ``examples/avatar_agent.py`` as a real worker, the
avatar process it launches (``examples/avatar_worker.py``), a user, and a backend.

Shared by ``test_avatar_live.py`` and the benchmark's smoke test. The worker runs as
``python -m livekit.agents start examples/avatar_agent.py --dev`` (its own process group), with
``AVATAR_JOURNAL_DIR`` set so that each avatar it launches writes what it did (segments received,
playback started / finished with the position it reports, clears) to ``<dir>/<room>.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from livekit import api, rtc

from devtools.agent_worker import (
    DISPATCH_ATTEMPTS,
    DISPATCH_WAIT_S,
    WorkerError,
    WorkerProcess,
    agent_worker,
    livekit_env,
)
from devtools.livekit_server import ROOT, ServerInfo
from devtools.processes import stop_async_process
from imaginex_context_plugin.protocol import (
    ACK_TOPIC,
    AGENT_CODE_ATTRIBUTE,
    RPC_METHOD,
    SENDER_ATTRIBUTE,
)
from tests.fakes.voice import Microphone
from tests.helpers import wait_until
from tests.integration.live import participant_token, room_name

WORKER_FILE: Final = "examples/avatar_agent.py"
AVATAR_WORKER_FILE: Final = ROOT / "examples" / "avatar_worker.py"
AGENT_NAME: Final = "avatar-agent"
AGENT_CODE: Final = "AVATAR001"
AGENT_STATE_ATTRIBUTE: Final = "lk.agent.state"
AVATAR_IDENTITY: Final = "imaginex-avatar"
BACKEND: Final = "backend"
SECONDS_PER_CHAR: Final = 0.05
"""The example's silent TTS: 20 characters of text are one second of audio."""
READY_TIMEOUT_S: Final = 60.0
EVENT_TIMEOUT_S: Final = 30.0
PUBLISH_ON_BEHALF: Final = "lk.publish_on_behalf"
STOP_TIMEOUT_S: Final = 10.0


def words(seconds: float) -> str:
    """A text the example's TTS speaks for ``seconds``."""
    return ("la " * int(seconds / SECONDS_PER_CHAR / 3 + 1))[: int(seconds / SECONDS_PER_CHAR)]


@contextlib.contextmanager
def avatar_agent_worker(lk: ServerInfo, workdir: Path) -> Iterator[tuple[WorkerProcess, Path]]:
    """The example worker, registered; and the directory its avatars' journals go to."""
    journals = workdir / "journals"
    journals.mkdir(parents=True, exist_ok=True)
    try:
        with agent_worker(
            lk,
            WORKER_FILE,
            workdir / "avatar-agent.log",
            extra_env={"AVATAR_JOURNAL_DIR": str(journals)},
        ) as worker:
            yield worker, journals
    except WorkerError as exc:
        pytest.fail(str(exc), pytrace=False)


def sender_token(lk: ServerInfo, room: str, identity: str) -> str:
    """A backend's token as the plugin's senders have it: kind AGENT, the sender attribute
    (never linked as the user by the agent's RoomIO, never taken for the agent)."""
    return (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_attributes({SENDER_ATTRIBUTE: "1"})
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


@dataclass
class Backend:
    """A backend in the room: requests over RPC, every event it is sent kept with its arrival
    time (``time.time()``, comparable with the avatar's journal: same machine)."""

    room: rtc.Room = field(default_factory=rtc.Room)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    agent: str = ""

    def on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == ACK_TOPIC:
            self.events.append((time.time(), json.loads(packet.data)))

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` to the agent over RPC; its ack."""
        answer = await self.room.local_participant.perform_rpc(
            destination_identity=self.agent, method=RPC_METHOD, payload=json.dumps(message)
        )
        ack: dict[str, Any] = json.loads(answer)
        return ack

    async def speak(self, request_id: str, text: str, **options: Any) -> dict[str, Any]:
        ack = await self.request({"type": "speak", "id": request_id, "message": text, **options})
        assert ack["success"] is True, ack
        return ack

    def of(self, request_id: str, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, event)
            for t, event in self.events
            if event.get("type") == kind and event.get("id") == request_id
        ]

    async def wait_for(
        self, request_id: str, kind: str, timeout: float = EVENT_TIMEOUT_S
    ) -> tuple[float, dict[str, Any]]:
        """The first ``kind`` event (``speech_started`` / ``speech_finished``) of a request."""
        await wait_until(
            lambda: bool(self.of(request_id, kind)), f"{kind} of {request_id}", timeout=timeout
        )
        return self.of(request_id, kind)[0]


@dataclass
class AvatarCall:
    """One dispatched call: the room, its user (with a microphone), the backend, the avatar."""

    lk: ServerInfo
    name: str
    worker: WorkerProcess
    journal_path: Path
    user: rtc.Room
    microphone: Microphone
    backend: Backend
    disconnects: list[tuple[float, int]] = field(default_factory=list)
    """When (``time.time()``) and why the user was disconnected."""

    @property
    def agent_identity(self) -> str:
        return self.backend.agent

    def journal(self) -> list[dict[str, Any]]:
        """What the avatars of this room did so far, in order."""
        if not self.journal_path.exists():
            return []
        lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def avatar_events(self, kind: str) -> list[dict[str, Any]]:
        return [entry for entry in self.journal() if entry["event"] == kind]

    def avatar_pid(self) -> int:
        pid: int = self.avatar_events("joined")[-1]["pid"]
        return pid

    def avatar_in_room(self) -> bool:
        return any(
            p.attributes.get(PUBLISH_ON_BEHALF) == self.agent_identity
            for p in self.backend.room.remote_participants.values()
        )

    def avatar_video_published(self) -> bool:
        return any(
            p.attributes.get(PUBLISH_ON_BEHALF) == self.agent_identity
            and any(
                pub.kind == rtc.TrackKind.KIND_VIDEO for pub in p.track_publications.values()
            )
            for p in self.backend.room.remote_participants.values()
        )

    async def wait(self, predicate: Any, what: str, timeout: float = EVENT_TIMEOUT_S) -> None:
        """``wait_until``, with the worker's log and the journal in the failure message."""
        try:
            await wait_until(predicate, what, timeout=timeout)
        except pytest.fail.Exception as exc:
            pytest.fail(
                f"{exc}\njournal: {self.journal()}\nworker log:\n{self.worker.log()}",
                pytrace=False,
            )

    @contextlib.asynccontextmanager
    async def standalone_avatar(self) -> AsyncIterator[asyncio.subprocess.Process]:
        """``examples/avatar_worker.py`` started by hand (its own token from the API key), as
        an avatar coming back to the room; stopped (SIGTERM) at the end."""
        env = {**livekit_env(self.lk)}
        env.pop("LIVEKIT_TOKEN", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(AVATAR_WORKER_FILE),
            "--room",
            self.name,
            "--identity",
            AVATAR_IDENTITY,
            "--agent-identity",
            self.agent_identity,
            "--journal",
            str(self.journal_path),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            await stop_async_process(process, timeout=STOP_TIMEOUT_S)


def _agent_joined(room: rtc.Room) -> bool:
    return any(
        p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        and SENDER_ATTRIBUTE not in p.attributes
        and PUBLISH_ON_BEHALF not in p.attributes
        for p in room.remote_participants.values()
    )


def _agent_listening(room: rtc.Room) -> str | None:
    for participant in room.remote_participants.values():
        if (
            participant.attributes.get(AGENT_CODE_ATTRIBUTE) == AGENT_CODE
            and participant.attributes.get(AGENT_STATE_ATTRIBUTE) == "listening"
        ):
            return participant.identity
    return None


@contextlib.asynccontextmanager
async def avatar_call(
    lk: ServerInfo, worker: WorkerProcess, journals: Path
) -> AsyncIterator[AvatarCall]:
    """A fresh room with a user (publishing a microphone) and a backend, the worker dispatched
    into it, once the agent listens and its avatar has published its video.

    As ``devtools.agent_worker.dispatched_room``: the room is created first, and the dispatch is
    sent again while the agent does not come (livekit-server drops one a busy worker does not
    answer in time, and gives none to a worker reporting a load of 0.7 or more)."""
    name = room_name("it-avatar")
    user = rtc.Room()
    backend = Backend()
    backend.room.on("data_received", backend.on_data)
    call: AvatarCall | None = None
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        try:
            await lkapi.room.create_room(api.CreateRoomRequest(name=name, empty_timeout=120))
            # the user first, as in real life: the agent links its input to the user it finds
            await user.connect(lk.url, participant_token(lk, name, "it-user"))
            microphone = Microphone(user)
            await microphone.start()
            await backend.room.connect(lk.url, sender_token(lk, name, BACKEND))
            journal = journals / f"{name}.jsonl"
            call = AvatarCall(lk, name, worker, journal, user, microphone, backend)
            user.on("disconnected", lambda reason: call.disconnects.append((time.time(), reason)))

            def agent_ready() -> bool:
                backend.agent = _agent_listening(backend.room) or ""
                return bool(backend.agent)

            for _ in range(DISPATCH_ATTEMPTS):
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=name)
                )
                with contextlib.suppress(TimeoutError):
                    # an agent that joined is coming: never a second one (two avatars)
                    await _until(lambda: _agent_joined(backend.room), DISPATCH_WAIT_S)
                    break
            await call.wait(agent_ready, "the dispatched agent's session to run", READY_TIMEOUT_S)
            await call.wait(
                call.avatar_video_published, "the avatar to publish its video", READY_TIMEOUT_S
            )
            yield call
        finally:
            if call is not None:
                await call.microphone.aclose()
            await backend.room.disconnect()
            await user.disconnect()
            with contextlib.suppress(api.TwirpError):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))


async def _until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


def kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def settle(seconds: float) -> None:
    """Let time pass where a test must show that something does NOT happen (an extra event)."""
    await asyncio.sleep(seconds)
