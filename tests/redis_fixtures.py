"""A real Redis for the tests that need one (gateway replicas, the cluster): see
``devtools/redis_server.py`` for where it comes from.

``redis_server`` is session-scoped; ``redis_url`` gives each test an empty database (our own
server is flushed after every test; an external one from ``IMAGINEX_TEST_REDIS_URL`` is used
as it is); ``store_url`` runs a test twice, in memory (None) and on a real Redis, for the
stores that have both. Without Redis the tests skip saying how to get one, and under
``CI=true`` they fail.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.redis_server import NoRedis, RedisServer, find_redis_binary, redis_from_env


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | None]:
    """The redis-server we started, or None when ``IMAGINEX_TEST_REDIS_URL`` names one."""
    if redis_from_env() is not None:
        yield None
        return
    try:
        binary = find_redis_binary()
    except NoRedis as exc:
        if _in_ci():
            pytest.fail(f"CI=true and {exc}", pytrace=False)
        pytest.skip(str(exc))
    server = RedisServer(binary, tmp_path_factory.mktemp("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer | None) -> AsyncIterator[str]:
    """A Redis URL for this test; our own server's database is emptied after it."""
    if redis_server is None:
        url = redis_from_env()
        assert url is not None
        yield url
        return
    if redis_server.process is None:  # a test stopped it on purpose
        redis_server.start_again()
    yield redis_server.url
    if redis_server.process is None:
        redis_server.start_again()
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """None: the in-memory store; else the URL of a real Redis (ours, or the one configured)."""
    if request.param == "memory":
        return None
    server: RedisServer | None = request.getfixturevalue("redis_server")
    url = server.url if server is not None else redis_from_env()
    assert url is not None
    return url
