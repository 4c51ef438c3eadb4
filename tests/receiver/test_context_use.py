"""Context you can prove was used (protocol v1.3) on the real AgentSession: ``context_used`` read
from the chat context the agent's LLM was really handed (checked against what the scripted LLM
received, and what the fake realtime model held), ``context_dropped`` with each of its reasons,
exactly one of the two per entry, only to v1.3 senders, and to subscribers of ``context``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit import rtc
from livekit.agents import Agent, llm
from pydantic_core import PydanticSerializationError

from imaginex_context_plugin import ContextBudget, ContextPlugin
from imaginex_context_plugin.context import ENTRY_ID_PREFIX, ContextStore
from imaginex_context_plugin.protocol import ContextDroppedEvent, encode_message
from imaginex_context_plugin.receiver.context_use import _dropped, _dropped_json
from tests.conftest import (
    AGENT_CODE,
    AGENT_IDENTITY,
    BACKEND_IDENTITY,
    ROOM,
    Backend,
    Harness,
    HarnessFactory,
)
from tests.fakes import FakeRealtimeModel, RecordingAudioOutput, RelayNetwork, start_session
from tests.helpers import wait_until

V13 = {"protocol": "1.3"}
AGENT_KIND = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
WATCH: dict[str, Any] = {
    "permissions": {BACKEND_IDENTITY: {"*"}, "watcher": {"subscribe"}},
    "allowed_identities": [BACKEND_IDENTITY, "watcher"],
}


def context_events(backend: Backend) -> list[dict[str, Any]]:
    return [m for m in backend.received if m["type"] in ("context_used", "context_dropped")]


async def add(backend: Backend, rid: str, text: str, **fields: Any) -> dict[str, Any]:
    ack = await backend.request({"type": "add_context", "id": rid, "context": text, **fields})
    assert ack["success"] is True, ack
    return ack


async def reply(harness: Harness, rid: str) -> dict[str, Any]:
    """Have the agent answer through its LLM (a speak phrased by the model), to its end."""
    ack = await harness.backend.request(
        {"type": "speak", "id": rid, "instructions": "Greet the customer.", **V13}
    )
    await harness.backend.event("speech_finished", rid)
    return ack


def carried(call: llm.ChatContext) -> list[str]:
    """The plugin's entries (id, text) in one chat context the LLM received."""
    return [
        f"{m.id}={m.text_content}" for m in call.messages() if m.id.startswith(ENTRY_ID_PREFIX)
    ]


async def test_context_used_is_read_from_what_the_llm_received(harness: Harness) -> None:
    await add(harness.backend, "c1", "The customer is a premium member.", key="tier", **V13)
    await add(harness.backend, "c2", "Order #42 shipped today.", **V13)
    assert context_events(harness.backend) == []  # added, not used yet
    speak_ack = await reply(harness, "r1")

    await wait_until(lambda: len(context_events(harness.backend)) == 2, "two context_used")
    used = context_events(harness.backend)
    assert [(u["type"], u["request_id"], u["key"]) for u in used] == [
        ("context_used", "c1", "tier"), ("context_used", "c2", None),
    ]
    assert used[0]["entry_id"] == f"{ENTRY_ID_PREFIX}key_tier"
    call = used[0]["llm_call"]
    assert call == used[1]["llm_call"]
    assert call["speech_id"] == speak_ack["data"]["speech_id"]
    assert "realtime" not in call
    # the model really got both: the call it names is the one the scripted LLM recorded
    received = harness.llm.calls[call["index"] - 1]
    assert carried(received) == [
        f"{ENTRY_ID_PREFIX}key_tier=The customer is a premium member.",
        f"{used[1]['entry_id']}=Order #42 shipped today.",
    ]

    # used once: a second reply carrying them again reports nothing more
    await reply(harness, "r2")
    assert len(harness.llm.calls) == 2
    assert carried(harness.llm.calls[1]) == carried(received)
    await asyncio.sleep(0.05)
    assert len(context_events(harness.backend)) == 2


async def get_state_entries(backend: Backend, rid: str) -> dict[str | None, dict[str, Any]]:
    ack = await backend.request({"type": "get_state", "id": rid})
    assert ack["success"] is True, ack
    return {e["request_id"]: e for e in ack["data"]["state"]["context_entries"]}


async def test_get_state_says_which_request_used_an_entry(harness: Harness) -> None:
    # whoever missed the context_used (a page opened later, any sender) reads it from the state
    await add(harness.backend, "c1", "The customer is a premium member.", key="tier")
    await add(harness.backend, "c2", "Order #42 shipped today.")
    entries = await get_state_entries(harness.backend, "s1")
    assert "used" not in entries["c1"]
    assert "used" not in entries["c2"]
    speech_id = (await reply(harness, "r1"))["data"]["speech_id"]
    await wait_until(lambda: len(harness.llm.calls) == 1, "the model request")
    entries = await get_state_entries(harness.backend, "s2")
    assert entries["c1"]["used"] == {"index": 1, "speech_id": speech_id}
    assert entries["c2"]["used"] == entries["c1"]["used"]
    # the first request stays the one named; a replacement is a new entry, not used yet
    await reply(harness, "r2")
    await add(harness.backend, "c3", "The customer is a gold member.", key="tier")
    entries = await get_state_entries(harness.backend, "s3")
    assert entries["c2"]["used"]["index"] == 1
    assert "c1" not in entries
    assert "used" not in entries["c3"]


async def test_an_entry_added_after_the_call_is_not_taken_for_used(harness: Harness) -> None:
    harness.llm.replies = ["Hello!"]
    await reply(harness, "r1")  # a call with no context at all
    await add(harness.backend, "c1", "Late news.", **V13)
    await asyncio.sleep(0.05)
    assert context_events(harness.backend) == []
    assert carried(harness.llm.calls[0]) == []


async def test_a_replaced_entry_is_dropped_and_its_successor_used(harness: Harness) -> None:
    await add(harness.backend, "v1", "Balance: 10 EUR.", key="balance", **V13)
    await add(harness.backend, "v2", "Balance: 25 EUR.", key="balance", **V13)
    await wait_until(lambda: len(context_events(harness.backend)) == 1)
    [dropped] = context_events(harness.backend)
    assert (dropped["type"], dropped["request_id"], dropped["reason"]) == (
        "context_dropped", "v1", "replaced"
    )
    assert dropped["entry_id"] == f"{ENTRY_ID_PREFIX}key_balance"
    await reply(harness, "r1")
    await wait_until(lambda: len(context_events(harness.backend)) == 2)
    used = context_events(harness.backend)[1]
    assert (used["type"], used["request_id"]) == ("context_used", "v2")
    assert carried(harness.llm.calls[0]) == [f"{ENTRY_ID_PREFIX}key_balance=Balance: 25 EUR."]


async def test_a_used_entry_that_leaves_says_nothing_more(harness: Harness) -> None:
    await add(harness.backend, "c1", "Use me.", key="k", **V13)
    await reply(harness, "r1")
    await wait_until(lambda: len(context_events(harness.backend)) == 1)
    ack = await harness.backend.request({"type": "remove_context", "id": "rm", "key": "k"})
    assert ack["data"]["removed"] is True
    await add(harness.backend, "c2", "Replace the used one.", key="k2", **V13)
    await add(harness.backend, "c3", "And again.", key="k2", **V13)  # c2 never used: replaced
    await wait_until(lambda: len(context_events(harness.backend)) == 2)
    assert [(e["type"], e["request_id"]) for e in context_events(harness.backend)] == [
        ("context_used", "c1"), ("context_dropped", "c2"),
    ]


@pytest.mark.parametrize("reason", ["removed", "evicted", "expired", "session_closed"])
async def test_every_drop_reason(make_harness: HarnessFactory, reason: str) -> None:
    harness: Harness = await make_harness(context_budget=ContextBudget(max_entries=2))
    backend = harness.backend
    if reason == "removed":
        await add(backend, "c1", "Soon gone.", key="k", **V13)
        await backend.request({"type": "remove_context", "id": "rm", "key": "k"})
    elif reason == "evicted":
        for n in range(3):  # the budget holds two: the oldest goes
            await add(backend, f"c{n}", f"Note {n}.", **V13)
    elif reason == "expired":
        await add(backend, "c1", "Brief.", ttl_s=0.05, **V13)
    else:
        await add(backend, "c1", "Never used.", key="k", **V13)
        await harness.plugin.aclose()
    await wait_until(lambda: len(context_events(backend)) == 1, f"a drop ({reason})")
    [dropped] = context_events(backend)
    assert dropped["type"] == "context_dropped"
    assert dropped["reason"] == reason
    assert dropped["request_id"] in ("c0", "c1")
    assert isinstance(dropped["seq"], int)


async def test_a_next_turn_entry_reports_the_one_call_that_carried_it(harness: Harness) -> None:
    await add(harness.backend, "c1", "Only for the next answer.", scope="next_turn", **V13)
    await reply(harness, "r1")
    await wait_until(lambda: len(context_events(harness.backend)) == 1)
    [used] = context_events(harness.backend)
    assert used["type"] == "context_used"
    assert used["llm_call"]["index"] == 1
    # the turn ended: it left the context, and nothing more is said about it
    await wait_until(lambda: harness.context_messages() == [], "the next_turn entry removed")
    await reply(harness, "r2")
    assert carried(harness.llm.calls[1]) == []
    assert len(context_events(harness.backend)) == 1


async def test_a_next_turn_entry_whose_turn_had_no_model_call_expires(harness: Harness) -> None:
    await add(harness.backend, "c1", "For the next answer.", scope="next_turn", **V13)
    # a verbatim speak ends the agent's turn without any model request
    await harness.backend.request({"type": "speak", "id": "s1", "message": "One moment.", **V13})
    await wait_until(lambda: len(context_events(harness.backend)) == 1)
    [dropped] = context_events(harness.backend)
    assert (dropped["type"], dropped["reason"]) == ("context_dropped", "expired")
    assert harness.llm.calls == []


async def test_v1_2_senders_get_no_context_events_but_subscribers_do(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**WATCH)
    watcher = harness.backend_as("watcher")
    ack = await watcher.request({"type": "subscribe", "id": "w", "events": ["context"]})
    assert ack["success"] is True
    await add(harness.backend, "old", "From an older sender.", key="a")  # no protocol
    await add(harness.backend, "old2", "Replacing it.", key="a")
    await reply(harness, "r1")
    await wait_until(lambda: len(context_events(watcher)) == 2, "the watcher's context events")
    assert [(e["type"], e["request_id"]) for e in context_events(watcher)] == [
        ("context_dropped", "old"), ("context_used", "old2"),
    ]
    await asyncio.sleep(0.05)
    assert context_events(harness.backend) == []  # it would not know these events


async def test_after_a_handoff_the_new_agents_calls_are_read(harness: Harness) -> None:
    first = harness.session.current_agent
    await add(harness.backend, "c1", "Survives the handoff.", key="k", **V13)
    second = Agent(instructions="You are the billing agent.")
    harness.session.update_agent(second)
    await wait_until(lambda: harness.context_messages() == ["Survives the handoff."])
    assert "llm_node" not in first.__dict__  # given back when the plugin moved on
    await reply(harness, "r1")
    await wait_until(lambda: len(context_events(harness.backend)) == 1)
    assert context_events(harness.backend)[0]["type"] == "context_used"
    assert "llm_node" in second.__dict__
    await harness.plugin.aclose()
    assert "llm_node" not in second.__dict__  # and given back at the end


async def test_a_custom_llm_node_is_still_called_and_seen() -> None:
    seen: list[int] = []

    class Custom(Agent):
        async def llm_node(
            self, chat_ctx: llm.ChatContext, tools: Any, model_settings: Any
        ) -> Any:
            seen.append(len(chat_ctx.items))
            return "Handled by the custom node."

    network = RelayNetwork()
    session = await start_session(Custom(instructions="x"), audio_output=RecordingAudioOutput())
    room = network.create_room(ROOM, AGENT_IDENTITY, kind=AGENT_KIND)
    plugin = ContextPlugin(agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY])
    backend = Backend(network.create_room(ROOM, BACKEND_IDENTITY))
    await plugin.start(session, room)
    try:
        await add(backend, "c1", "For the custom node.", **V13)
        await backend.request({"type": "speak", "id": "r", "instructions": "Hi", **V13})
        await wait_until(lambda: len(context_events(backend)) == 1)
        assert seen
        assert context_events(backend)[0]["type"] == "context_used"
    finally:
        await plugin.aclose()
        await session.aclose()
        await network.aclose()


async def test_a_realtime_model_uses_what_its_session_held() -> None:
    network = RelayNetwork()
    model = FakeRealtimeModel(["Sure."])
    session = await start_session(
        llm_model=model, no_tts=True, audio_output=RecordingAudioOutput(speed=20)
    )
    room = network.create_room(ROOM, AGENT_IDENTITY, kind=AGENT_KIND)
    plugin = ContextPlugin(agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY])
    backend = Backend(network.create_room(ROOM, BACKEND_IDENTITY))
    await plugin.start(session, room)
    try:
        await add(backend, "c1", "The caller speaks French.", key="lang", **V13)
        assert context_events(backend) == []  # pushed to the realtime session, not used yet
        await backend.request({"type": "speak", "id": "r1", "instructions": "Greet", **V13})
        await wait_until(lambda: len(context_events(backend)) == 1, "context_used")
        [used] = context_events(backend)
        assert used["type"] == "context_used"
        assert used["llm_call"]["realtime"] is True
        assert used["request_id"] == "c1"
        # the response it names began while the session held the entry
        held = model.chat_ctx_seen[used["llm_call"]["index"] - 1]
        assert carried(held) == [f"{ENTRY_ID_PREFIX}key_lang=The caller speaks French."]

        # a response the model begins by itself (server-side turn detection) is seen too
        await add(backend, "c2", "VIP caller.", key="vip", **V13)
        rt_session = model.sessions[-1]
        generation = await rt_session._start_generation("Bonjour !")
        rt_session.emit(
            "generation_created",
            llm.GenerationCreatedEvent(
                message_stream=generation.message_stream,
                function_stream=generation.function_stream,
                user_initiated=False,
                response_id="server_resp_1",
            ),
        )
        await wait_until(lambda: len(context_events(backend)) == 2, "the model's own response")
        assert context_events(backend)[1]["request_id"] == "c2"
    finally:
        await plugin.aclose()
        await session.aclose()
        await network.aclose()
    assert "generate_reply" not in model.sessions[-1].__dict__  # given back


def test_departures_wait_for_the_commit_and_a_rollback_forgets_them() -> None:
    store = ContextStore(ContextBudget(max_entries=1))
    left: list[tuple[str | None, str]] = []
    store.on_departure = lambda departed: left.extend((e.request_id, r) for e, r in departed)
    store.add("a", request_id="a")
    store.begin()
    store.add("b", request_id="b")  # evicts a, provisionally
    assert left == []
    store.rollback()
    assert left == []
    assert [e.request_id for e in store.entries()] == ["a"]
    store.begin()
    store.add("c", request_id="c")
    store.commit()
    assert left == [("a", "evicted")]


# ---------------------------------------------------------------------------------------------
# the context_dropped JSON written directly (the burst's hot path) is the model's, byte for byte

DROP_REASONS = ("removed", "replaced", "expired", "evicted", "session_closed")
AWKWARD = [
    "",
    "plain",
    'say "hi"',
    "back\\slash \\u0041 not an escape",
    "Zoë, 東京, 🙂, \u00a0nbsp, \u2028 line sep, \u2029 para sep",
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "\b\f\n\r\t",
    "</script><!-- & ' -->",
]


def both_ways(args: tuple[Any, ...]) -> tuple[bytes, bytes]:
    direct = _dropped_json(*args)
    model = encode_message(_dropped(*args))
    assert model == ContextDroppedEvent(
        seq=args[0], t_ms=args[1], timestamp=args[2], entry_id=args[3], key=args[4],
        request_id=args[5], reason=args[6],
    ).model_dump_json().encode()
    return direct, model


@pytest.mark.parametrize("text", AWKWARD)
@pytest.mark.parametrize("reason", DROP_REASONS)
def test_dropped_json_is_the_models_serialization(text: str, reason: str) -> None:
    for key, request_id in ((text, text), (None, None), (text, None), (None, text)):
        args = (7, 1234, "2026-12-07T06:32:33.123Z", f"{ENTRY_ID_PREFIX}{text}", key,
                request_id, reason)
        direct, model = both_ways(args)
        assert direct == model


@given(
    seq=st.integers(min_value=0, max_value=2**53),
    t_ms=st.integers(min_value=0, max_value=2**53),
    entry_id=st.text(st.characters(exclude_categories=["Cs"])),
    key=st.none() | st.text(st.characters(exclude_categories=["Cs"])),
    request_id=st.none() | st.text(st.characters(exclude_categories=["Cs"])),
    reason=st.sampled_from(DROP_REASONS),
)
def test_dropped_json_matches_the_model_for_any_text(
    seq: int, t_ms: int, entry_id: str, key: str | None, request_id: str | None, reason: str
) -> None:
    args = (seq, t_ms, "2026-12-07T06:32:33.123Z", entry_id, key, request_id, reason)
    direct, model = both_ways(args)
    assert direct == model


def test_a_lone_surrogate_fails_both_ways_alike() -> None:
    # a lone surrogate cannot be UTF-8: neither writer sends it (the wire's parser never
    # yields one, but if it did, the direct writer must not send what the model would not)
    args = (1, 1, "2026-12-07T06:32:33.123Z", "ctx_x", "\ud800", None, "evicted")
    with pytest.raises(UnicodeEncodeError):
        _dropped_json(*args)
    with pytest.raises(PydanticSerializationError, match="surrogates not allowed"):
        encode_message(_dropped(*args))


async def test_a_v1_3_sender_without_subscription_gets_the_pinned_bytes(
    make_harness: HarnessFactory,
) -> None:
    """End to end on the burst path (no subscriber: written directly): what the sender gets
    parses to the model's dump, awkward key and request id included."""
    harness = await make_harness(context_budget=ContextBudget(max_entries=1))
    awkward = 'k "é" \\ \n \u0001 🙂'
    await add(harness.backend, f"first {awkward}", "one", key=awkward, **V13)
    await add(harness.backend, "second", "two", **V13)
    await wait_until(lambda: len(context_events(harness.backend)) == 1, "a context_dropped")
    (dropped,) = context_events(harness.backend)
    assert ContextDroppedEvent.model_validate(dropped).model_dump() == dropped
    assert (dropped["key"], dropped["request_id"], dropped["reason"]) == (
        awkward, f"first {awkward}", "evicted",
    )
