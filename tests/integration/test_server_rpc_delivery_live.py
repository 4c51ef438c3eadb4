"""The gateway's server-RPC delivery (``--delivery server-rpc``) against a real
``livekit-server``: one ``RoomService.PerformRpc`` per room to real ContextPlugins in real
rooms, the agent's ack coming back as the RPC's answer, no room joined by the gateway, nothing
for the agents to allow or post back."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestClient

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin.errors import BackendError, ErrorCode
from imaginex_context_plugin.gateway import ApiSecrets, LiveKitBackend, LiveKitSettings, create_app
from imaginex_context_plugin.gateway.delivery import AgentTarget, ServerRpcBackend
from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from tests.helpers import wait_until
from tests.integration.live import (
    AGENT_IDENTITY,
    LiveAgent,
    agents_found,
    assert_no_room_joined,
    live_agent,
    room_name,
    serve,
    speak_repeat_and_add_context,
    stream_a_call_to_its_end,
)

API_SECRET = "integration-gateway-secret"
SIGNING = "integration-server-rpc-signing-secret"
WAIT_S = 15.0

Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def server_rpc_gateway(
    lk: ServerInfo, *, signing_secret: str | None = SIGNING
) -> AsyncIterator[tuple[Client, ServerRpcBackend]]:
    settings = LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)
    backend = ServerRpcBackend(LiveKitBackend(settings), settings)
    app = create_app(
        backend,
        ApiSecrets(secret=API_SECRET),
        signing_secret=signing_secret,
        delivery_timeout=10.0,
    )
    async with serve(app) as client:
        yield client, backend


async def test_speak_and_add_context_reach_every_room_without_joining_one(
    livekit: ServerInfo,
) -> None:
    code = f"SR{uuid.uuid4().hex[:8].upper()}"
    async with contextlib.AsyncExitStack() as stack:
        one, two = [await stack.enter_async_context(server_rpc_gateway(livekit)) for _ in range(2)]
        (client, backend), (replica, replica_backend) = one, two
        agents: list[LiveAgent] = [
            await stack.enter_async_context(live_agent(livekit, agent_code=code, secret=SIGNING))
            for _ in range(2)
        ]
        await agents_found(backend, code, 2)

        await speak_repeat_and_add_context(
            client, replica, code, agents, "Hello by PerformRpc.", api_secret=API_SECRET
        )

        await assert_no_room_joined(
            livekit,
            agents,
            [lambda: backend.pooled_rooms, lambda: replica_backend.pooled_rooms],
        )
        assert backend.sent_again == replica_backend.sent_again == 0


async def test_without_a_signing_secret_the_livekit_api_secret_vouches_for_the_gateway(
    livekit: ServerInfo,
) -> None:
    """Agents check the LiveKit API secret by default: a gateway with no signing secret of its
    own still reaches them; an agent that trusts no server-signed message refuses, plainly."""
    code = f"SS{uuid.uuid4().hex[:8].upper()}"
    async with (
        server_rpc_gateway(livekit, signing_secret=None) as (client, backend),
        live_agent(livekit, agent_code=code) as trusting,
        live_agent(livekit, agent_code=code, trust_server=False) as wary,
    ):
        await agents_found(backend, code, 2)
        response = await client.post(
            f"/v1/agent/{code}/speak",
            json={"message": "Signed by the API secret."},
            headers={"api-secret": API_SECRET},
        )
        payload = await response.json()
        results = {r["room"]: r for r in payload["data"]["rooms"]}
        assert results[trusting.room_name]["delivered"] is True, payload
        assert results[wary.room_name]["error"] == "UNAUTHORIZED", payload
        await wait_until(lambda: trusting.said() == ["Signed by the API secret."], "spoken")
        assert wary.said() == []


async def test_the_events_stream_still_works_and_is_the_only_room_held(
    livekit: ServerInfo,
) -> None:
    code = f"SE{uuid.uuid4().hex[:8].upper()}"
    async with (
        server_rpc_gateway(livekit) as (client, backend),
        live_agent(
            livekit,
            agent_code=code,
            secret=SIGNING,
            # subscribe and end_call are sensitive: granted to the gateway's signed sender
            permissions={"imaginex-gateway": {"*"}},
        ) as agent,
    ):
        await agents_found(backend, code, 1)
        await stream_a_call_to_its_end(
            client, code, agent, api_secret=API_SECRET, pooled_rooms=lambda: backend.pooled_rooms
        )


async def test_an_agent_that_left_is_agent_not_found_not_a_timeout(livekit: ServerInfo) -> None:
    code = f"SG{uuid.uuid4().hex[:8].upper()}"
    room = room_name("sr-gone")
    writer = MessageWriter(signing_secret=SIGNING)
    outgoing = Outgoing("speak", {"type": "speak", "message": "Anyone there?"})
    async with server_rpc_gateway(livekit) as (_, backend):
        async with live_agent(livekit, room=room, agent_code=code, secret=SIGNING):
            await agents_found(backend, code, 1)
        started = time.monotonic()
        try:
            await backend.deliver(
                AgentTarget(room, AGENT_IDENTITY),
                writer.write(outgoing, "gone-1", code, room),
                timeout=WAIT_S,
            )
        except BackendError as exc:
            failure = exc
        took = time.monotonic() - started
    assert (failure.code, failure.retryable) == (ErrorCode.AGENT_NOT_FOUND, True)
    assert took < WAIT_S / 2  # LiveKit looked for it for about 3 s: not the deadline
