"""Gateway state: what keeping Idempotency-Key records and rate limits in Redis adds per call.

A call with an ``Idempotency-Key`` costs the gateway three state steps: take a rate-limit token,
claim the key, and finish it with the answer. Measured in the same run against a real
``redis-server`` (Debian's, started on a loopback port, or ``IMAGINEX_TEST_REDIS_URL``):

- those three steps with ``RedisState`` (what a replica pays), next to
- the same steps with ``MemoryState`` and the local token bucket (a lone gateway), and
- one Redis ``PING`` round trip (the floor any Redis step costs);

sequentially (latency p50/p99) and with 64 calls at once (throughput). Correctness: every key is
claimed exactly once, its answer comes back on a repeat, and a shared bucket of ``burst`` tokens
admits exactly ``burst`` calls.

Run: ``python benchmarks/bench_gateway_state.py [--calls N]``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import Figure, Report, ms, percentile, script_main
from redis.asyncio import Redis

from devtools.redis_server import RedisServer, find_redis_binary, redis_from_env
from imaginex_context_plugin.gateway.state import IdempotencyStore, MemoryIdempotency, StoredAnswer
from imaginex_context_plugin.gateway.state.redis_state import RedisState
from imaginex_context_plugin.security import RateLimit, RateLimiter

ANSWER = StoredAnswer(200, b'{"success":true,"message":"Speech triggered successfully"}')
LIMIT = RateLimit(per_second=1e9, burst=1_000_000)  # never refuses: the cost, not the refusal
CONCURRENCY = 64
TARGET_OVER_PING = 4.0
"""Three Redis steps should cost within 4 PING round trips at the median (one each, plus
the Lua work)."""


async def _timed(step: Callable[[int], Awaitable[None]], calls: int) -> list[float]:
    times: list[float] = []
    for n in range(calls):
        started = time.perf_counter()
        await step(n)
        times.append(time.perf_counter() - started)
    return times


async def _throughput(step: Callable[[int], Awaitable[None]], calls: int) -> float:
    queue = iter(range(calls))

    async def worker() -> None:
        for n in queue:
            await step(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return calls / (time.perf_counter() - started)


def _call(store: IdempotencyStore, take: Callable[[], Awaitable[float]], run: str) -> Callable[
    [int], Awaitable[None]
]:
    async def step(n: int) -> None:
        token = uuid.uuid4().hex
        await take()
        claim = await store.claim(f"{run}-{n}", b"digest", token=token, lease_ms=10_000)
        if claim.outcome != "claimed":
            raise AssertionError(f"key {n} claimed twice")
        await store.finish(f"{run}-{n}", token=token, answer=ANSWER)

    return step


async def run(*, calls: int, url: str) -> Report:
    report = Report("gateway state per call: Redis (replicas) vs memory (one gateway)")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    redis = RedisState(url, prefix=prefix)
    memory = MemoryIdempotency()
    local = RateLimiter(LIMIT)
    ping_client = Redis.from_url(url)

    async def take_local() -> float:
        return local.acquire("default")

    async def take_redis() -> float:
        return await redis.buckets.take("default", LIMIT)

    async def ping(_: int) -> None:
        await ping_client.ping()

    try:
        # warm both: connections, script loading
        await _timed(_call(redis.idempotency, take_redis, "warm"), 50)
        await _timed(ping, 50)
        mem = await _timed(_call(memory, take_local, "seq"), calls)
        red = await _timed(_call(redis.idempotency, take_redis, "seq"), calls)
        pings = await _timed(ping, calls)
        mem_rate = await _throughput(_call(memory, take_local, "par"), calls)
        red_rate = await _throughput(_call(redis.idempotency, take_redis, "par"), calls)

        repeat = await redis.idempotency.claim("seq-0", b"digest", token="x", lease_ms=1_000)
        report.ok = repeat.outcome == "done" and repeat.answer == ANSWER
        shared = RateLimit(per_second=0.001, burst=5)
        other = RedisState(url, prefix=prefix)  # a second replica
        admitted = 0
        for n in range(10):
            wait = await (redis if n % 2 else other).buckets.take("shared", shared)
            admitted += wait == 0.0
        await other.aclose()
        report.ok &= admitted == shared.burst
    finally:
        await ping_client.aclose()
        await redis.aclose()

    for q, name in ((0.5, "p50"), (0.99, "p99")):
        value, floor, base = percentile(red, q), percentile(pings, q), percentile(mem, q)
        report.add(
            Figure(
                f"take+claim+finish {name}, Redis",
                ms(value),
                baseline=f"memory {ms(base)}; PING {ms(floor)}",
                ratio=f"{value / floor:.1f}x PING" if floor else "",
                target=f"<= {TARGET_OVER_PING:g}x PING" if q == 0.5 else "",
                met=value <= TARGET_OVER_PING * floor if q == 0.5 else None,
            )
        )
    report.add(
        Figure(
            f"calls/s, {CONCURRENCY} at once, Redis",
            f"{red_rate:,.0f}",
            baseline=f"memory {mem_rate:,.0f}",
            ratio=f"{red_rate / mem_rate:.3f}x",
        )
    )
    report.notes += [
        f"{calls:,} sequential calls each; one replica's client (one connection pool)",
        "a repeat of a finished key got its answer back; a shared bucket of 5 tokens admitted "
        f"{admitted} of 10 calls alternating between two replicas",
    ]
    return report


async def _main(calls: int) -> Report:
    url = redis_from_env()
    if url is not None:
        return await run(calls=calls, url=url)
    server = RedisServer(find_redis_binary(), Path(tempfile.mkdtemp(prefix="bench-redis-")))
    server.start()
    try:
        return await run(calls=calls, url=server.url)
    finally:
        server.stop()


def main() -> None:
    script_main(__doc__, _main, calls=2_000)


if __name__ == "__main__":
    main()
