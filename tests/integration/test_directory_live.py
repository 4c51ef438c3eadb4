"""The agent directory against a real ``livekit-server`` that posts its webhooks to the
gateway's ``/livekit/webhook`` on loopback: agents become findable, and stop being findable,
without a ``RoomService`` listing per request; a gateway that misses the webhooks is healed by
reconciliation.

This module starts its own server (the shared one has no webhook configured): its webhook URL
is a loopback port chosen first, where each test then serves its gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api, rtc

from devtools.livekit_server import (
    LOOPBACK,
    LiveKitServer,
    NoServer,
    ServerInfo,
    find_binary,
    free_tcp_port,
)
from devtools.processes import stop_process
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.gateway.directory import DirectorySync, MemoryAgentDirectory
from imaginex_context_plugin.gateway.directory.webhook import WEBHOOK_PATH
from tests.helpers import wait_until
from tests.integration.live import live_agent, room_name

SECRET = "integration-directory-secret"
CLI = Path(sys.executable).parent / "imaginex-context"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
NEVER_S = 3600.0
"""A reconcile interval no test waits for: only the first reconciliation (at start) runs."""

Gateway = tuple[TestClient[web.Request, web.Application], LiveKitBackend, DirectorySync]


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerInfo, int]]:
    """A server of our own whose webhooks go to ``127.0.0.1:<port>/livekit/webhook``."""
    try:
        binary = find_binary(build=True)
    except NoServer as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true and {exc}", pytrace=False)
        pytest.skip(str(exc))
    port = free_tcp_port()
    server = LiveKitServer(
        binary,
        Path(tmp_path_factory.mktemp("livekit-webhooks")),
        webhook_urls=[f"http://{LOOPBACK}:{port}{WEBHOOK_PATH}"],
    )
    info = server.start()
    try:
        yield info, port
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def serve_gateway(
    lk: ServerInfo, *, port: int, reconcile_interval: float = NEVER_S
) -> AsyncIterator[Gateway]:
    backend = LiveKitBackend(
        LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret),
        agent_directory=MemoryAgentDirectory(),
        reconcile_interval=reconcile_interval,
    )
    sync = backend.directory_sync
    assert sync is not None
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(backend, ApiSecrets(secret=SECRET)), host=LOOPBACK, port=port)
    )
    await client.start_server()
    try:
        await sync.ready()
        yield client, backend, sync
        await settled(sync)
    finally:
        await client.close()


async def settled(sync: DirectorySync, *, quiet: float = 0.5, at_most: float = 5.0) -> None:
    """Wait until no webhook has come for ``quiet`` seconds: the server posts the events of a
    test's teardown (participant_left, room_finished) just as the gateway would close, and a
    request cut by the shutdown leaves its socket to the next test's warnings."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + at_most
    seen = sync.events
    while loop.time() < deadline:
        await asyncio.sleep(quiet)
        if sync.events == seen:
            return
        seen = sync.events


async def rooms_of(sync: DirectorySync, code: str) -> dict[str, list[str]]:
    return await sync.directory.rooms_of(code)


async def test_webhooks_make_an_agent_findable_and_unfindable_without_listing_rooms(
    hooked: tuple[ServerInfo, int],
) -> None:
    lk, port = hooked
    code = f"DIR{uuid.uuid4().hex[:8].upper()}"
    async with serve_gateway(lk, port=port) as (client, backend, sync):
        async with live_agent(
            lk, agent_code=code, allowed_identities=[DEFAULT_GATEWAY_IDENTITY]
        ) as agent:

            async def found() -> bool:
                return await rooms_of(sync, code) == {agent.room_name: [agent.identity]}

            # participant_joined came before the plugin published its code: one re-check
            await wait_until(found, "the webhook (and its re-check) to record the agent")
            assert sync.events >= 1
            assert sync.reconciliations == 1
            calls = backend.room_service_calls.total
            for _ in range(20):
                [target] = await backend.find_agents(code, room_id=None)
                assert (target.room, target.identity) == (agent.room_name, agent.identity)
            response = await client.post(
                f"/v1/agent/{code}/speak",
                json={"message": "Found through the directory."},
                headers={"api-secret": SECRET},
            )
            payload = await response.json()
            assert response.status == 200, payload
            assert payload["data"]["delivered_to_rooms"] == 1
            # 21 lookups, no RoomService call (a late re-check of the join could still land)
            assert backend.room_service_calls.total - calls <= sync.rechecks
            assert backend.room_service_calls.list_rooms == 1  # the first reconciliation
            await wait_until(
                lambda: agent.said() == ["Found through the directory."], "the agent to say it"
            )
            await agent.room.disconnect()  # participant_left

            async def gone() -> bool:
                return await rooms_of(sync, code) == {}

            await wait_until(gone, "participant_left to remove the agent")
        assert backend.room_service_calls.list_rooms == 1


async def test_a_code_in_the_join_token_needs_no_recheck_and_room_finished_removes_it(
    hooked: tuple[ServerInfo, int],
) -> None:
    lk, port = hooked
    code = f"TOK{uuid.uuid4().hex[:8].upper()}"
    name = room_name("dir-token")
    # what accept_with_agent_code gives a dispatched agent: the attribute in its token
    token = (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity("token-agent")
        .with_kind("agent")
        .with_attributes({AGENT_CODE_ATTRIBUTE: code})
        .with_grants(api.VideoGrants(room_join=True, room=name))
        .to_jwt()
    )
    async with serve_gateway(lk, port=port) as (_, backend, sync):
        calls = backend.room_service_calls.total
        room = rtc.Room()
        await room.connect(lk.url, token)
        try:

            async def found() -> bool:
                return await rooms_of(sync, code) == {name: ["token-agent"]}

            await wait_until(found, "participant_joined to carry the code")
            assert sync.rechecks == 0
            assert backend.room_service_calls.total == calls
            async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))

            async def gone() -> bool:
                return await rooms_of(sync, code) == {}

            await wait_until(gone, "room_finished (or participant_left) to remove the agent")
            assert backend.room_service_calls.total == calls
        finally:
            await room.disconnect()


async def test_reconciliation_heals_a_gateway_that_missed_the_webhooks(
    hooked: tuple[ServerInfo, int],
) -> None:
    lk, _ = hooked
    code = f"REC{uuid.uuid4().hex[:8].upper()}"
    # served on another port: every webhook misses this gateway
    async with serve_gateway(lk, port=free_tcp_port(), reconcile_interval=1.0) as (
        _,
        backend,
        sync,
    ):
        async with live_agent(
            lk, agent_code=code, allowed_identities=[DEFAULT_GATEWAY_IDENTITY]
        ) as agent:

            async def found() -> bool:
                return bool(await backend.find_agents(code, room_id=None))

            await wait_until(found, "a reconciliation to find the agent")
            await agent.room.disconnect()

            async def gone() -> bool:
                return not await backend.find_agents(code, room_id=None)

            await wait_until(gone, "a reconciliation to drop the agent")
        assert sync.events == 0
        assert sync.reconciliations >= 3


async def test_the_gateway_command_with_agent_directory_takes_the_webhooks(
    hooked: tuple[ServerInfo, int], tmp_path: Path
) -> None:
    lk, port = hooked
    code = f"CLI{uuid.uuid4().hex[:8].upper()}"
    env = {
        **os.environ,
        "LIVEKIT_URL": lk.url,
        "LIVEKIT_API_KEY": lk.api_key,
        "LIVEKIT_API_SECRET": lk.api_secret,
        "IMAGINEX_API_SECRET": SECRET,
    }
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        # the reconcile interval is longer than any wait here: only webhooks can find the agent
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, it runs on its own
            [str(CLI), "gateway", "--port", str(port), "--agent-directory",
             "--reconcile-interval", "600"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://{LOOPBACK}:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as reply:
                        return reply.status == 200
                return False

            # a process importing livekit-agents on 2 busy cores can take a while to listen
            await wait_until(healthy, "the gateway process to listen", timeout=60)
            async with live_agent(
                lk, agent_code=code, allowed_identities=[DEFAULT_GATEWAY_IDENTITY]
            ) as agent:

                async def spoken() -> bool:
                    async with http.post(
                        f"{base}/v1/agent/{code}/speak",
                        json={"message": "From the gateway process."},
                        # no Idempotency-Key: the 404s before the webhook came would be replayed
                        headers={"api-secret": SECRET},
                    ) as reply:
                        return reply.status == 200

                await wait_until(spoken, "the webhook to reach the gateway process")
                await wait_until(
                    lambda: agent.said() == ["From the gateway process."], "the agent to say it"
                )
    except BaseException:
        print(log_path.read_text(errors="replace")[-6000:])  # shown with the failure
        raise
    finally:
        stop_process(process, timeout=15)
        if process.returncode not in (0, -signal.SIGTERM):
            print(log_path.read_text(errors="replace")[-4000:])


async def test_bench_directory_runs_and_every_figure_is_there() -> None:
    """``benchmarks/bench_directory.py`` at a tiny size, so that it never rots (no timing is
    asserted here: the figures come from running the benchmark itself)."""
    sys.path.insert(0, str(BENCHMARKS))
    import bench_directory

    report = await bench_directory.run(sizes=(1, 3), lookups=5, scan_lookups=2)
    assert report.ok
    names = [figure.name for figure in report.figures]
    assert sum("scan" in name for name in names) == 2
    assert sum("directory (memory)" in name for name in names) == 2
    for figure in report.figures:
        if "directory" in figure.name:
            assert figure.met is True, figure


async def test_a_worker_accepting_with_the_code_is_found_from_the_join_webhook_alone(
    hooked: tuple[ServerInfo, int], tmp_path: Path
) -> None:
    from devtools.agent_worker import start_worker
    from tests.integration import directory_worker

    lk, port = hooked
    code = directory_worker.AGENT_CODE
    name = room_name("dir-worker")
    log_path = tmp_path / "directory-worker.log"
    # started, not waited for: it registers while the gateway starts
    worker = start_worker(lk, "tests/integration/directory_worker.py", log_path)
    try:
        async with serve_gateway(lk, port=port) as (client, backend, sync):
            await wait_until(worker.registered, "the worker to register", timeout=60)
            calls = backend.room_service_calls.total
            async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
                await lkapi.agent_dispatch.create_dispatch(
                    api.CreateAgentDispatchRequest(
                        agent_name=directory_worker.AGENT_NAME, room=name
                    )
                )

                async def found() -> bool:
                    return name in await rooms_of(sync, code)

                await wait_until(found, "participant_joined to carry the code", timeout=60)
                # the code came in the join webhook: no re-check, no RoomService call
                assert sync.rechecks == 0
                assert backend.room_service_calls.total == calls
                response = await client.post(
                    f"/v1/agent/{code}/speak",
                    json={"message": "Hello, worker.", "room_id": name},
                    headers={"api-secret": SECRET},
                )
                payload = await response.json()
                assert response.status == 200, payload
                assert payload["data"]["delivered_to_rooms"] == 1
                assert backend.room_service_calls.total == calls
                await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))

                async def gone() -> bool:
                    return name not in await rooms_of(sync, code)

                await wait_until(gone, "room_finished to remove the agent")
    except BaseException:
        print(worker.log())  # shown with the failure
        raise
    finally:
        worker.stop()
