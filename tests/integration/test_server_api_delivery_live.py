"""The gateway's server-API delivery against a real ``livekit-server``: ``RoomService.SendData``
to real ContextPlugins in real rooms, their signed acks posted back to the gateway over HTTP on
127.0.0.1, and no room joined by the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import api

from devtools.livekit_server import ServerInfo, free_tcp_port
from imaginex_context_plugin._livekit.send_data import DataSender
from imaginex_context_plugin.errors import BackendError, ErrorCode
from imaginex_context_plugin.gateway import ApiSecrets, LiveKitBackend, LiveKitSettings, create_app
from imaginex_context_plugin.gateway.delivery import REPLIES_PATH, AgentTarget, ServerApiBackend
from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from imaginex_context_plugin.gateway.state.redis_state import RedisReplyRelay, RedisState
from imaginex_context_plugin.replies import (
    REPLY_SIGNATURE_HEADER,
    REPLY_TIMESTAMP_HEADER,
    REPLY_URL_NOT_ALLOWED,
    reply_signature,
)
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
SIGNING = "integration-server-api-signing-secret"
WAIT_S = 15.0

Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def server_api_gateway(
    lk: ServerInfo, **options: Any
) -> AsyncIterator[tuple[Client, ServerApiBackend]]:
    """A gateway delivering through the server API, served on 127.0.0.1 at its public URL
    (``options`` go to ``ServerApiBackend``)."""
    settings = LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)
    port = free_tcp_port()
    backend = ServerApiBackend(
        LiveKitBackend(settings),
        settings,
        signing_secret=SIGNING,
        public_url=f"http://127.0.0.1:{port}",
        **options,
    )
    app = create_app(backend, ApiSecrets(secret=API_SECRET), signing_secret=SIGNING)
    async with serve(app, port=port) as client:
        yield client, backend


async def test_speak_and_add_context_reach_every_room_without_joining_one(
    livekit: ServerInfo,
) -> None:
    code = f"SA{uuid.uuid4().hex[:8].upper()}"
    async with contextlib.AsyncExitStack() as stack:
        one, two = [await stack.enter_async_context(server_api_gateway(livekit)) for _ in range(2)]
        (client, backend), (replica, replica_backend) = one, two
        allowed = [
            str(client.make_url("/v1/internal/")),
            str(replica.make_url("/v1/internal/")),
        ]
        agents: list[LiveAgent] = [
            await stack.enter_async_context(
                live_agent(livekit, agent_code=code, secret=SIGNING, reply_urls=allowed)
            )
            for _ in range(2)
        ]
        await agents_found(backend, code, 2)

        await speak_repeat_and_add_context(
            client, replica, code, agents, "Hello by SendData.", api_secret=API_SECRET
        )

        await assert_no_room_joined(
            livekit,
            agents,
            [lambda: backend.pooled_rooms, lambda: replica_backend.pooled_rooms],
        )
        assert backend.reply_inbox.accepted == 4
        assert replica_backend.reply_inbox.accepted == 2


async def test_forged_replies_are_refused_and_a_disallowed_reply_url_is_never_called(
    livekit: ServerInfo,
) -> None:
    code = f"SB{uuid.uuid4().hex[:8].upper()}"
    async with (
        server_api_gateway(livekit) as (client, backend),
        live_agent(
            livekit,
            room=room_name("sb"),
            agent_code=code,
            secret=SIGNING,
            # allows another gateway only
            reply_urls=["http://127.0.0.1:1/v1/internal/"],
        ) as agent,
    ):
        await agents_found(backend, code, 1)
        request_id = f"sb-{uuid.uuid4().hex}"
        headers = {"api-secret": API_SECRET, "Idempotency-Key": request_id}
        started = time.monotonic()
        pending = client.post(f"/v1/agent/{code}/speak", json={"message": "Hi"}, headers=headers)

        # while the delivery waits: a reply for it signed with a wrong key is refused
        response_task = asyncio.ensure_future(pending)
        await wait_until(lambda: backend.reply_inbox.pending == 1, "the delivery to wait")
        ack = json.dumps({"type": "ack", "id": request_id, "success": True})
        body = json.dumps({"room": agent.room_name, "ack": ack}).encode()
        stamp = int(time.time())
        for key, extra in [("a-forged-key", {}), (None, {})]:
            signed: dict[str, Any] = {"Content-Type": "application/json", **extra}
            if key is not None:
                signed[REPLY_TIMESTAMP_HEADER] = str(stamp)
                signed[REPLY_SIGNATURE_HEADER] = reply_signature(body, stamp, key)
            forged = await client.post(REPLIES_PATH, data=body, headers=signed)
            assert forged.status == 401
            assert (await forged.json())["error"] == "UNAUTHORIZED"

        response = await response_task
        payload = await response.json()
        # the agent refused the URL: nothing came back, the room timed out, nothing was said
        assert response.status == 504, payload
        assert payload["data"]["rooms"][0]["error"] == "TIMEOUT"
        assert time.monotonic() - started >= 4.0
        # unanswered, the message was sent again (signed afresh); each copy refused alike
        assert backend.resends >= 1
        await wait_until(
            lambda: agent.plugin.stats.errors.get(REPLY_URL_NOT_ALLOWED) == 1 + backend.resends,
            "every copy refused",
        )
        assert agent.said() == []
        assert backend.reply_inbox.accepted == 0
        assert backend.reply_inbox.refused == 2


async def test_the_events_stream_still_works_and_is_the_only_room_held(
    livekit: ServerInfo,
) -> None:
    code = f"SC{uuid.uuid4().hex[:8].upper()}"
    async with server_api_gateway(livekit) as (client, backend):
        async with live_agent(
            livekit,
            agent_code=code,
            secret=SIGNING,
            reply_urls=[str(client.make_url("/v1/internal/"))],
            # subscribe and end_call are sensitive: granted to the gateway's signed sender
            permissions={"imaginex-gateway": {"*"}},
        ) as agent:
            await agents_found(backend, code, 1)
            await stream_a_call_to_its_end(
                client,
                code,
                agent,
                api_secret=API_SECRET,
                pooled_rooms=lambda: backend.pooled_rooms,
            )
        assert backend.reply_inbox.accepted == 2  # speak and end_call came back over HTTP


async def test_a_message_that_found_no_agent_is_sent_again_until_it_joins(
    livekit: ServerInfo,
) -> None:
    """SendData reports no delivery: a packet for an identity not (yet) in the room, or one
    that reaches an agent before its data channel is open, vanishes without an error. The
    gateway sends it again (signed afresh, doubling pauses) until answered: spoken once."""
    code = f"SA{uuid.uuid4().hex[:8].upper()}"
    room = room_name("sa-late-agent")
    async with contextlib.AsyncExitStack() as stack:
        lkapi = await stack.enter_async_context(
            api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret)
        )
        await lkapi.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=60))
        # the first resend checks that the agent is in the room: give it time to join
        client, backend = await stack.enter_async_context(
            server_api_gateway(livekit, resend_after=5.0)
        )
        writer = MessageWriter(signing_secret=SIGNING)
        outgoing = Outgoing("speak", {"type": "speak", "message": "Just in time."})
        delivery = asyncio.create_task(
            backend.deliver(
                AgentTarget(room, AGENT_IDENTITY),
                writer.write(outgoing, "late-1", code, room),
                timeout=WAIT_S,
            )
        )
        await asyncio.sleep(0.5)  # the first packet finds nobody
        assert not delivery.done()
        agent = await stack.enter_async_context(
            live_agent(
                livekit,
                room=room,
                agent_code=code,
                secret=SIGNING,
                reply_urls=[str(client.make_url("/v1/internal/"))],
            )
        )
        ack = json.loads(await delivery)
        assert ack["success"] is True, ack
        assert ack["id"] == "late-1"
        assert backend.resends >= 1
        await wait_until(lambda: agent.said() == ["Just in time."], "spoken")

        # answered at once now: no resend
        resends = backend.resends
        second = json.loads(
            await backend.deliver(
                AgentTarget(room, AGENT_IDENTITY),
                writer.write(outgoing, "late-2", code, room),
                timeout=WAIT_S,
            )
        )
        assert second["success"] is True, second
        assert second.get("duplicate") is not True
        assert backend.resends == resends
        await wait_until(lambda: agent.said() == ["Just in time."] * 2, "spoken twice")
        assert agent.plugin.stats.ack_failures == 0
        assert backend.reply_inbox.refused == 0


async def test_a_room_gone_or_an_agent_gone_is_said_plainly_not_timed_out(
    livekit: ServerInfo,
) -> None:
    """SendData to a room that has ended fails with 503 (no node holds it), and to an agent
    that left it succeeds and reaches nobody: the room reports NO_ACTIVE_ROOMS or
    AGENT_NOT_FOUND once LiveKit's listing confirms it, well before the deadline."""
    code = f"SA{uuid.uuid4().hex[:8].upper()}"
    writer = MessageWriter(signing_secret=SIGNING)
    outgoing = Outgoing("speak", {"type": "speak", "message": "Anyone there?"})
    async with server_api_gateway(livekit) as (client, backend):
        gone = room_name("sa-gone")
        started = time.monotonic()
        with pytest.raises(BackendError) as no_room:
            await backend.deliver(
                AgentTarget(gone, AGENT_IDENTITY),
                writer.write(outgoing, "gone-1", code, gone),
                timeout=WAIT_S,
            )
        assert no_room.value.code == ErrorCode.NO_ACTIVE_ROOMS
        assert time.monotonic() - started < WAIT_S - 5

        allowed = [str(client.make_url("/v1/internal/"))]
        async with live_agent(
            livekit, identity="someone-else", agent_code=code, secret=SIGNING, reply_urls=allowed
        ) as other:
            started = time.monotonic()
            with pytest.raises(BackendError) as left:
                await backend.deliver(
                    AgentTarget(other.room_name, AGENT_IDENTITY),
                    writer.write(outgoing, "left-1", code, other.room_name),
                    timeout=WAIT_S,
                )
            assert left.value.code == ErrorCode.AGENT_NOT_FOUND
            assert time.monotonic() - started < WAIT_S - 5
            assert other.said() == []


class FlakyDataSender(DataSender):
    """The real DataSender, except that its first call is lost (returns as if sent) and its
    second cannot reach LiveKit."""

    def __init__(self, settings: LiveKitSettings) -> None:
        super().__init__(settings)
        self.calls = 0

    async def send(self, room: str, data: bytes, **options: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            return
        if self.calls == 2:
            raise aiohttp.ClientConnectionError("LiveKit went away for a moment")
        await super().send(room, data, **options)


async def test_a_resend_that_fails_does_not_end_the_delivery(livekit: ServerInfo) -> None:
    """Once a copy went out the agent may have it: a failed resend is no answer, so the
    delivery keeps waiting and sends again."""
    code = f"SA{uuid.uuid4().hex[:8].upper()}"
    settings = LiveKitSettings(
        url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret
    )
    sender = FlakyDataSender(settings)
    async with server_api_gateway(livekit, data_sender=sender, resend_after=0.5) as (
        client,
        backend,
    ):
        allowed = [str(client.make_url("/v1/internal/"))]
        async with live_agent(livekit, agent_code=code, secret=SIGNING, reply_urls=allowed) as a:
            writer = MessageWriter(signing_secret=SIGNING)
            outgoing = Outgoing("speak", {"type": "speak", "message": "Third time lucky."})
            ack = json.loads(
                await backend.deliver(
                    AgentTarget(a.room_name, a.identity),
                    writer.write(outgoing, "flaky-1", code, a.room_name),
                    timeout=WAIT_S,
                )
            )
            assert ack["success"] is True, ack
            # lost, failed, then sent (a slow machine may add a duplicate resend after that)
            assert sender.calls >= 3
            assert backend.resends == sender.calls - 1
            await wait_until(lambda: a.said() == ["Third time lucky."], "spoken")
            await asyncio.sleep(0.3)
            assert a.said() == ["Third time lucky."]
    await sender.aclose()


async def test_replicas_behind_one_url_hand_each_other_the_agents_replies(
    livekit: ServerInfo, redis_url: str
) -> None:
    """Two replicas sharing Redis; the agents post to one URL (a load balancer that happens
    to send every reply to replica B). A call through replica A still gets its answer."""
    code = f"SR{uuid.uuid4().hex[:8].upper()}"
    settings = LiveKitSettings(
        url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret
    )
    port_a, port_b = free_tcp_port(), free_tcp_port()
    balanced = f"http://127.0.0.1:{port_b}"  # every agent's reply lands on replica B
    async with contextlib.AsyncExitStack() as stack:
        clients: list[Client] = []
        backends: list[ServerApiBackend] = []
        for port in (port_a, port_b):
            state = RedisState(redis_url)
            backend = ServerApiBackend(
                LiveKitBackend(settings),
                settings,
                signing_secret=SIGNING,
                public_url=balanced,
                reply_relay=RedisReplyRelay(state.client),
            )
            app = create_app(
                backend, ApiSecrets(secret=API_SECRET), signing_secret=SIGNING, state=state
            )
            client: Client = TestClient(TestServer(app, host="127.0.0.1", port=port))
            await client.start_server()
            stack.push_async_callback(client.close)
            clients.append(client)
            backends.append(backend)
        agent = await stack.enter_async_context(
            live_agent(
                livekit, agent_code=code, secret=SIGNING, reply_urls=[f"{balanced}/v1/internal/"]
            )
        )
        await agents_found(backends[0], code, 1)

        response = await clients[0].post(
            f"/v1/agent/{code}/speak",
            json={"message": "Answered through the other replica."},
            headers={"api-secret": API_SECRET},
        )
        payload = await response.json()
        assert response.status == 200, payload
        assert payload["data"]["delivered_to_rooms"] == 1
        await wait_until(lambda: agent.said() == ["Answered through the other replica."], "said")
        assert backends[1].reply_inbox.relayed >= 1
        assert backends[0].reply_inbox.accepted >= 1
        assert backends[0].resends == 0  # answered at once, not by a resend
