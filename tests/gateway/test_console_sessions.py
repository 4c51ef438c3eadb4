"""The console's session stores: the same contract in memory (a lone gateway) and in a real Redis
(replicas), run against each; then what only Redis does (its keys, Redis down)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from devtools.redis_server import RedisServer
from imaginex_context_plugin.errors import StateUnavailable
from imaginex_context_plugin.gateway import ApiSecrets, create_app
from imaginex_context_plugin.gateway.http.console import (
    CSRF_HEADER,
    ConsoleOptions,
    ConsoleSession,
    MemorySessions,
    SessionStore,
)
from imaginex_context_plugin.gateway.http.console.redis_sessions import RedisSessions
from imaginex_context_plugin.gateway.http.console.sessions import session_key
from imaginex_context_plugin.gateway.state.redis_state import RedisState
from tests.gateway_fixtures import SECRET, SETTINGS, Fleet

IDLE_S = 1.0


@pytest.fixture
async def stores(
    store_url: str | None,
) -> AsyncIterator[Callable[[Callable[[], float]], SessionStore]]:
    """Makes a store reading the given wall clock (Redis keeps its own TTLs besides)."""
    clients: list[Redis] = []

    def make(clock: Callable[[], float]) -> SessionStore:
        if store_url is None:
            return MemorySessions(clock=clock)
        client = Redis.from_url(store_url)
        clients.append(client)
        # a prefix of its own: the test leaves the database as it found it for everyone else
        return RedisSessions(client, prefix=f"test-{uuid.uuid4().hex}:", clock=clock)

    yield make
    for client in clients:
        await client.aclose()


def session(now: float, *, lasts: float = 60.0) -> ConsoleSession:
    return ConsoleSession("tenant-1", "csrf-token", now, now + lasts)


async def test_a_session_is_found_by_its_key_and_deleted(
    stores: Callable[..., SessionStore],
) -> None:
    store = stores(time.time)
    made = session(time.time())
    await store.create("k1", made, idle_s=60)
    assert await store.touch("k1", idle_s=60) == made
    assert await store.touch("k2", idle_s=60) is None
    await store.delete("k1")
    assert await store.touch("k1", idle_s=60) is None
    await store.delete("k1")  # twice: nothing


async def test_an_unused_session_ends_after_its_idle_time_and_use_restarts_it(
    stores: Callable[..., SessionStore],
) -> None:
    # real time passes (Redis keeps the idle time as the key's TTL); the clock follows it
    store = stores(time.time)
    await store.create("k", session(time.time()), idle_s=IDLE_S)
    for _ in range(5):  # used every fifth of the idle time: alive well past one idle time
        await asyncio.sleep(IDLE_S / 5)
        assert await store.touch("k", idle_s=IDLE_S) is not None
    await asyncio.sleep(IDLE_S * 1.5)
    assert await store.touch("k", idle_s=IDLE_S) is None


async def test_a_session_ends_at_its_end_however_much_it_is_used(
    stores: Callable[..., SessionStore],
) -> None:
    store = stores(time.time)
    await store.create("k", session(time.time(), lasts=IDLE_S), idle_s=60)
    assert await store.touch("k", idle_s=60) is not None
    # used all along, with an hour of idle time: still over at its end (Redis' TTL too)
    await asyncio.sleep(IDLE_S * 1.5)
    assert await store.touch("k", idle_s=60) is None


async def test_redis_keeps_a_hash_of_the_session_id_under_its_prefix(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        store = RedisSessions(client)
        key = session_key("the-cookie-value")
        await store.create(key, session(time.time(), lasts=3600), idle_s=900)
        keys = [k.decode() for k in await client.keys("*")]
        assert keys == [f"imaginex:console:session:{key}"]
        assert "the-cookie-value" not in keys[0]
        stored = (await client.get(keys[0])).decode()
        assert "the-cookie-value" not in stored
        assert 899_000 < await client.pttl(keys[0]) <= 900_000
    finally:
        await client.aclose()


async def test_replicas_share_sessions_and_redis_down_is_503(
    redis_server: RedisServer | None, redis_url: str, fleet: Fleet
) -> None:
    if redis_server is None:
        pytest.skip("an external Redis (IMAGINEX_TEST_REDIS_URL) is not ours to stop")
    secrets = ApiSecrets(secret=SECRET)
    clients = []
    for _ in range(2):  # two replicas on one Redis; the session is made on the first
        state = RedisState(redis_url)
        app = create_app(
            fleet.backend(),
            secrets,
            signing_secret="replicas-need-signing-0123456789",
            state=state,
            console=ConsoleOptions(livekit=SETTINGS, rooms=fleet.directory),
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
    first, second = clients
    try:
        login = await first.post("/console/api/login", json={"api_secret": SECRET})
        assert login.status == 200
        csrf = (await login.json())["csrf_token"]
        cookie = login.cookies["imaginex_console"].value
        headers = {"Cookie": f"imaginex_console={cookie}"}
        mine = await second.get("/console/api/session", headers=headers)
        assert mine.status == 200
        assert (await mine.json())["csrf_token"] == csrf
        out = await second.post("/console/api/logout", headers={**headers, CSRF_HEADER: csrf})
        assert out.status == 200
        assert (await first.get("/console/api/session", headers=headers)).status == 401

        redis_server.stop()
        down = await first.post("/console/api/login", json={"api_secret": SECRET})
        assert down.status == 503
        assert (await down.json())["error"] == "STATE_UNAVAILABLE"
        assert (await first.get("/console/api/session", headers=headers)).status == 503
    finally:
        if redis_server.process is None:
            redis_server.start_again()
        for client in clients:
            await client.close()


async def test_a_redis_store_that_cannot_be_reached_raises_state_unavailable(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    if redis_server is None:
        pytest.skip("an external Redis (IMAGINEX_TEST_REDIS_URL) is not ours to stop")
    client = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
    try:
        store = RedisSessions(client)
        redis_server.stop()
        with pytest.raises(StateUnavailable):
            await store.touch("k", idle_s=60)
        with pytest.raises(StateUnavailable):
            await store.create("k", session(time.time()), idle_s=60)
    finally:
        redis_server.start_again()
        await client.aclose()
