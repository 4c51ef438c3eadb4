"""The gateway's room pool: a cap with least-recently-used eviction of idle connections, a bound
on joins under way, and one deadline per fan-out (joining included), with exact per-room results.

The gateway is the real ``LiveKitBackend`` and app over the in-memory fleet
(``tests/gateway_fixtures.py``); slow joins are ``GatedRoom``s (a ``LinkedRoom`` whose connect
waits at a gate).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc

from imaginex_context_plugin.errors import BackendError, ErrorCode
from imaginex_context_plugin.gateway import LiveKitBackend
from imaginex_context_plugin.gateway.delivery import RoomPool
from tests.fakes import LinkedRoom, RelayNetwork
from tests.fakes.gated import GatedRoom, SendFailingRoom
from tests.gateway_fixtures import CODE, GATEWAY, Client, Fleet, GatewayFactory, post
from tests.helpers import wait_until


async def speak(client: Client, text: str, room_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"message": text}
    if room_id is not None:
        body["room_id"] = room_id
    status, payload, _ = await post(client, f"/v1/agent/{CODE}/speak", body)
    assert status == 200, payload
    data = payload["data"]
    assert isinstance(data, dict)
    return data


def connected_gateway_rooms(fleet: Fleet, names: list[str]) -> list[str]:
    return [n for n in names if any(r.isconnected() for r in fleet.gateway_rooms(n))]


async def test_at_the_cap_the_least_recently_used_idle_connection_is_closed(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    names = ["room-a", "room-b", "room-c"]
    agents = {name: await fleet.agent(name) for name in names}
    backend = fleet.backend(max_rooms=2)
    client = await make_gateway(backend=backend)

    await speak(client, "one", "room-a")
    await speak(client, "two", "room-b")
    await speak(client, "three", "room-a")  # room-a is now the most recently used
    assert backend.pooled_rooms == ["room-b", "room-a"]

    await speak(client, "four", "room-c")
    assert backend.pooled_rooms == ["room-a", "room-c"]
    assert backend.pool.evictions == 1
    await wait_until(lambda: connected_gateway_rooms(fleet, names) == ["room-a", "room-c"])

    # an evicted room is simply joined again (evicting the next least recently used)
    await speak(client, "five", "room-b")
    assert backend.pooled_rooms == ["room-c", "room-b"]
    await wait_until(lambda: agents["room-a"].said() == ["one", "three"])
    await wait_until(lambda: agents["room-b"].said() == ["two", "five"])
    await wait_until(lambda: agents["room-c"].said() == ["four"])


async def test_a_fan_out_to_more_rooms_than_the_cap_reaches_each_room_once(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    names = [f"room-{n}" for n in range(6)]
    agents = [await fleet.agent(name) for name in names]
    held_at_open: list[int] = []
    backend: LiveKitBackend

    def room_factory(name: str) -> LinkedRoom:
        # the new room is not in the pool yet: what is there is what is held besides it
        held_at_open.append(len(backend.pooled_rooms))
        return fleet.network.create_room(name, GATEWAY, connected=False)

    backend = fleet.backend(max_rooms=2, room_factory=room_factory)
    client = await make_gateway(backend=backend, delivery_timeout=10.0)

    data = await speak(client, "to everyone")
    assert data["delivered_to_rooms"] == 6
    assert max(held_at_open) <= 1
    assert len(held_at_open) == 6
    assert len(backend.pooled_rooms) <= 2
    for live in agents:
        await wait_until(lambda live=live: live.said() == ["to everyone"])  # type: ignore[misc]


async def test_with_every_connection_in_use_a_new_room_waits_and_times_out_exactly(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent("busy-room")
    waiting = await fleet.agent("waiting-room")
    backend = fleet.backend(max_rooms=1)
    client = await make_gateway(backend=backend, delivery_timeout=0.3)
    _, release = await backend.hold_room("busy-room")  # as an events stream holds it

    status, body, _ = await post(
        client, f"/v1/agent/{CODE}/speak", {"message": "not now", "room_id": "waiting-room"}
    )
    assert status == 504
    assert body["data"]["delivered_to_rooms"] == 0
    assert body["data"]["rooms"][0]["error"] == "TIMEOUT"
    assert backend.pooled_rooms == ["busy-room"]  # held, never evicted

    release()
    release()  # idempotent: the room is not released twice
    data = await speak(client, "now", "waiting-room")
    assert data["delivered_to_rooms"] == 1
    assert backend.pooled_rooms == ["waiting-room"]
    await wait_until(lambda: waiting.said() == ["now"])


async def test_a_waiting_room_gets_the_place_of_the_first_one_released(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent("busy-room")
    waiting = await fleet.agent("waiting-room")
    backend = fleet.backend(max_rooms=1)
    client = await make_gateway(backend=backend, delivery_timeout=5.0)
    _, release = await backend.hold_room("busy-room")

    pending = asyncio.create_task(speak(client, "after the wait", "waiting-room"))
    await asyncio.sleep(0.1)
    assert not pending.done()
    release()
    data = await pending
    assert data["delivered_to_rooms"] == 1
    await wait_until(lambda: waiting.said() == ["after the wait"])


async def test_joins_under_way_are_bounded() -> None:
    network = RelayNetwork()
    gate = asyncio.Event()
    under_way = most_at_once = 0

    async def join(room: rtc.Room, name: str) -> None:
        nonlocal under_way, most_at_once
        under_way += 1
        most_at_once = max(most_at_once, under_way)
        try:
            await room.connect("", "")
        finally:
            under_way -= 1

    pool = RoomPool(
        join, lambda name: GatedRoom(network, name, GATEWAY, gate), max_concurrent_joins=2
    )
    try:
        acquiring = [asyncio.create_task(pool.acquire(f"r{n}")) for n in range(5)]
        await asyncio.sleep(0.05)
        # five rooms in the pool, two joins under way, three queued behind the bound
        assert len(pool.names) == 5
        assert under_way == 2
        gate.set()
        acquired = await asyncio.gather(*acquiring)
        assert all(pooled.room.isconnected() for pooled in acquired)
        for pooled in acquired:
            pool.release(pooled)
    finally:
        await pool.aclose()
        await network.aclose()
    assert most_at_once == 2


async def test_one_deadline_for_the_whole_fan_out_with_joining_included(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    fast = await fleet.agent("fast-room")
    slow = await fleet.agent("slow-room")
    gate = asyncio.Event()

    def room_factory(name: str) -> LinkedRoom:
        if name == "slow-room":
            return GatedRoom(fleet.network, name, GATEWAY, gate)
        return fleet.network.create_room(name, GATEWAY, connected=False)

    backend = fleet.backend(room_factory=room_factory)
    client = await make_gateway(backend=backend, delivery_timeout=0.5)

    started = time.monotonic()
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "first"})
    elapsed = time.monotonic() - started
    assert status == 200
    rooms = {r["room"]: r for r in body["data"]["rooms"]}
    assert body["data"]["delivered_to_rooms"] == 1
    assert rooms["fast-room"]["delivered"] is True
    assert rooms["slow-room"]["delivered"] is False
    assert rooms["slow-room"]["error"] == "TIMEOUT"
    # the deadline is the request's, not one per step: well under two timeouts
    assert elapsed < 1.0

    # the join goes on in the background and serves the next request
    gate.set()
    await wait_until(lambda: bool(connected_gateway_rooms(fleet, ["slow-room"])))
    data = await speak(client, "second")
    assert data["delivered_to_rooms"] == 2
    await wait_until(lambda: fast.said() == ["first", "second"])
    await wait_until(lambda: slow.said() == ["second"])  # never "first": it was not sent


@pytest.mark.parametrize("limits", [{"max_rooms": 0}, {"max_concurrent_joins": 0}])
def test_the_pool_refuses_a_zero_limit(limits: dict[str, int]) -> None:
    async def join(room: rtc.Room, name: str) -> None:
        raise AssertionError("never joins")

    with pytest.raises(ValueError, match="at least 1"):
        RoomPool(join, lambda name: rtc.Room(), **limits)


async def test_a_request_the_sdk_could_not_send_is_sent_again_within_the_deadline(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent("room-a")
    rooms: list[SendFailingRoom] = []

    def room_factory(name: str) -> LinkedRoom:
        rooms.append(SendFailingRoom(fleet.network, name, GATEWAY, failures=2))
        return rooms[-1]

    client = await make_gateway(
        backend=fleet.backend(room_factory=room_factory), delivery_timeout=5.0
    )
    data = await speak(client, "third time lucky")
    assert data["delivered_to_rooms"] == 1
    assert rooms[0].sends_failed == 2
    await wait_until(lambda: live.said() == ["third time lucky"])


async def test_a_request_that_cannot_be_sent_before_the_deadline_reports_it(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    live = await fleet.agent("room-a")
    client = await make_gateway(
        backend=fleet.backend(
            room_factory=lambda name: SendFailingRoom(fleet.network, name, GATEWAY, failures=99)
        ),
        delivery_timeout=0.5,
    )
    status, body, _ = await post(client, f"/v1/agent/{CODE}/speak", {"message": "never"})
    assert status == 503
    assert body["data"]["rooms"][0]["error"] == "LIVEKIT_UNAVAILABLE"
    assert live.said() == []


async def test_a_room_waiting_for_a_place_when_the_pool_closes_is_not_joined(
    fleet: Fleet,
) -> None:
    await fleet.agent("busy-room")
    await fleet.agent("waiting-room")
    backend = fleet.backend(max_rooms=1)
    _, release = await backend.hold_room("busy-room")
    waiting = asyncio.create_task(backend.pool.acquire("waiting-room"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await backend.aclose()
    with pytest.raises(BackendError) as refused:
        await waiting
    assert refused.value.code is ErrorCode.LIVEKIT_UNAVAILABLE
    assert backend.pooled_rooms == []
    assert fleet.gateway_rooms("waiting-room") == []
    release()
