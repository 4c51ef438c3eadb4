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
from imaginex_context_plugin.gateway.redis_state import RedisReplyRelay, RedisState
from imaginex_context_plugin.gateway.server_api_backend import REPLIES_PATH, ReplyInbox
from imaginex_context_plugin.replies import (
    REPLY_SIGNATURE_HEADER,
    REPLY_TIMESTAMP_HEADER,
    reply_signature,
)
from tests.helpers import wait_until

SECRET = "reply-relay-signing-secret-0123456789"
ROOM = "relay-room"


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
