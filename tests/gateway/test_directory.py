"""The agent directory: the same rules in memory and in a real Redis, and what keeps it true
(webhook events, the re-check of an agent that joined without its code, reconciliation)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.protocol.models import ParticipantInfo, Room
from livekit.protocol.webhook import WebhookEvent

from devtools.livekit_server import LOOPBACK, free_tcp_port
from devtools.redis_server import RedisServer, redis_from_env
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin._livekit.rooms import ParticipantSummary
from imaginex_context_plugin.errors import StateUnavailable
from imaginex_context_plugin.gateway.delivery import LiveKitBackend
from imaginex_context_plugin.gateway.directory import (
    AgentDirectory,
    DirectorySync,
    MemoryAgentDirectory,
    Presence,
    RedisAgentDirectory,
)
from imaginex_context_plugin.protocol import SENDER_ATTRIBUTE
from tests.fakes.rooms import ListedRooms
from tests.gateway_fixtures import SETTINGS
from tests.helpers import wait_until

ENTRY_TTL = 300.0
AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


class Clock:
    """Wall-clock seconds the test moves by hand; each reading also moves it by 1 ms, as
    real time passes between two writes."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "redis"])
async def directory(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[AgentDirectory]:
    if request.param == "memory":
        yield MemoryAgentDirectory(entry_ttl=ENTRY_TTL, clock=clock)
        return
    from redis.asyncio import Redis

    # a sync fixture (an async one cannot be asked for here); each test its own key prefix
    server: RedisServer | None = request.getfixturevalue("redis_server")
    url = server.url if server is not None else redis_from_env()
    assert url is not None
    made = RedisAgentDirectory(
        Redis.from_url(url),
        key_prefix=f"test-{uuid.uuid4().hex}:",
        entry_ttl=ENTRY_TTL,
        owns_client=True,
        clock=clock,
    )
    yield made
    await made.aclose()


def agent(room: str, identity: str, code: str = "CODE1", sid: str = "") -> Presence:
    return Presence(room, identity, code, sid or f"PA_{room}_{identity}")


async def test_a_joined_agent_is_found_by_its_code_and_forgotten_when_it_leaves(
    directory: AgentDirectory,
) -> None:
    assert await directory.joined(agent("r1", "a1"))
    assert await directory.joined(agent("r2", "a2"))
    assert await directory.joined(agent("r3", "b", code="OTHER"))
    assert await directory.rooms_of("CODE1") == {"r1": ["a1"], "r2": ["a2"]}
    await directory.left("r1", "a1", sid="PA_r1_a1")
    assert await directory.rooms_of("CODE1") == {"r2": ["a2"]}
    assert await directory.rooms_of("OTHER") == {"r3": ["b"]}
    assert await directory.rooms_of("NOBODY") == {}


async def test_two_agents_with_one_code_in_one_room_are_both_listed(
    directory: AgentDirectory,
) -> None:
    await directory.joined(agent("r1", "a1"))
    await directory.joined(agent("r1", "a2"))
    assert await directory.rooms_of("CODE1") == {"r1": ["a1", "a2"]}


async def test_leaving_only_removes_the_same_connection(directory: AgentDirectory) -> None:
    await directory.joined(agent("r1", "a1", sid="PA_new"))
    # the old connection's participant_left, delivered after the identity rejoined
    await directory.left("r1", "a1", sid="PA_old")
    assert await directory.rooms_of("CODE1") == {"r1": ["a1"]}


async def test_a_late_join_of_a_connection_that_left_is_ignored(
    directory: AgentDirectory,
) -> None:
    await directory.left("r1", "a1", sid="PA_1")
    assert not await directory.joined(agent("r1", "a1", sid="PA_1"))
    assert await directory.rooms_of("CODE1") == {}


async def test_a_finished_room_forgets_every_agent_in_it(directory: AgentDirectory) -> None:
    await directory.joined(agent("r1", "a1"))
    await directory.joined(agent("r1", "b1", code="OTHER"))
    await directory.joined(agent("r2", "a2"))
    await directory.room_finished("r1")
    assert await directory.rooms_of("CODE1") == {"r2": ["a2"]}
    assert await directory.rooms_of("OTHER") == {}
    # and a late join of one of its connections stays out
    assert not await directory.joined(agent("r1", "a1"))


async def test_an_agent_that_changes_its_code_moves(directory: AgentDirectory) -> None:
    await directory.joined(agent("r1", "a1", code="OLD", sid="PA_1"))
    await directory.joined(agent("r1", "a1", code="NEW", sid="PA_1"))
    assert await directory.rooms_of("OLD") == {}
    assert await directory.rooms_of("NEW") == {"r1": ["a1"]}


async def test_reconciliation_replaces_what_it_listed_and_drops_rooms_it_did_not(
    directory: AgentDirectory, clock: Clock
) -> None:
    await directory.joined(agent("r1", "stale"))  # its participant_left was missed
    await directory.joined(agent("gone-room", "a9"))  # its room_finished was missed
    clock.now += 5
    since = clock.now
    await directory.reconcile(
        {"r1": [agent("r1", "a1")], "r2": [agent("r2", "a2")], "empty": []}, since=since
    )
    assert await directory.rooms_of("CODE1") == {"r1": ["a1"], "r2": ["a2"]}


async def test_reconciliation_keeps_what_a_webhook_wrote_after_the_listing_began(
    directory: AgentDirectory, clock: Clock
) -> None:
    await directory.joined(agent("r1", "a1", sid="PA_old"))
    since = clock.now + 1
    clock.now += 2
    # while RoomService was being listed: a1 rejoined, a2 joined, a3 left
    await directory.joined(agent("r1", "a1", sid="PA_new"))
    await directory.joined(agent("r1", "a2"))
    await directory.left("r1", "a3", sid="PA_a3")
    await directory.reconcile(
        {"r1": [agent("r1", "a1", sid="PA_old"), agent("r1", "a3", sid="PA_a3")]}, since=since
    )
    assert await directory.rooms_of("CODE1") == {"r1": ["a1", "a2"]}
    await directory.left("r1", "a1", sid="PA_new")  # the newer connection was the one kept
    assert await directory.rooms_of("CODE1") == {"r1": ["a2"]}


async def test_reconciling_some_rooms_leaves_the_others_alone(
    directory: AgentDirectory, clock: Clock
) -> None:
    await directory.joined(agent("r1", "a1"))
    await directory.joined(agent("r2", "a2"))
    clock.now += 1
    await directory.reconcile_rooms({"r2": []}, since=clock.now)
    assert await directory.rooms_of("CODE1") == {"r1": ["a1"]}


async def test_an_entry_nothing_confirms_for_its_ttl_is_not_returned(
    directory: AgentDirectory, clock: Clock
) -> None:
    await directory.joined(agent("r1", "a1"))
    await directory.joined(agent("r2", "a2"))
    clock.now += ENTRY_TTL / 2
    # a reconciliation confirms a2 (it rewrites what it lists) but not a1 (listed in r1: no)
    await directory.reconcile_rooms({"r2": [agent("r2", "a2")]}, since=clock.now - 1)
    clock.now += ENTRY_TTL / 2 + 1
    assert await directory.rooms_of("CODE1") == {"r2": ["a2"]}


async def test_memory_always_claims_the_reconciliation(clock: Clock) -> None:
    directory = MemoryAgentDirectory(clock=clock)
    assert await directory.claim_reconciliation(ttl=30)
    assert await directory.claim_reconciliation(ttl=30)


# -- Redis only


async def test_replicas_share_one_redis_directory_and_one_claim_per_interval(
    redis_url: str,
) -> None:
    from redis.asyncio import Redis

    one = RedisAgentDirectory(Redis.from_url(url := redis_url), owns_client=True)
    two = RedisAgentDirectory(Redis.from_url(url, decode_responses=True), owns_client=True)
    try:
        await one.joined(agent("r1", "a1"))
        assert await two.rooms_of("CODE1") == {"r1": ["a1"]}
        assert [await one.claim_reconciliation(ttl=0.3), await two.claim_reconciliation(ttl=0.3)]
        assert not await two.claim_reconciliation(ttl=0.3)
        await asyncio.sleep(0.4)
        assert await two.claim_reconciliation(ttl=0.3)
    finally:
        await one.aclose()
        await two.aclose()


async def test_a_redis_lookup_is_one_command(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    directory = RedisAgentDirectory(client)
    try:
        for n in range(50):
            await directory.joined(agent(f"room-{n}", "agent"))

        async def processed() -> int:
            stats = await client.info("stats")
            return int(stats["total_commands_processed"])

        baseline = -(await processed()) + await processed()  # INFO counts itself
        before = await processed()
        assert len(await directory.rooms_of("CODE1")) == 50
        assert await processed() - before - baseline == 1
    finally:
        await client.aclose()


async def test_redis_keys_expire_with_the_entry_ttl(redis_url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    directory = RedisAgentDirectory(client, key_prefix="t:", entry_ttl=120, tombstone_ttl=60)
    try:
        await directory.joined(agent("r1", "a1"))
        await directory.left("r1", "a2", sid="PA_gone")
        keys = sorted(k.decode() for k in await client.keys("t:*"))
        assert keys == ["t:dir:code:CODE1", "t:dir:gone:PA_gone", "t:dir:room:r1", "t:dir:rooms"]
        for key in keys:
            ttl = await client.ttl(key)
            assert 0 < ttl <= (60 if "gone" in key else 120), key
    finally:
        await client.aclose()


async def test_an_unreachable_redis_is_state_unavailable() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(f"redis://{LOOPBACK}:{free_tcp_port()}/0")
    directory = RedisAgentDirectory(client)
    try:
        with pytest.raises(StateUnavailable):
            await directory.rooms_of("CODE1")
        with pytest.raises(StateUnavailable):
            await directory.joined(agent("r1", "a1"))
    finally:
        await client.aclose()


async def test_with_redis_down_a_lookup_is_state_unavailable_and_answered_so(
    redis_server: RedisServer | None, redis_url: str
) -> None:
    if redis_server is None:
        pytest.skip("needs the Redis server the tests started (it is stopped here)")
    from redis.asyncio import Redis

    from imaginex_context_plugin.gateway.http.fanout import FanOut
    from imaginex_context_plugin.gateway.http.messages import MessageWriter
    from imaginex_context_plugin.gateway.refusals import Refusal

    listed = ListedRooms(rooms={"r1": [summary("a1", "CODE1")]})
    client = Redis.from_url(redis_url)
    directory = RedisAgentDirectory(client, key_prefix=f"down-{uuid.uuid4().hex[:8]}:")
    backend = LiveKitBackend(SETTINGS, directory=listed, agent_directory=directory)
    fanout = FanOut(
        backend, writer=MessageWriter(signing_secret=None, sender=None), delivery_timeout=1.0
    )
    try:
        [target] = await backend.find_agents("CODE1", room_id=None)  # filled once
        assert target.identity == "a1"
        redis_server.stop()
        try:
            with pytest.raises(StateUnavailable):
                await backend.find_agents("CODE1", room_id=None)
            # the one answer to Redis down, as for the state's own stores
            with pytest.raises(Refusal) as refused:
                await fanout.targets("CODE1", None)
            assert (refused.value.status, refused.value.code) == (503, "STATE_UNAVAILABLE")
        finally:
            redis_server.start_again()
    finally:
        await backend.aclose()
        await client.aclose()


# -- what keeps it true


def event(name: str, room: str, identity: str = "", **participant: Any) -> WebhookEvent:
    info = ParticipantInfo(identity=identity, **participant) if identity else None
    return WebhookEvent(event=name, room=Room(name=room, sid=f"RM_{room}"), participant=info)


def summary(identity: str, code: str | None, sid: str = "") -> ParticipantSummary:
    attributes = {AGENT_CODE_ATTRIBUTE: code} if code else {}
    return ParticipantSummary(identity, attributes, AGENT, sid or f"PA_{identity}")


@pytest.fixture
async def listed() -> ListedRooms:
    return ListedRooms()


@pytest.fixture
async def sync(
    directory: AgentDirectory, listed: ListedRooms, clock: Clock
) -> AsyncIterator[DirectorySync]:
    made = DirectorySync(
        directory, listed, exclude=("gateway",), recheck_delays=(0.01, 0.05, 0.2), clock=clock
    )
    yield made
    await made.aclose()


async def test_webhook_events_write_the_directory(
    sync: DirectorySync, directory: AgentDirectory, listed: ListedRooms
) -> None:
    code = {AGENT_CODE_ATTRIBUTE: "CODE1"}
    await sync.on_event(event("participant_joined", "r1", "a1", sid="PA_1", attributes=code))
    await sync.on_event(event("participant_joined", "r2", "a2", sid="PA_2", attributes=code))
    assert await directory.rooms_of("CODE1") == {"r1": ["a1"], "r2": ["a2"]}
    await sync.on_event(event("participant_left", "r1", "a1", sid="PA_1", attributes=code))
    await sync.on_event(event("room_finished", "r2"))
    assert await directory.rooms_of("CODE1") == {}
    assert listed.listed_participants == []
    assert listed.listed_rooms == 0


async def test_an_aborted_connection_is_a_leave(
    sync: DirectorySync, directory: AgentDirectory
) -> None:
    code = {AGENT_CODE_ATTRIBUTE: "CODE1"}
    await sync.on_event(event("participant_joined", "r1", "a1", sid="PA_1", attributes=code))
    await sync.on_event(event("participant_connection_aborted", "r1", "a1", sid="PA_1"))
    assert await directory.rooms_of("CODE1") == {}


async def test_senders_and_the_gateway_itself_are_never_recorded(
    sync: DirectorySync, directory: AgentDirectory, listed: ListedRooms
) -> None:
    sender = {AGENT_CODE_ATTRIBUTE: "CODE1", SENDER_ATTRIBUTE: "cli"}
    await sync.on_event(
        event("participant_joined", "r1", "cli", attributes=sender, kind=ParticipantInfo.AGENT)
    )
    await sync.on_event(
        event("participant_joined", "r1", "gateway", attributes={AGENT_CODE_ATTRIBUTE: "CODE1"})
    )
    await asyncio.sleep(0.1)
    assert await directory.rooms_of("CODE1") == {}
    assert listed.listed_participants == []


async def test_an_agent_that_joined_without_its_code_is_rechecked_in_its_room_only(
    sync: DirectorySync, directory: AgentDirectory, listed: ListedRooms
) -> None:
    listed.rooms = {"r1": [summary("a1", None)], "r2": [summary("x", "CODE1")]}
    joined = event("participant_joined", "r1", "a1", sid="PA_a1", kind=ParticipantInfo.AGENT)
    await sync.on_event(joined)
    await wait_until(lambda: len(listed.listed_participants) >= 1, "the first re-check")
    listed.rooms["r1"] = [summary("a1", "CODE1")]  # the plugin published its code
    await wait_until(lambda: len(listed.listed_participants) >= 2, "the second re-check")
    assert await directory.rooms_of("CODE1") == {"r1": ["a1"]}
    await asyncio.sleep(0.3)
    assert listed.listed_participants == ["r1", "r1"]  # it stopped once the code showed
    assert listed.listed_rooms == 0


async def test_a_human_joining_costs_no_recheck(
    sync: DirectorySync, listed: ListedRooms
) -> None:
    await sync.on_event(event("participant_joined", "r1", "user", sid="PA_u"))
    await asyncio.sleep(0.1)
    assert listed.listed_participants == []


async def test_leaving_cancels_a_pending_recheck(
    sync: DirectorySync, directory: AgentDirectory, listed: ListedRooms
) -> None:
    listed.rooms = {"r1": [summary("a1", "CODE1", sid="PA_a1")]}
    await sync.on_event(
        event("participant_joined", "r1", "a1", sid="PA_a1", kind=ParticipantInfo.AGENT)
    )
    await sync.on_event(event("participant_left", "r1", "a1", sid="PA_a1"))
    await asyncio.sleep(0.1)
    assert listed.listed_participants == []
    assert await directory.rooms_of("CODE1") == {}


async def test_periodic_reconciliation_heals_missed_webhooks(
    directory: AgentDirectory, listed: ListedRooms, clock: Clock
) -> None:
    listed.rooms = {"r1": [summary("a1", "CODE1")], "r2": [summary("user", None)]}
    sync = DirectorySync(directory, listed, reconcile_interval=0.2, clock=clock)
    try:
        await sync.ready()
        assert await directory.rooms_of("CODE1") == {"r1": ["a1"]}
        assert sync.reconciliations == 1
        del listed.rooms["r1"]  # the room finished and its webhook was lost
        listed.rooms["r3"] = [summary("a3", "CODE1")]  # an agent joined, its webhook lost too

        async def healed() -> bool:
            return await directory.rooms_of("CODE1") == {"r3": ["a3"]}

        await wait_until(healed, "the next reconciliation", timeout=5)
        assert sync.reconciliations >= 2
    finally:
        await sync.aclose()


async def test_only_one_replica_reconciles_per_interval(redis_url: str) -> None:
    from redis.asyncio import Redis

    listed = ListedRooms({"r1": [summary("a1", "CODE1")]})
    replicas = [
        DirectorySync(
            RedisAgentDirectory(Redis.from_url(redis_url), owns_client=True),
            listed,
            reconcile_interval=60,
        )
        for _ in range(3)
    ]
    try:
        done = await asyncio.gather(*(r.reconcile_now() for r in replicas))
        assert sorted(done) == [False, False, True]
        assert listed.listed_rooms == 1
    finally:
        for replica in replicas:
            await replica.aclose()
            await replica.directory.aclose()


async def test_the_reconcile_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="reconcile_interval"):
        DirectorySync(MemoryAgentDirectory(), ListedRooms(), reconcile_interval=0)


# -- the backend


async def test_the_backend_finds_agents_without_a_room_service_call_per_request(
    directory: AgentDirectory, listed: ListedRooms
) -> None:
    listed.rooms = {f"room-{n}": [summary(f"agent-{n}", "CODE1")] for n in range(20)}
    listed.rooms["busy"] = [summary("x", "CODE1"), summary("y", "CODE1")]
    backend = LiveKitBackend(SETTINGS, directory=listed, agent_directory=directory)
    try:
        targets = await backend.find_agents("CODE1", room_id=None)
        after_first_sync = backend.room_service_calls.total
        assert after_first_sync == 1 + 21  # the first reconciliation: every room, once
        for _ in range(10):
            targets = await backend.find_agents("CODE1", room_id=None)
            assert await backend.find_agents("CODE1", room_id="room-3")
        assert backend.room_service_calls.total == after_first_sync
        assert len(targets) == 21
        busy = next(t for t in targets if t.room == "busy")
        assert busy.identity == ""
        assert busy.refusal is not None
        assert "x, y" in busy.refusal
        assert {t.identity for t in targets if t.room == "room-3"} == {"agent-3"}
    finally:
        await backend.aclose()


async def test_a_room_the_directory_does_not_show_is_looked_up_directly_once(
    directory: AgentDirectory, listed: ListedRooms
) -> None:
    backend = LiveKitBackend(SETTINGS, directory=listed, agent_directory=directory)
    try:
        assert await backend.find_agents("CODE1", room_id=None) == []
        before = backend.room_service_calls.total
        listed.rooms["new"] = [summary("a1", "CODE1")]  # its webhook has not come yet
        [target] = await backend.find_agents("CODE1", room_id="new")
        assert (target.room, target.identity) == ("new", "a1")
        assert backend.room_service_calls.total == before + 1
        # what the direct lookup saw is in the directory now
        assert await directory.rooms_of("CODE1") == {"new": ["a1"]}
        assert await backend.find_agents("CODE1", room_id="absent") == []
        assert backend.room_service_calls.total == before + 2
    finally:
        await backend.aclose()


# -- the agent code at join time


async def test_accept_with_agent_code_joins_with_the_code_attribute() -> None:
    from livekit.agents import JobRequest
    from livekit.agents.job import JobAcceptArguments
    from livekit.protocol import agent as agent_proto

    from imaginex_context_plugin import accept_with_agent_code

    accepted: list[JobAcceptArguments] = []

    async def on_accept(arguments: JobAcceptArguments) -> None:
        accepted.append(arguments)

    async def on_reject(terminate: bool) -> None:
        raise AssertionError("the job was rejected")

    request = JobRequest(
        job=agent_proto.Job(id="AJ_1", room=Room(name="r1")),
        on_reject=on_reject,
        on_accept=on_accept,
    )
    await accept_with_agent_code("CODE1", identity="support-agent")(request)
    [arguments] = accepted
    assert arguments.attributes == {AGENT_CODE_ATTRIBUTE: "CODE1"}
    assert arguments.identity == "support-agent"
    with pytest.raises(ValueError, match="agent_code"):
        accept_with_agent_code("")


async def test_until_the_directory_was_filled_once_a_lookup_is_unavailable_not_empty(
    listed: ListedRooms,
) -> None:
    from imaginex_context_plugin.errors import BackendError, ErrorCode
    from imaginex_context_plugin.gateway.directory.sync import FIRST_SYNC_RETRY_S

    listed.rooms = {"r1": [summary("a1", "CODE1")]}
    listed.down = True
    backend = LiveKitBackend(SETTINGS, directory=listed, agent_directory=MemoryAgentDirectory())
    try:
        with pytest.raises(BackendError) as refused:
            await backend.find_agents("CODE1", room_id=None)
        assert refused.value.code == ErrorCode.LIVEKIT_UNAVAILABLE
        # the next lookups within the retry delay do not hammer RoomService
        with pytest.raises(BackendError):
            await backend.find_agents("CODE1", room_id=None)
        assert listed.listed_rooms == 1
        listed.down = False
        await asyncio.sleep(FIRST_SYNC_RETRY_S + 0.1)
        [target] = await backend.find_agents("CODE1", room_id=None)
        assert target.identity == "a1"
        assert listed.listed_rooms == 2
    finally:
        await backend.aclose()
