"""Two gateway replicas sharing a real Redis, in front of real agents (the in-memory fleet).

Each replica is its own ``create_app`` with its own ``LiveKitBackend`` joining the rooms under
its own identity (``imaginex-gateway`` and ``imaginex-gateway-b``), as replicas must; both sign
with the one sender ``imaginex-gateway``, and the agents trust signatures only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from devtools.redis_server import RedisServer
from imaginex_context_plugin.gateway.state.redis_state import RedisState
from imaginex_context_plugin.security import RateLimit
from tests.gateway_fixtures import (
    CODE,
    HEADERS,
    ROOM_1,
    ROOM_2,
    Client,
    Fleet,
    GatewayFactory,
    LiveAgent,
    post,
)
from tests.helpers import wait_until

SIGNING = "replicas-signing-secret"
SPEAK = f"/v1/agent/{CODE}/speak"
OTHER_IDENTITY = "imaginex-gateway-b"


async def signed_agent(fleet: Fleet, room: str) -> LiveAgent:
    return await fleet.agent(room, allowed_identities=[], secret=SIGNING, require_signature=True)


async def replicas(
    fleet: Fleet,
    make_gateway: GatewayFactory,
    redis_url: str,
    **options: Any,
) -> tuple[Client, Client]:
    """Replica A (identity ``imaginex-gateway``) and B (``imaginex-gateway-b``) on one Redis."""
    only_a = options.pop("a_options", {})
    only_b = options.pop("b_options", {})
    a = await make_gateway(
        signing_secret=SIGNING, state=RedisState(redis_url), **options, **only_a
    )
    b = await replica(fleet, make_gateway, redis_url, OTHER_IDENTITY, **options, **only_b)
    return a, b


async def replica(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str, identity: str, **options: Any
) -> Client:
    """One more replica on the same Redis, as ``identity``."""
    return await make_gateway(
        backend=fleet.backend(
            identity=identity,
            room_factory=lambda name: fleet.network.create_room(name, identity, connected=False),
        ),
        signing_secret=SIGNING,
        state=RedisState(redis_url),
        **options,
    )


def keyed(key: str) -> dict[str, str]:
    return {**HEADERS, "Idempotency-Key": key}


async def test_the_same_key_to_both_replicas_at_once_is_delivered_once(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    agents = [await signed_agent(fleet, ROOM_1), await signed_agent(fleet, ROOM_2)]
    a, b = await replicas(fleet, make_gateway, redis_url)
    message = "Your order has shipped."

    (status_a, body_a, headers_a), (status_b, body_b, headers_b) = await asyncio.gather(
        post(a, SPEAK, {"message": message}, headers=keyed("ship-1")),
        post(b, SPEAK, {"message": message}, headers=keyed("ship-1")),
    )

    assert status_a == status_b == 200
    assert body_a == body_b  # the same answer, timestamp and all
    assert body_a["data"]["delivered_to_rooms"] == 2
    assert [r["duplicate"] for r in body_a["data"]["rooms"]] == [False, False]
    # exactly one of the two was answered from the other's record
    replays = [h.get("Idempotent-Replayed") for h in (headers_a, headers_b)]
    assert sorted(replays, key=str) == [None, "true"]
    for live in agents:
        await wait_until(lambda live=live: live.said() == [message])  # type: ignore[misc]
        await live.idle()
        assert live.said() == [message]
        assert live.plugin.stats.received == 1


async def test_a_retry_after_a_replica_died_mid_fan_out_completes_and_is_applied_once(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    # replica A delivers to ROOM_1, then hangs on ROOM_2's agent (which never answers) past
    # its lease, as a replica that died mid-fan-out would: the retry on B waits for the lease,
    # takes the key over and delivers again; the agent in ROOM_1 recognises the request by the
    # signed sender and applies it once
    agent = await signed_agent(fleet, ROOM_1)
    fleet.stuck_agent(ROOM_2)
    a, b = await replicas(
        fleet,
        make_gateway,
        redis_url,
        a_options={"delivery_timeout": 3.0, "idempotency_lease_s": 0.5},
        b_options={"delivery_timeout": 0.5},
    )
    message = "Your refund is on its way."
    dying = asyncio.create_task(post(a, SPEAK, {"message": message}, headers=keyed("refund-9")))
    await wait_until(lambda: agent.said() == [message])

    status, body, headers = await post(b, SPEAK, {"message": message}, headers=keyed("refund-9"))

    assert status == 200
    assert "Idempotent-Replayed" not in headers  # B delivered itself
    rooms = {r["room"]: r for r in body["data"]["rooms"]}
    assert rooms[ROOM_1]["delivered"] is True
    assert rooms[ROOM_1]["duplicate"] is True  # the agent had it from A already
    assert rooms[ROOM_2]["error"] == "TIMEOUT"
    await agent.idle()
    assert agent.said() == [message]
    assert agent.plugin.stats.received == 2
    assert agent.plugin.stats.duplicates == 1
    # A comes back too late: its lease was taken over, it stores nothing
    status_a, _, _ = await dying
    assert status_a == 200


async def test_the_same_key_with_another_body_on_the_other_replica_is_refused(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    agent = await signed_agent(fleet, ROOM_1)
    a, b = await replicas(fleet, make_gateway, redis_url)
    first, _, _ = await post(a, SPEAK, {"message": "Order 42 shipped."}, headers=keyed("o-42"))
    status, body, _ = await post(b, SPEAK, {"message": "Order 43 shipped."}, headers=keyed("o-42"))
    other_endpoint, _, _ = await post(
        b, f"/v1/agent/{CODE}/add-context", {"context": "Order 42 shipped."}, headers=keyed("o-42")
    )
    assert first == 200
    assert (status, other_endpoint) == (422, 422)
    assert body["error"] == "ID_REUSED"
    assert "already used for a different request" in body["message"]
    assert agent.plugin.stats.received == 1


async def test_a_retryable_outcome_is_delivered_again_by_the_retry(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    fleet.stuck_agent(ROOM_1)
    a, b = await replicas(fleet, make_gateway, redis_url, delivery_timeout=0.3)
    first, _, _ = await post(a, SPEAK, {"message": "Anyone?"}, headers=keyed("t-1"))
    again, _, headers = await post(b, SPEAK, {"message": "Anyone?"}, headers=keyed("t-1"))
    other, body, _ = await post(b, SPEAK, {"message": "Else"}, headers=keyed("t-1"))
    assert (first, again) == (504, 504)
    assert "Idempotent-Replayed" not in headers  # tried again, not replayed
    assert other == 422  # the key stays bound to its request
    assert body["error"] == "ID_REUSED"


async def test_a_waiter_past_its_deadline_gets_409_and_the_answer_later(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    agent = await signed_agent(fleet, ROOM_1)
    fleet.stuck_agent(ROOM_2)
    a, b = await replicas(fleet, make_gateway, redis_url, delivery_timeout=1.0)
    slow = asyncio.create_task(post(a, SPEAK, {"message": "Hold on."}, headers=keyed("w-1")))
    await wait_until(lambda: agent.said() == ["Hold on."])
    # B waits as long as a lease runs (delivery_timeout + 5 s) only when it is configured so
    b_impatient = await replica(
        fleet, make_gateway, redis_url, "imaginex-gateway-c", idempotency_lease_s=0.2
    )
    status, body, headers = await post(
        b_impatient, SPEAK, {"message": "Hold on."}, headers=keyed("w-1")
    )
    assert status == 409
    assert body["error"] == "REQUEST_IN_PROGRESS"
    assert "still being delivered" in body["message"]
    assert int(headers["Retry-After"]) >= 1
    first = await slow
    # the first answer had a TIMEOUT room: not kept, so a later retry delivers again
    later, _, later_headers = await post(
        b, SPEAK, {"message": "Hold on."}, headers=keyed("w-1")
    )
    assert first[0] == later == 200
    assert "Idempotent-Replayed" not in later_headers
    assert agent.plugin.stats.duplicates == 1


async def test_the_rate_limit_is_shared_by_the_replicas(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    a, b = await replicas(
        fleet, make_gateway, redis_url, rate_limit=RateLimit(per_second=0.01, burst=3)
    )
    answers = [await post((a, b)[n % 2], SPEAK, {"message": "Hi"}) for n in range(6)]
    statuses = [status for status, _, _ in answers]
    # no agent is live: an admitted request is 404, a limited one 429 (the same body as alone)
    assert statuses == [404, 404, 404, 429, 429, 429]
    _, body, headers = answers[3]
    assert body == {
        "success": False,
        "error": "RATE_LIMITED",
        "message": "Too many requests for this api-secret; retry after Retry-After seconds.",
    }
    assert int(headers["Retry-After"]) >= 90


async def test_without_shared_state_each_replica_has_its_own_limit(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # the baseline the test above improves on: two lone gateways allow twice the limit
    limit = RateLimit(per_second=0.01, burst=3)
    a = await make_gateway(rate_limit=limit)
    b = await make_gateway(
        backend=fleet.backend(identity=OTHER_IDENTITY), rate_limit=limit
    )
    statuses = [(await post((a, b)[n % 2], SPEAK, {"message": "Hi"}))[0] for n in range(6)]
    assert statuses == [404] * 6


async def test_redis_down_is_a_clear_503_with_nothing_sent_and_it_recovers(
    fleet: Fleet,
    make_gateway: GatewayFactory,
    redis_server: RedisServer | None,
    redis_url: str,
) -> None:
    if redis_server is None:
        pytest.skip("an external Redis (IMAGINEX_TEST_REDIS_URL) is not ours to stop")
    agent = await signed_agent(fleet, ROOM_1)
    a, _ = await replicas(fleet, make_gateway, redis_url)
    # without a rate limit too: the idempotency check alone must refuse to go on blind
    unlimited = await replica(fleet, make_gateway, redis_url, "imaginex-gateway-c", rate_limit=None)
    redis_server.stop()
    answers = [
        await post(a, SPEAK, {"message": "Down?"}, headers=keyed("d-1")),
        await post(a, SPEAK, {"message": "Down?"}),
        await post(unlimited, SPEAK, {"message": "Down?"}, headers=keyed("d-2")),
    ]
    for status, body, headers in answers:
        assert status == 503
        assert body["error"] == "STATE_UNAVAILABLE"
        assert body["message"].startswith("The gateway's shared state (Redis) cannot be reached")
        assert headers["Retry-After"] == "1"
    # a wrong secret is still told so: that check needs no Redis
    wrong, _, _ = await post(a, SPEAK, {"message": "x"}, headers={"api-secret": "wrong"})
    assert wrong == 401
    await asyncio.sleep(0.1)
    assert agent.plugin.stats.received == 0

    redis_server.start_again()
    status, body, _ = await post(a, SPEAK, {"message": "Back."}, headers=keyed("d-1"))
    assert status == 200
    assert body["data"]["delivered_to_rooms"] == 1
    assert agent.plugin.stats.received == 1


async def test_keys_in_redis_are_hashed_under_the_prefix_for_the_window(
    fleet: Fleet, make_gateway: GatewayFactory, redis_url: str
) -> None:
    await signed_agent(fleet, ROOM_1)
    a, _ = await replicas(fleet, make_gateway, redis_url)
    long_unicode_key = "commande-é-" + "ß" * 100
    status, _, _ = await post(a, SPEAK, {"message": "Hi"}, headers=keyed(long_unicode_key))
    client = Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in await client.keys("imaginex:*"))
        idem = [k for k in keys if k.startswith("imaginex:idem:")]
        ttl = await client.pttl(idem[0])
        stored = await client.hgetall(idem[0])
    finally:
        await client.aclose()
    assert status == 200
    assert len(idem) == 1  # the lease is gone once the answer is kept
    assert len(idem[0]) == len("imaginex:idem:{}") + 64  # a SHA-256, whatever the key
    assert "ß" not in idem[0]
    assert 590_000 < ttl <= 600_000
    assert json.loads(stored[b"body"])["data"]["request_id"] == long_unicode_key
    assert "imaginex:rate:default" in keys


async def test_a_lone_gateway_answers_concurrent_repeats_the_same_way(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # the in-memory state has the semantics of the shared one (tests/gateway/test_redis_state.py)
    live = await fleet.agent(ROOM_1)
    client = await make_gateway()
    answers = await asyncio.gather(
        *(post(client, SPEAK, {"message": "Just once."}, headers=keyed("lone-1")) for _ in range(5))
    )
    assert {status for status, _, _ in answers} == {200}
    assert all(body == answers[0][1] for _, body, _ in answers)
    assert [h.get("Idempotent-Replayed") for _, _, h in answers].count("true") == 4
    await wait_until(lambda: live.said() == ["Just once."])
    assert live.plugin.stats.received == 1
