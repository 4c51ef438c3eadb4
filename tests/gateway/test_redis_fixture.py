"""The Redis the tests start is real and on loopback only."""

from __future__ import annotations

import subprocess

import pytest
from redis.asyncio import Redis

from devtools.redis_server import LOOPBACK, RedisServer


async def test_redis_answers(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        assert await client.ping()
        await client.set("imaginex:test", b"1")
        assert await client.get("imaginex:test") == b"1"
        info = await client.info("server")
        assert str(info["redis_version"]).split(".")[0].isdigit()
    finally:
        await client.aclose()


async def test_redis_is_configured_for_loopback_only(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    if redis_server is None:
        pytest.skip("an external Redis (IMAGINEX_TEST_REDIS_URL) is configured as it is")
    client = Redis.from_url(redis_url)
    try:
        bind = await client.config_get("bind")
        assert bind == {"bind": LOOPBACK}
        assert (await client.config_get("protected-mode")) == {"protected-mode": "yes"}
    finally:
        await client.aclose()


def test_redis_listens_on_loopback_only(redis_server: RedisServer | None) -> None:
    if redis_server is None:
        pytest.skip("an external Redis (IMAGINEX_TEST_REDIS_URL) is configured as it is")
    assert redis_server.process is not None
    sockets = subprocess.run(
        ["ss", "-ltnpH"], capture_output=True, text=True, check=False
    ).stdout
    mine = [line for line in sockets.splitlines() if f"pid={redis_server.process.pid}," in line]
    assert mine, sockets
    for line in mine:
        local = line.split()[3]
        assert local.startswith(f"{LOOPBACK}:"), line
