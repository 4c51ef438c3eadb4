"""A LiveKit agent worker process (``python -m livekit.agents start FILE --dev``) and rooms it is
dispatched into, shared by the live tests and the benchmarks.

On livekit-server 1.13.5 a dispatch reaches the worker reliably only into a room that exists
(neither a dispatch to a room not created yet nor one named in a participant's token did in our
runs), and the server drops a dispatch when the worker does not answer in time, as a loaded
machine makes it: :func:`dispatched_room` creates the room, dispatches, and dispatches again
until the agent is in the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from devtools.livekit_server import ROOT, ServerInfo
from devtools.processes import stop_process

REGISTER_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0
DISPATCH_ATTEMPTS: Final = 4
DISPATCH_WAIT_S: Final = 15.0
ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")
"""The colours ``livekit.agents`` puts in its log lines."""


class WorkerError(RuntimeError):
    """The worker exited, did not register, or never joined a room it was dispatched into."""


@dataclass
class WorkerProcess:
    """The worker process; ``text()`` is everything it printed so far, without colours."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def text(self) -> str:
        return ANSI.sub("", self.log_path.read_text(errors="replace"))

    def log(self, lines: int = 120) -> str:
        return "\n".join(line[:500] for line in self.text().splitlines()[-lines:])

    def registered(self) -> bool:
        return "registered worker" in self.text()

    def stop(self) -> None:
        """SIGTERM to the worker (it closes its job processes), SIGKILL to its whole group: its
        job and forkserver processes are in it, and none may outlive it."""
        stop_process(self.process, timeout=STOP_TIMEOUT_S, reap_group=True)


def livekit_env(lk: ServerInfo) -> dict[str, str]:
    env = {
        **os.environ,
        "LIVEKIT_URL": lk.url,
        "LIVEKIT_API_KEY": lk.api_key,
        "LIVEKIT_API_SECRET": lk.api_secret,
    }
    env.pop("PYTHONWARNINGS", None)
    return env


def start_worker(
    lk: ServerInfo,
    worker_file: str,
    log_path: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> WorkerProcess:
    """Start ``worker_file`` (relative to the repository) as a worker in its own session, its
    output in ``log_path``, without waiting for it to register; ``worker.stop()`` ends it.
    ``extra_env`` is added to its environment."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "livekit.agents", "start", worker_file, "--dev"],
            cwd=ROOT,
            env={**livekit_env(lk), **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(process, log_path)


@contextlib.contextmanager
def agent_worker(
    lk: ServerInfo,
    worker_file: str,
    log_path: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[WorkerProcess]:
    """:func:`start_worker`, waiting until it registered; stopped (SIGTERM, then SIGKILL to its
    whole process group) afterwards."""
    worker = start_worker(lk, worker_file, log_path, extra_env=extra_env)
    process = worker.process
    try:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while not worker.registered():
            if process.poll() is not None:
                raise WorkerError(f"the worker exited with {process.returncode}:\n{worker.log()}")
            if time.monotonic() > deadline:
                raise WorkerError(f"the worker did not register in time:\n{worker.log()}")
            time.sleep(0.1)
        yield worker
    finally:
        worker.stop()


@contextlib.asynccontextmanager
async def dispatched_room(
    lk: ServerInfo, agent_name: str, *, prefix: str, agent_attribute: tuple[str, str]
) -> AsyncIterator[str]:
    """A fresh room with the agent ``agent_name`` in it, seen publishing ``agent_attribute``
    (name, value); deleted afterwards, which ends the job."""
    from livekit import api  # after the network namespace is entered: LiveKit starts threads

    room = f"{prefix}-{uuid.uuid4().hex[:8]}"
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        try:
            await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=120))
            for _ in range(DISPATCH_ATTEMPTS):
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
                )
                if await _joined(lkapi, room, agent_attribute):
                    break
            else:
                raise WorkerError(f"the worker never joined room {room}")
            yield room
        finally:
            with contextlib.suppress(api.TwirpError):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))


async def _joined(lkapi: object, room: str, attribute: tuple[str, str]) -> bool:
    from livekit import api

    assert isinstance(lkapi, api.LiveKitAPI)
    name, value = attribute
    deadline = time.monotonic() + DISPATCH_WAIT_S
    while time.monotonic() < deadline:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        if any(p.attributes.get(name) == value for p in listing.participants):
            return True
        await asyncio.sleep(0.2)
    return False
