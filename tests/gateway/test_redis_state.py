"""The gateway's state stores: the same semantics in memory (a lone gateway) and in a real Redis
(replicas), run against each; then what only Redis does (shared buckets, keys, Redis down)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from devtools.redis_server import RedisServer
from imaginex_context_plugin.errors import StateUnavailable
from imaginex_context_plugin.gateway.state import (
    IdempotencyStore,
    MemoryIdempotency,
    MemoryReplies,
    ReplyMemory,
    StoredAnswer,
)
from imaginex_context_plugin.gateway.state.redis_state import RedisState
from imaginex_context_plugin.security import RateLimit

ANSWER = StoredAnswer(200, b'{"success":true}', {"Retry-After": "2"})
WINDOW_S = 0.6


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[IdempotencyStore]:
    if store_url is None:
        yield MemoryIdempotency(window_s=WINDOW_S)
        return
    # a prefix of its own: the test leaves the database as it found it for everyone else
    state = RedisState(store_url, prefix=f"test-{uuid.uuid4().hex}:", window_s=WINDOW_S)
    yield state.idempotency
    await state.aclose()


async def test_the_first_claim_delivers_and_a_repeat_is_busy_until_it_finishes(
    store: IdempotencyStore,
) -> None:
    first = await store.claim("k1", b"digest", token="a", lease_ms=5_000)
    repeat = await store.claim("k1", b"digest", token="b", lease_ms=5_000)
    assert first.outcome == "claimed"
    assert repeat.outcome == "busy"
    assert 4_000 < repeat.retry_ms <= 5_000
    assert await store.finish("k1", token="a", answer=ANSWER) is True
    done = await store.claim("k1", b"digest", token="c", lease_ms=5_000)
    assert done.outcome == "done"
    assert done.answer == ANSWER


async def test_another_request_under_a_bound_key_is_a_mismatch(store: IdempotencyStore) -> None:
    await store.claim("k2", b"digest", token="a", lease_ms=5_000)
    assert (await store.claim("k2", b"other", token="b", lease_ms=5_000)).outcome == "mismatch"
    await store.finish("k2", token="a", answer=ANSWER)
    assert (await store.claim("k2", b"other", token="b", lease_ms=5_000)).outcome == "mismatch"


async def test_a_retryable_outcome_keeps_only_the_binding(store: IdempotencyStore) -> None:
    await store.claim("k3", b"digest", token="a", lease_ms=5_000)
    assert await store.finish("k3", token="a", answer=None) is True
    # the same request delivers again; another one is still refused
    assert (await store.claim("k3", b"other", token="b", lease_ms=5_000)).outcome == "mismatch"
    assert (await store.claim("k3", b"digest", token="b", lease_ms=5_000)).outcome == "claimed"


async def test_a_lease_that_runs_out_is_taken_over_and_the_late_holder_stores_nothing(
    store: IdempotencyStore,
) -> None:
    await store.claim("k4", b"digest", token="dead", lease_ms=100)
    assert (await store.claim("k4", b"digest", token="b", lease_ms=100)).outcome == "busy"
    await asyncio.sleep(0.15)
    assert (await store.claim("k4", b"digest", token="b", lease_ms=5_000)).outcome == "claimed"
    late = StoredAnswer(504, b'{"late":true}')
    assert await store.finish("k4", token="dead", answer=late) is False
    assert await store.finish("k4", token="b", answer=ANSWER) is True
    assert (await store.claim("k4", b"digest", token="c", lease_ms=100)).answer == ANSWER


async def test_a_key_is_forgotten_after_its_window(store: IdempotencyStore) -> None:
    await store.claim("k5", b"digest", token="a", lease_ms=100)
    await store.finish("k5", token="a", answer=ANSWER)
    await asyncio.sleep(WINDOW_S + 0.1)
    # bound no longer than the agents remember the id: after that it is a new request
    assert (await store.claim("k5", b"other", token="b", lease_ms=100)).outcome == "claimed"


async def test_concurrent_claims_have_one_winner(store: IdempotencyStore) -> None:
    claims = await asyncio.gather(
        *(store.claim("k6", b"digest", token=f"t{n}", lease_ms=5_000) for n in range(20))
    )
    assert sorted(c.outcome for c in claims) == ["busy"] * 19 + ["claimed"]


# ---------------------------------------------------------------------------------------------
# Redis only


async def test_two_replicas_share_one_bucket(redis_url: str) -> None:
    one, two = RedisState(redis_url), RedisState(redis_url)
    limit = RateLimit(per_second=0.01, burst=3)
    try:
        waits = [await (one if n % 2 else two).buckets.take("tenant-1", limit) for n in range(5)]
        other = await one.buckets.take("tenant-2", limit)
    finally:
        await one.aclose()
        await two.aclose()
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert all(w > 90 for w in waits[3:])  # (1 - tokens) / 0.01 per second
    assert other == 0.0


async def test_keys_live_under_the_prefix_and_expire(redis_url: str) -> None:
    state = RedisState(redis_url, prefix="imaginex:")
    client = Redis.from_url(redis_url)
    try:
        await state.idempotency.claim("abc", b"d", token="t", lease_ms=5_000)
        await state.buckets.take("default", RateLimit(per_second=10, burst=50))
        await state.replies.remember("9f" * 32)
        keys = sorted(k.decode() for k in await client.keys("*"))
        ttls = {k: await client.pttl(k) for k in keys}
    finally:
        await client.aclose()
        await state.aclose()
    reply_key = "imaginex:reply:" + "9f" * 32
    assert keys == [
        "imaginex:idem:{abc}",
        "imaginex:idem:{abc}:lease",
        "imaginex:rate:default",
        reply_key,
    ]
    assert 599_000 < ttls[reply_key] <= 600_000  # twice the signature window
    assert 599_000 < ttls["imaginex:idem:{abc}"] <= 600_000
    assert 4_000 < ttls["imaginex:idem:{abc}:lease"] <= 5_000
    assert 0 < ttls["imaginex:rate:default"] <= 6_000  # empty bucket refilled in 5 s, plus 1


async def test_redis_down_is_state_unavailable_and_then_it_recovers(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    if redis_server is None:
        pytest.skip("an external Redis (IMAGINEX_TEST_REDIS_URL) is not ours to stop")
    state = RedisState(redis_url)
    try:
        await state.idempotency.claim("up", b"d", token="t", lease_ms=5_000)
        redis_server.stop()
        with pytest.raises(StateUnavailable):
            await state.idempotency.claim("down", b"d", token="t", lease_ms=5_000)
        with pytest.raises(StateUnavailable):
            await state.buckets.take("default", RateLimit())
        redis_server.start_again()
        # the same client, its broken connection replaced
        claim = await state.idempotency.claim("back", b"d", token="t", lease_ms=5_000)
        assert claim.outcome == "claimed"
    finally:
        await state.aclose()


# ---------------------------------------------------------------------------------------------
# the agents' replies taken: the same contract in memory and in Redis


@pytest.fixture
async def replies(store_url: str | None) -> AsyncIterator[ReplyMemory]:
    if store_url is None:
        yield MemoryReplies(window_s=WINDOW_S)
        return
    state = RedisState(store_url, prefix=f"test-{uuid.uuid4().hex}:", reply_window_s=WINDOW_S)
    yield state.replies
    await state.aclose()


async def test_a_reply_is_remembered_once_and_forgotten_after_its_window(
    replies: ReplyMemory,
) -> None:
    assert await replies.remember("ab" * 32) is True
    assert await replies.remember("ab" * 32) is False  # a replay
    assert await replies.remember("cd" * 32) is True  # another reply
    await asyncio.sleep(WINDOW_S + 0.1)
    # by then the reply's timestamp is refused anyway
    assert await replies.remember("ab" * 32) is True


async def test_a_reply_remembered_at_once_by_many_is_taken_by_one(replies: ReplyMemory) -> None:
    taken = await asyncio.gather(*(replies.remember("ef" * 32) for _ in range(20)))
    assert sorted(taken) == [False] * 19 + [True]


async def test_replicas_share_the_replies_taken(redis_url: str) -> None:
    one, two = RedisState(redis_url), RedisState(redis_url)
    try:
        assert await one.replies.remember("12" * 32) is True
        assert await two.replies.remember("12" * 32) is False
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_memory_full_of_replies_forgets_the_oldest_first() -> None:
    memory = MemoryReplies(max_replies=2)
    for signature in ("a", "b", "c"):
        assert await memory.remember(signature) is True
    assert await memory.remember("c") is False
    assert await memory.remember("a") is True  # forgotten to make room
