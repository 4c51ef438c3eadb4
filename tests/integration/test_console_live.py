"""The operator console in a real browser: Debian's Chromium (``playwright-core``) against the
real ``imaginex-context gateway`` process, the real ``livekit-server`` and a real agent worker
(``tests/integration/console_worker.py``), loopback only.

Two tenants (a secrets file): tenant A owns ``SUPPORT01``, served by the worker in two rooms,
each with a caller; tenant B owns ``SALES0002``, an in-process agent in a third room. The
browser part is ``js/console/test/live.test.mjs``; it reaches the rooms through a small helper
served here (``/hear``: the room's caller says something to the agent's scripted STT;
``/add-context``: context from another backend, with a ttl; ``/room``: who is in a room and
what they publish, from ``RoomService``).

The screenshots the browser takes go to a temporary folder, or with
``IMAGINEX_UPDATE_SCREENSHOTS=1`` to ``docs/console/`` (the documentation's copies).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from livekit import api, rtc

from devtools.agent_worker import WorkerProcess, dispatched_room
from devtools.livekit_server import ROOT, ServerInfo
from devtools.netns import STATE_ENV
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin._livekit.server_rpc import ServerRpc
from imaginex_context_plugin._livekit.settings import LiveKitSettings
from imaginex_context_plugin.gateway import DEFAULT_GATEWAY_IDENTITY
from imaginex_context_plugin.security import sign_request
from tests.helpers import wait_until
from tests.integration.console_worker import AGENT_CODE, AGENT_NAME
from tests.integration.live import live_agent, module_worker, participant_token
from tests.integration.test_gateway_process_live import gateway_process, wait_until_serving
from tests.typescript import chromium, node, node_tests_async

WORKER_FILE = "tests/integration/console_worker.py"
OTHER_CODE = "SALES0002"
SECRET_A = "console-tenant-a-secret-7c41"
SECRET_B = "console-tenant-b-secret-19ed"
SCREENSHOTS_ENV = "IMAGINEX_UPDATE_SCREENSHOTS"
DOCS_SCREENSHOTS = ROOT / "docs" / "console"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def console_worker(
    livekit: ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    yield from module_worker(livekit, tmp_path_factory, WORKER_FILE, "console-worker")


@contextlib.asynccontextmanager
async def caller(lk: ServerInfo, room: str, identity: str) -> AsyncIterator[rtc.Room]:
    """A caller in ``room`` (the calls list shows it; the helper speaks through it)."""
    joined = rtc.Room()
    await joined.connect(lk.url, participant_token(lk, room, identity))
    try:
        yield joined
    finally:
        await joined.disconnect()


def _participant(info: Any) -> dict[str, Any]:
    return {
        "identity": info.identity,
        "attributes": dict(info.attributes),
        "tracks": [
            {
                "source": api.TrackSource.Name(track.source),
                "type": api.TrackType.Name(track.type),
                "muted": track.muted,
            }
            for track in info.tracks
        ],
    }


@contextlib.asynccontextmanager
async def helper(lk: ServerInfo, callers: dict[str, rtc.Room]) -> AsyncIterator[str]:
    """The browser test's window on the rooms: ``POST /hear``, ``POST /add-context`` and
    ``GET /room``."""

    async def agent_of(lkapi: api.LiveKitAPI, room: str) -> str:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        return next(
            p.identity
            for p in listing.participants
            if p.attributes.get(AGENT_CODE_ATTRIBUTE) and "imaginex.sender" not in p.attributes
        )

    rpc = ServerRpc(LiveKitSettings(lk.url, lk.api_key, lk.api_secret))
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:

        async def hear(request: web.Request) -> web.Response:
            body = await request.json()
            room = callers[body["room"]]
            agent = await agent_of(lkapi, body["room"])
            answer = await room.local_participant.perform_rpc(
                destination_identity=agent, method="test.hear", payload=body["text"]
            )
            return web.json_response({"answer": answer})

        async def room(request: web.Request) -> web.Response:
            listing = await lkapi.room.list_participants(
                api.ListParticipantsRequest(room=request.query["room"])
            )
            return web.json_response([_participant(p) for p in listing.participants])

        async def add_context(request: web.Request) -> web.Response:
            # context from another backend than the console (signed with the LiveKit API
            # secret, through PerformRpc, as the gateway sends it), with what the gateway's
            # add-context does not take: a ttl
            body = await request.json()
            agent = await agent_of(lkapi, body["room"])
            message = json.dumps({"type": "add_context", **body["fields"]})
            payload = sign_request(message, lk.api_secret, sender=DEFAULT_GATEWAY_IDENTITY)
            answer = await rpc.call_agent(body["room"], agent, payload, timeout=10.0)
            return web.json_response(json.loads(answer))

        app = web.Application()
        app.router.add_post("/hear", hear)
        app.router.add_post("/add-context", add_context)
        app.router.add_get("/room", room)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()
            await rpc.aclose()


async def test_the_console_in_chromium_on_the_real_gateway_server_and_worker(
    livekit: ServerInfo, console_worker: WorkerProcess, tmp_path: Path
) -> None:
    browser = chromium()
    node()
    if os.environ.get(STATE_ENV) != "1" and os.environ.get("CI"):
        pytest.fail("CI=true and the session is not in its loopback-only network namespace")
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({AGENT_CODE: SECRET_A, OTHER_CODE: SECRET_B}))
    update = os.environ.get(SCREENSHOTS_ENV) == "1"
    shots = DOCS_SCREENSHOTS if update else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    gateway_id = DEFAULT_GATEWAY_IDENTITY
    attribute = (AGENT_CODE_ATTRIBUTE, AGENT_CODE)
    async with contextlib.AsyncExitStack() as stack:
        room_1 = await stack.enter_async_context(
            dispatched_room(livekit, AGENT_NAME, prefix="support", agent_attribute=attribute)
        )
        room_2 = await stack.enter_async_context(
            dispatched_room(livekit, AGENT_NAME, prefix="returns", agent_attribute=attribute)
        )
        other = await stack.enter_async_context(
            live_agent(
                livekit,
                agent_code=OTHER_CODE,
                allowed_identities=[gateway_id],
                permissions={gateway_id: {"*"}},
            )
        )
        await wait_until(other.code_listed, "tenant B's agent in RoomService")
        callers = {
            room_1: await stack.enter_async_context(caller(livekit, room_1, "caller-ann-lee")),
            room_2: await stack.enter_async_context(caller(livekit, room_2, "caller-raj-patel")),
        }
        helper_url = await stack.enter_async_context(helper(livekit, callers))
        gateway = stack.enter_context(
            # the default delivery (server-rpc): a v1.3 agent's playout events reach the page
            # through the events stream's own subscription (the speech kind), not the delivery
            gateway_process(livekit, tmp_path, "--secrets-file", str(secrets))
        )
        await wait_until_serving(gateway)
        env = {
            "GATEWAY_URL": gateway.base_url,
            "HELPER_URL": helper_url,
            "SECRET_A": SECRET_A,
            "SECRET_B": SECRET_B,
            "CODE_A": AGENT_CODE,
            "CODE_B": OTHER_CODE,
            "ROOM_1": room_1,
            "ROOM_2": room_2,
            "ROOM_B": other.room_name,
            "SCREENSHOTS": str(shots),
            "CHROMIUM": str(browser),
        }
        try:
            counts = await node_tests_async("console/test/live.test.mjs", env=env)
        except pytest.fail.Exception as exc:
            pytest.fail(
                f"{exc}\ngateway log:\n{gateway.log()}\nworker log:\n{console_worker.log()}",
                pytrace=False,
            )
    assert counts["pass"] == counts["tests"] >= 15
    for name in ("calls.png", "call.png", "context.png", "takeover.png"):
        image = (shots / name).read_bytes()
        assert image.startswith(PNG), name
        assert len(image) > 20_000, f"{name} is suspiciously small"
