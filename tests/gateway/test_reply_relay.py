"""Replicas behind one URL: an agent's reply that reaches a replica not waiting for it is
handed over a real Redis (``RedisReplyRelay``) to the one that is."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devtools.redis_server import RedisServer
from imaginex_context_plugin.gateway import ApiSecrets, create_app
from imaginex_context_plugin.gateway.delivery import REPLIES_PATH, ReplyInbox, ServerApiBackend
from imaginex_context_plugin.gateway.state.redis_state import RedisReplyRelay, RedisState
from imaginex_context_plugin.replies import (
    REPLY_SIGNATURE_HEADER,
    REPLY_TIMESTAMP_HEADER,
    reply_signature,
)
from tests.gateway_fixtures import SETTINGS, Fleet
from tests.helpers import wait_until

SECRET = "reply-relay-signing-secret-0123456789"
ROOM = "relay-room"
API_SECRET = "reply-relay-api-secret-0123456789"


@contextlib.asynccontextmanager
async def replica(redis_url: str) -> AsyncIterator[tuple[ReplyInbox, TestServer]]:
    """One replica's inbox with its relay, served on 127.0.0.1."""
    state = RedisState(redis_url)
    relay = RedisReplyRelay(state.client)
    inbox = ReplyInbox([SECRET])
    inbox.relay = relay
    await relay.start(inbox.answer)
    app = web.Application()
    app.router.add_post(REPLIES_PATH, inbox.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield inbox, server
    finally:
        await server.close()
        await relay.aclose()
        await relay.aclose()  # idempotent
        await state.aclose()


async def post_reply(server: TestServer, request_id: str, *, secret: str = SECRET) -> int:
    ack = json.dumps({"type": "ack", "id": request_id, "success": True})
    body = json.dumps({"room": ROOM, "ack": ack}).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        REPLY_TIMESTAMP_HEADER: str(stamp),
        REPLY_SIGNATURE_HEADER: reply_signature(body, stamp, secret),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url(REPLIES_PATH), data=body, headers=headers) as response,
    ):
        return response.status


async def test_a_reply_reaching_another_replica_answers_the_waiting_one(redis_url: str) -> None:
    async with replica(redis_url) as (waiting, _), replica(redis_url) as (other, other_server):
        waiter = waiting.expect(ROOM, "relay-1")
        assert await post_reply(other_server, "relay-1") == 200
        await wait_until(lambda: waiter.answer.done(), "the reply handed over")
        assert json.loads(waiter.answer.result())["id"] == "relay-1"
        assert (other.relayed, other.accepted, waiting.accepted) == (1, 0, 1)

        # still verified where it lands: forged is refused there and never relayed
        assert await post_reply(other_server, "relay-2", secret="a-forged-secret") == 401
        assert other.relayed == 1


async def test_without_redis_the_reply_is_a_503_and_the_relay_comes_back(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    if redis_server is None:
        pytest.skip("needs the Redis server the tests started (it is stopped here)")
    async with replica(redis_url) as (waiting, _), replica(redis_url) as (other, other_server):
        redis_server.stop()
        refused_before = other.refused
        waiting.expect(ROOM, "down-1")
        assert await post_reply(other_server, "down-1") == 503
        assert (other.relayed, other.refused) == (0, refused_before)
        redis_server.start_again()

        later = waiting.expect(ROOM, "back-1")

        async def handed_over() -> bool:
            # the subscriber resubscribes within a second or so; until then a publish
            # reaches nobody and the agent's resend would answer instead
            if not later.answer.done():
                await post_reply(other_server, "back-1")
            return later.answer.done()

        await wait_until(handed_over, "the relay back after Redis restarted", timeout=15)


# ---------------------------------------------------------------------------------------------
# a reply is taken once across replicas: the real gateway applications on one real Redis


@contextlib.asynccontextmanager
async def gateway_replicas(
    redis_url: str, fleet: Fleet
) -> AsyncIterator[list[tuple[ServerApiBackend, TestServer]]]:
    """Two gateways (``create_app``, server-API delivery) sharing Redis, served on 127.0.0.1."""
    async with contextlib.AsyncExitStack() as stack:
        replicas = []
        for _ in range(2):
            state = RedisState(redis_url)
            backend = ServerApiBackend(
                fleet.backend(),
                SETTINGS,
                signing_secret=SECRET,
                public_url="http://127.0.0.1:1/",
                reply_relay=RedisReplyRelay(state.client),
            )
            app = create_app(backend, ApiSecrets(secret=API_SECRET), signing_secret=SECRET,
                             state=state)
            server = TestServer(app, host="127.0.0.1")
            await server.start_server()
            stack.push_async_callback(server.close)
            replicas.append((backend, server))
        yield replicas


def signed_reply(request_id: str, *, age_s: int = 0) -> tuple[bytes, dict[str, str]]:
    ack = json.dumps({"type": "ack", "id": request_id, "success": True})
    body = json.dumps({"room": ROOM, "ack": ack}).encode()
    stamp = int(time.time()) - age_s
    return body, {
        "Content-Type": "application/json",
        REPLY_TIMESTAMP_HEADER: str(stamp),
        REPLY_SIGNATURE_HEADER: reply_signature(body, stamp, SECRET),
    }


async def post_to(server: TestServer, reply: tuple[bytes, dict[str, str]]) -> tuple[int, str]:
    body, headers = reply
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url(REPLIES_PATH), data=body, headers=headers) as response,
    ):
        return response.status, (await response.json())["message"] if response.status != 200 else ""


async def test_a_reply_is_taken_once_across_replicas(redis_url: str, fleet: Fleet) -> None:
    async with gateway_replicas(redis_url, fleet) as [(a, server_a), (b, server_b)]:
        inbox_a, inbox_b = a.reply_inbox, b.reply_inbox
        waiter = inbox_a.expect(ROOM, "once-1")
        reply = signed_reply("once-1")
        assert await post_to(server_a, reply) == (200, "")
        assert waiter.answer.done()
        inbox_a.forget(waiter)

        # the same signed reply, replayed: refused on the other replica, and on this one
        replay = (401, "This reply was already received (replay).")
        assert await post_to(server_b, reply) == replay
        assert inbox_b.relayed == 0  # never handed to anyone
        # a later delivery with the same room and request id (a retry) is never answered by it
        later_a = inbox_a.expect(ROOM, "once-1")
        later_b = inbox_b.expect(ROOM, "once-1")
        for server in (server_a, server_b):
            assert await post_to(server, reply) == replay
        # anything B relayed before this marker has reached A once the marker has
        marker = inbox_a.expect(ROOM, "marker")
        assert await post_to(server_b, signed_reply("marker")) == (200, "")
        await wait_until(lambda: marker.answer.done(), "the marker relayed to A")
        assert not later_a.answer.done()
        assert not later_b.answer.done()

        # the agent's own answer to the retry (signed afresh) is taken, through either replica
        inbox_b.forget(later_b)
        assert await post_to(server_b, signed_reply("once-1", age_s=2)) == (200, "")
        await wait_until(lambda: later_a.answer.done(), "the fresh reply relayed to A")
        assert (inbox_a.accepted, inbox_b.relayed) == (3, 2)


async def test_without_redis_a_reply_is_a_503_and_is_taken_once_redis_is_back(
    redis_server: RedisServer | None, redis_url: str, fleet: Fleet
) -> None:
    if redis_server is None:
        pytest.skip("needs the Redis server the tests started (it is stopped here)")
    async with gateway_replicas(redis_url, fleet) as [(a, server_a), _]:
        waiter = a.reply_inbox.expect(ROOM, "down-2")
        reply = signed_reply("down-2")
        redis_server.stop()
        status, message = await post_to(server_a, reply)
        # it cannot be checked for a replay: not taken (the delivery's resend, answered and
        # signed afresh, may be), and not spent either
        assert (status, message) == (
            503,
            "The reply could not be checked for a replay: the shared state is down.",
        )
        assert not waiter.answer.done()
        redis_server.start_again()
        assert await post_to(server_a, reply) == (200, "")
        assert waiter.answer.done()
