"""Faults on the real wire: the agent drops out and comes back, the server dies and restarts.

These tests kill and restart their own ``livekit-server`` (not the session's shared one), on
loopback like every other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devtools.livekit_server import LiveKitServer, ServerInfo, find_binary
from imaginex_context_plugin import ContextError, ErrorCode
from imaginex_context_plugin.gateway import (
    DEFAULT_GATEWAY_IDENTITY,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from tests.helpers import wait_until
from tests.integration.live import AGENT_CODE, LiveAgent, agent_token, live_agent

GATEWAY_SECRET = "faults-gateway-secret"
RECOVERY_S = 30.0


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    server = LiveKitServer(find_binary(build=False), tmp_path_factory.mktemp("faults"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def info_of(server: LiveKitServer) -> ServerInfo:
    assert server.info is not None
    return server.info


@pytest.fixture
async def agent(own_server: LiveKitServer) -> AsyncIterator[LiveAgent]:
    async with live_agent(
        info_of(own_server), allowed_identities=["it-backend", DEFAULT_GATEWAY_IDENTITY]
    ) as joined:
        await wait_until(joined.code_listed, "the agent's code on the server")
        yield joined


async def test_the_agent_leaves_and_rejoins_then_a_retry_is_applied_once(
    agent: LiveAgent,
) -> None:
    lk = agent.lk
    async with await agent.client("rpc", agent_timeout=1.0, timeout=2.0, retries=0) as client:
        await agent.room.disconnect()
        # while the agent is away: a clear error (gone, or no answer if the news that it left
        # has not reached us yet), and nothing applied
        with pytest.raises(ContextError) as away:
            await client.speak("Your table is ready.", id="table-1")
        assert away.value.code in (ErrorCode.AGENT_NOT_FOUND, ErrorCode.TIMEOUT)
        assert agent.tts.texts == []

        await agent.room.connect(lk.url, agent_token(lk, agent.room_name))
        # the plugin registers its RPC method and its code again on the new connection
        await wait_until(agent.code_listed, "the agent's code to be published again")
        first = await client.speak("Your table is ready.", id="table-1")
        again = await client.speak("Your table is ready.", id="table-1")
    assert first.duplicate is not True
    assert again.duplicate is True
    await wait_until(lambda: agent.tts.texts == ["Your table is ready."], "the speech")
    await asyncio.sleep(0.3)
    assert agent.tts.texts == ["Your table is ready."]


async def test_the_server_restarts_and_everyone_comes_back(
    own_server: LiveKitServer, agent: LiveAgent
) -> None:
    async with await agent.client("rpc", timeout=2.0, retries=0) as client:
        await client.add_context("Before the restart.", key="before")
        own_server.stop(crash=True)
        with pytest.raises(ContextError) as down:
            await client.speak("Are you there?", id="restart-1")
        # which one depends on who notices first that the server is gone
        assert down.value.code in (
            ErrorCode.LIVEKIT_UNAVAILABLE,
            ErrorCode.TIMEOUT,
            ErrorCode.AGENT_NOT_FOUND,
        )

        own_server.start_again()
        # LiveKit's SDK rejoins on its own; the plugin's RPC method and attribute survive it
        await wait_until(agent.code_listed, "the agent to rejoin", timeout=RECOVERY_S)
        await wait_until(client.room.isconnected, "the client to rejoin", timeout=RECOVERY_S)
        retried = await client.speak("Are you there?", id="restart-1")
        state = await client.get_state()
    assert retried.success
    assert [entry.key for entry in state.context_entries] == ["before"]
    await wait_until(lambda: "Are you there?" in agent.tts.texts, "the speech")
    await asyncio.sleep(0.3)
    assert agent.tts.texts.count("Are you there?") == 1


async def test_the_gateway_says_livekit_unavailable_while_the_server_is_down_then_recovers(
    own_server: LiveKitServer, agent: LiveAgent
) -> None:
    lk = info_of(own_server)
    backend = LiveKitBackend(
        LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)
    )
    http: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_app(backend, ApiSecrets(secret=GATEWAY_SECRET)), host="127.0.0.1")
    )
    await http.start_server()
    headers = {"api-secret": GATEWAY_SECRET}
    path = f"/v1/agent/{AGENT_CODE}/speak"
    try:
        ok = await http.post(path, json={"message": "First."}, headers=headers)
        assert ok.status == 200, await ok.text()

        own_server.stop(crash=True)
        down_key = {**headers, "Idempotency-Key": "down-1"}
        answers: list[tuple[int, str]] = []

        async def refused_at_once() -> bool:
            # a request already on its way when the connection drops has an unknown outcome
            # (504: LiveKit's SDK may deliver it after reconnecting); once the gateway knows
            # the server is gone, nothing is sent: 503
            response = await http.post(path, json={"message": "Maybe."}, headers=down_key)
            answers.append((response.status, (await response.json())["error"]))
            return answers[-1] == (503, "LIVEKIT_UNAVAILABLE")

        await wait_until(refused_at_once, "the gateway to answer 503 while LiveKit is down")
        assert set(answers) <= {(503, "LIVEKIT_UNAVAILABLE"), (504, "TIMEOUT")}, answers
        again = await http.post(path, json={"message": "Maybe."}, headers=down_key)
        assert again.status == 503

        own_server.start_again()
        statuses: list[int] = []

        async def recovered() -> bool:
            response = await http.post(
                path,
                json={"message": "Back again."},
                headers={**headers, "Idempotency-Key": "recovery-1"},
            )
            statuses.append(response.status)
            return response.status == 200

        await wait_until(recovered, "the gateway to recover by itself", timeout=RECOVERY_S)
    finally:
        await http.close()
    await wait_until(lambda: "Back again." in agent.said(), "the recovered speech")
    await asyncio.sleep(0.5)
    assert agent.said().count("Back again.") == 1
    # one key: said once at most, whichever attempt got through
    assert agent.said().count("Maybe.") <= 1
