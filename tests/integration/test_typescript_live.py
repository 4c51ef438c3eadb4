"""The TypeScript client on the real parts: in Debian's Chromium against the real server and a
real agent worker, and from Node against the real gateway process.

- The room client: ``js/test/browser/live.test.mjs`` drives Chromium (``playwright-core``, the
  page serves ``dist/browser/imaginex-room.min.js`` and ``livekit-client``) in a room where
  ``tests/integration/browser_worker.py`` runs as a real worker (``start --dev``, dispatched with
  the agent dispatch API): speak with playout events, add_context reaching the LLM's next call,
  an error ack with its code, a retry applied once, subscribe receiving transcripts, and
  ``docs/typescript.md``'s browser example. WebRTC stays on loopback: the session's private
  namespace has no other route (``devtools/netns.py``).
- The gateway client: ``js/test/gateway/live.test.mjs`` against ``imaginex-context gateway``
  processes in front of real agents, and ``docs/typescript.md``'s Node examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api

from devtools.livekit_server import ROOT, ServerInfo
from devtools.netns import STATE_ENV
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin.gateway import DEFAULT_GATEWAY_IDENTITY
from tests.helpers import wait_until
from tests.integration.browser_worker import AGENT_CODE, AGENT_NAME, BROWSER, DOCS_READER
from tests.integration.live import live_agent, participant_token, room_name
from tests.integration.test_gateway_process_live import SECRET as GATEWAY_SECRET
from tests.integration.test_gateway_process_live import gateway_process, wait_until_serving
from tests.integration.test_worker_live import REGISTER_TIMEOUT_S, Worker, livekit_env
from tests.typescript import (
    JS,
    chromium,
    docs_example,
    node,
    node_tests_async,
    readme_example,
    to_javascript,
)

WORKER_FILE = "tests/integration/browser_worker.py"
DISPATCH_ATTEMPTS = 4
DISPATCH_WAIT_S = 15.0


@pytest.fixture(scope="module")
def browser_worker(
    livekit: ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    log_path = tmp_path_factory.mktemp("browser-worker") / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "livekit.agents", "start", WORKER_FILE, "--dev"],
            cwd=ROOT,
            env=livekit_env(livekit),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, log_path)
    try:
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while not worker.registered():
            if process.poll() is not None:
                pytest.fail(f"the worker exited with {process.returncode}:\n{worker.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the worker did not register in time:\n{worker.log()}")
            time.sleep(0.1)
        yield worker
    finally:
        worker.stop()


@contextlib.asynccontextmanager
async def dispatched_room(lk: ServerInfo, prefix: str) -> AsyncIterator[str]:
    """A fresh room with the browser worker dispatched into it (deleted afterwards, which ends
    the job). The room is created first: on livekit-server 1.13.5 in this setup, neither a
    dispatch to a room that does not exist yet nor a dispatch named in a participant's token
    (``RoomConfiguration.agents``) reached the worker ("no servers available")."""
    room = room_name(prefix)
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        try:
            await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=120))
            for _ in range(DISPATCH_ATTEMPTS):
                # on a loaded machine the server now and then gets no answer from the worker in
                # time and drops the dispatch ("no servers available"): dispatch again
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(agent_name=AGENT_NAME, room=room)
                )
                if await _agent_joined(lkapi, room):
                    break
            else:
                pytest.fail(f"the worker never joined room {room}")
            yield room
        finally:
            with contextlib.suppress(api.TwirpError):
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))


async def _agent_joined(lkapi: api.LiveKitAPI, room: str) -> bool:
    deadline = time.monotonic() + DISPATCH_WAIT_S
    while time.monotonic() < deadline:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        if any(p.attributes.get(AGENT_CODE_ATTRIBUTE) == AGENT_CODE for p in listing.participants):
            return True
        await asyncio.sleep(0.2)
    return False


async def test_the_room_client_in_chromium_drives_a_real_worker(
    livekit: ServerInfo, browser_worker: Worker
) -> None:
    browser = chromium()
    example = to_javascript(docs_example("browser"))
    if os.environ.get(STATE_ENV) != "1" and os.environ.get("CI"):
        pytest.fail("CI=true and the session is not in its loopback-only network namespace")
    async with dispatched_room(livekit, "ts-browser") as room:
        env = {
            "LIVEKIT_URL": livekit.url,
            "ROOM": room,
            "BROWSER_TOKEN": participant_token(livekit, room, BROWSER),
            "DOCS_TOKEN": participant_token(livekit, room, DOCS_READER),
            "DOCS_EXAMPLE": example,
            "README_EXAMPLE": to_javascript(readme_example()),
            "CHROMIUM": str(browser),
        }
        try:
            counts = await node_tests_async("test/browser/live.test.mjs", env=env)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{exc}\nworker log:\n{browser_worker.log()}", pytrace=False)
    assert counts["pass"] == counts["tests"] >= 10


def _node_example(name: str, gateway_url: str, room: str) -> str:
    """``docs/typescript.md``'s example ``name`` as a module inside js/ (where the package's own
    name resolves), pointed at our gateway and room."""
    code = to_javascript(docs_example(name))
    code = code.replace("http://127.0.0.1:8089", gateway_url).replace("customer_session_1", room)
    path = JS / "build" / "docs" / f"{name}.mjs"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code, encoding="utf-8")
    return str(path)


async def test_the_gateway_client_against_the_real_gateway_process(
    livekit: ServerInfo, tmp_path: Path
) -> None:
    node()
    identity = DEFAULT_GATEWAY_IDENTITY
    async with live_agent(
        livekit,
        agent_code=AGENT_CODE,
        allowed_identities=[identity],
        permissions={identity: {"*"}},
    ) as agent:
        await wait_until(agent.code_listed, "the agent's code to reach RoomService")
        with (
            gateway_process(livekit, tmp_path) as gateway,
            gateway_process(
                livekit, tmp_path, "--rate-limit", "1", "--burst", "2", api_secret=GATEWAY_SECRET
            ) as limited,
        ):
            await wait_until_serving(gateway)
            await wait_until_serving(limited)
            env = {
                "GATEWAY_URL": gateway.base_url,
                "LIMITED_GATEWAY_URL": limited.base_url,
                "API_SECRET": GATEWAY_SECRET,
                "ROOM": agent.room_name,
                "DOCS_NODE": _node_example("node", gateway.base_url, agent.room_name),
                "DOCS_NODE_EVENTS": _node_example("node-events", gateway.base_url, agent.room_name),
            }
            try:
                counts = await node_tests_async("test/gateway/live.test.mjs", env=env)
            except pytest.fail.Exception as exc:
                pytest.fail(f"{exc}\ngateway log:\n{gateway.log()}", pytrace=False)
    assert counts["pass"] == counts["tests"] >= 8
