"""``ContextClient.subscribe`` / ``unsubscribe``: the agent's live events as typed models, against
the real receiver (a real AgentSession with ContextPlugin on the in-memory relay)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from livekit import rtc

from imaginex_context_plugin import ACK_TOPIC, CONTEXT_TOPIC, ContextClient, ErrorCode
from imaginex_context_plugin.protocol import (
    AgentStateEvent,
    AgentTranscriptEvent,
    CallEndedEvent,
    ConversationItemEvent,
    SessionEvent,
    SessionEventType,
)
from imaginex_context_plugin.receiver import subscriber_feed as subscriber_feed_module
from imaginex_context_plugin.sender import ContextError, SessionEvents, Via
from tests.conftest import AGENT_IDENTITY, BACKEND_IDENTITY, Harness, HarnessFactory
from tests.helpers import wait_until
from tests.receiver.test_subscribe import _StallingTransport

VIAS = pytest.mark.parametrize("via", ["rpc", "data"])
GRANTED: dict[str, Any] = {"permissions": {BACKEND_IDENTITY: {"*"}}}


async def granted(make_harness: HarnessFactory, **kwargs: Any) -> Harness:
    harness: Harness = await make_harness(**GRANTED, **kwargs)
    return harness


def sent_types(harness: Harness) -> list[str]:
    """The types of the requests the client published (``via="data"`` only)."""
    return [
        json.loads(p.payload)["type"] for p in harness.network.published if p.topic == CONTEXT_TOPIC
    ]


async def collect(events: SessionEvents) -> list[SessionEvent]:
    return [event async for event in events]


@VIAS
async def test_a_call_watched_from_speech_to_call_ended(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness = await granted(make_harness)
    watched: list[SessionEventType] = ["agent_transcript", "agent_state", "conversation_item"]
    async with (
        ContextClient(harness.backend.room, via=via) as client,
        client.subscribe(events=watched) as events,
    ):
        assert events.events == [*watched, "call_ended"]
        spoken = await client.speak("Your order shipped.", wait_for_playout=True)
        reader = asyncio.ensure_future(collect(events))
        await wait_until(lambda: harness.plugin.stats.events_sent >= 4, "the speech's events")
        await client.end_call(reason="Order complete")
        received = await asyncio.wait_for(reader, 5.0)

    kinds = [type(event) for event in received]
    assert AgentStateEvent in kinds
    assert ConversationItemEvent in kinds
    transcript = next(e for e in received if isinstance(e, AgentTranscriptEvent))
    assert (transcript.text, transcript.interrupted) == ("Your order shipped.", False)
    assert transcript.speech_id == spoken.ack.data.speech_id
    assert isinstance(received[-1], CallEndedEvent)
    assert received[-1].reason == "Order complete"
    assert events.call_ended == received[-1]
    assert events.dropped == 0
    # the call is over: leaving sends no unsubscribe
    if via == "data":
        assert sent_types(harness)[-1] == "end_call"


async def test_events_that_arrive_before_the_subscribe_ack_are_kept(
    make_harness: HarnessFactory,
) -> None:
    harness = await granted(make_harness)
    release = asyncio.Event()

    class SlowAnswer(rtc.RpcInterceptor):
        """Holds the subscribe ack back (the RPC response) until events went out as data."""

        async def intercept_outgoing(self, call: rtc.RpcCallInfo, next: Any) -> str:
            response: str = await next(call)
            if '"subscribe"' in call.payload:
                await release.wait()
            return response

    harness.backend.room.local_participant.add_rpc_interceptor(SlowAnswer())
    async with ContextClient(harness.backend.room) as client:
        opening = asyncio.ensure_future(client.subscribe(events=["agent_state"]).start())
        await wait_until(lambda: harness.plugin.subscribers != [], "the subscription")
        harness.session.say("Hello.")
        await wait_until(lambda: harness.plugin.stats.events_sent >= 2, "events sent")
        assert not opening.done()
        release.set()
        events = await opening
        first = await asyncio.wait_for(anext(events), 5.0)
        await events.aclose()

    assert isinstance(first, AgentStateEvent)
    assert first.new_state == "speaking"


async def test_leaving_early_unsubscribes(make_harness: HarnessFactory) -> None:
    harness = await granted(make_harness)
    async with ContextClient(harness.backend.room, via="data") as client:
        async with client.subscribe(events=["agent_state"]) as events:
            assert harness.plugin.subscribers == [BACKEND_IDENTITY]
            await client.speak("Hi.")
            first = await asyncio.wait_for(anext(events), 5.0)
        assert sent_types(harness) == ["subscribe", "speak", "unsubscribe"]
        await wait_until(lambda: harness.plugin.subscribers == [], "the unsubscribe")
        # the client may subscribe again once the first is closed
        again = await client.subscribe(events=["user_state"], interim=True, tool_arguments=True)
        await again.aclose()

    assert isinstance(first, AgentStateEvent)
    subscribe = json.loads(
        [p.payload for p in harness.network.published if p.topic == CONTEXT_TOPIC][-2]
    )
    assert subscribe["events"] == ["user_state"]
    assert (subscribe["interim"], subscribe["tool_arguments"]) == (True, True)


async def test_unsubscribe_ends_the_open_iteration(make_harness: HarnessFactory) -> None:
    harness = await granted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        events = await client.subscribe(events=["agent_state"])
        reader = asyncio.ensure_future(collect(events))
        ack = await client.unsubscribe(id="u-1")
        assert await asyncio.wait_for(reader, 5.0) == []
        again = await client.unsubscribe()
        await events.aclose()

    assert (ack.id, ack.data.context_type, ack.data.removed) == ("u-1", "unsubscribe", True)
    assert again.data.removed is False
    assert harness.plugin.subscribers == []


async def test_subscribe_without_the_permission_is_refused_on_entry(harness: Harness) -> None:
    async with ContextClient(harness.backend.room, retries=0) as client:
        with pytest.raises(ContextError) as refused:
            async with client.subscribe():
                pytest.fail("entered a refused subscription")
        # nothing stays open: the next try is refused by the agent again, not locally
        with pytest.raises(ContextError):
            await client.subscribe(events=["agent_state"])

    assert refused.value.code is ErrorCode.UNAUTHORIZED
    assert "'subscribe' permission" in refused.value.message


async def test_bad_options_fail_before_sending(harness: Harness) -> None:
    async with ContextClient(harness.backend.room) as client:
        with pytest.raises(ValueError, match="at least one event"):
            client.subscribe(events=[])
        with pytest.raises(ValueError, match="queue_size"):
            client.subscribe(queue_size=0)
        with pytest.raises(ContextError) as unknown:
            await client.subscribe(events=["everything"])  # type: ignore[list-item]

    assert unknown.value.code is ErrorCode.VALIDATION_ERROR
    assert harness.plugin.stats.received == 0


async def test_one_subscription_per_client(make_harness: HarnessFactory) -> None:
    harness = await granted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        async with client.subscribe(events=["agent_state"]) as events:
            with pytest.raises(RuntimeError, match="already has a subscription"):
                await client.subscribe(events=["user_state"])
            assert events.events == ["agent_state", "call_ended"]
        with pytest.raises(RuntimeError, match="not subscribed yet"):
            client.subscribe().ack  # noqa: B018


async def test_events_the_caller_does_not_read_in_time_are_dropped_and_counted(
    make_harness: HarnessFactory,
) -> None:
    harness = await granted(make_harness)
    async with ContextClient(harness.backend.room) as client:
        events = await client.subscribe(events=["agent_state"], queue_size=3)
        for state in ("speaking", "listening") * 5:
            harness.session._update_agent_state(state)
        await wait_until(lambda: harness.plugin.stats.events_sent == 10, "10 events sent")
        await asyncio.sleep(0.05)
        read = [await asyncio.wait_for(anext(events), 5.0) for _ in range(3)]
        await events.aclose()

    assert [e.dropped for e in read] == [7, None, None]
    assert events.dropped == 7
    # the newest three are kept
    assert [e.new_state for e in read if isinstance(e, AgentStateEvent)] == [
        "listening", "speaking", "listening"
    ]


async def test_what_the_agent_dropped_is_surfaced_too(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_feed_module, "SUBSCRIBER_QUEUE_SIZE", 2)
    transport = _StallingTransport(BACKEND_IDENTITY)
    harness = await granted(make_harness, ack_transport_for=transport.bind)
    async with ContextClient(harness.backend.room) as client:
        events = await client.subscribe(events=["agent_state"])
        for state in ("speaking", "listening") * 3:
            harness.session._update_agent_state(state)
            await asyncio.sleep(0.005)  # the first is taken (and stalls) before the rest come
        transport.release.set()
        read = [await asyncio.wait_for(anext(events), 5.0) for _ in range(3)]
        await events.aclose()

    # the first was on its way when the agent's sender stalled; 3 of the other 5 were lost
    assert [e.dropped for e in read] == [None, 3, None]
    assert events.dropped == 3


async def test_the_agent_leaving_without_ending_the_call_raises(
    make_harness: HarnessFactory,
) -> None:
    harness = await granted(make_harness)
    async with ContextClient(harness.backend.room, via="data") as client:
        events = await client.subscribe(events=["agent_state"])
        await harness.agent_room.disconnect()
        with pytest.raises(ContextError) as left:
            await asyncio.wait_for(anext(events), 5.0)
        with pytest.raises(StopAsyncIteration):
            await anext(events)
        await events.aclose()

    assert left.value.code is ErrorCode.AGENT_NOT_FOUND
    assert AGENT_IDENTITY in left.value.message
    assert sent_types(harness) == ["subscribe"]  # nobody to unsubscribe from


async def test_closing_the_client_fails_the_iteration(make_harness: HarnessFactory) -> None:
    harness = await granted(make_harness)
    client = ContextClient(harness.backend.room)
    events = await client.subscribe(events=["agent_state"])
    reader = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.01)
    await client.aclose()
    with pytest.raises(ContextError) as closed:
        await asyncio.wait_for(reader, 5.0)
    await events.aclose()

    assert closed.value.code is ErrorCode.LIVEKIT_UNAVAILABLE


async def test_only_the_agents_events_are_taken(make_harness: HarnessFactory) -> None:
    harness = await granted(make_harness)
    impostor = harness.backend_as("impostor")
    async with ContextClient(harness.backend.room) as client:
        events = await client.subscribe(events=["agent_state"])
        fake = CallEndedEvent(reason="fake", timestamp="2024-01-01T00:00:00.000Z")
        await impostor.room.local_participant.publish_data(
            fake.model_dump_json(), topic=ACK_TOPIC, destination_identities=[BACKEND_IDENTITY]
        )
        harness.session._update_agent_state("speaking")
        first = await asyncio.wait_for(anext(events), 5.0)
        await events.aclose()

    assert isinstance(first, AgentStateEvent)
