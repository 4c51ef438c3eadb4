"""Receiver hardening (issue 9): ids reused for another message, refusals with no effect,
answers that always fit a packet, a bounded outbound queue, dedup and replay tables that keep
their promise for the whole window, queued speech is not idle, and every speech ends with an
event, on a real AgentSession with real rtc objects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession

from imaginex_context_plugin import (
    ACK_TOPIC,
    MAX_PAYLOAD_BYTES,
    RPC_METHOD,
    AckTransport,
    ContextBudget,
    ContextPlugin,
    sign_request,
)
from imaginex_context_plugin.receiver import MAX_OUTBOUND_ANSWERS
from tests.conftest import AGENT_CODE, BACKEND_IDENTITY, Harness, HarnessFactory
from tests.fakes import RecordingTTS, ScriptedLLM
from tests.helpers import wait_until

SECRET = "hardening-secret"
LONG = "This is a long announcement that keeps the agent talking for a while. " * 3
ID_REUSED = "This id was already used for a different message; send it with a new id."


async def answer(harness: Harness, message: dict[str, Any], via: str, *, nth: int = 1) -> Any:
    if via == "rpc":
        return await harness.backend.rpc(message)
    await harness.backend.send(message)
    return await harness.backend.ack_for(message["id"], nth=nth)


# ---------------------------------------------------------------------------------------------
# a signature that is not ASCII (item 3)


@pytest.mark.parametrize("via", ["data", "rpc"])
@pytest.mark.parametrize("signature", ["é" * 64, "０" * 64, "ﬀ" * 32])
async def test_a_non_ascii_signature_is_simply_unauthorized(
    make_harness: HarnessFactory, via: str, signature: str
) -> None:
    harness: Harness = await make_harness(secret=SECRET, allowed_identities=[])
    body = json.dumps({"type": "speak", "id": "sig", "message": "hi"})
    envelope = {"type": "signed", "body": body, "timestamp": 1, "signature": signature}
    raw = json.dumps(envelope)
    if via == "rpc":
        ack = await harness.backend.rpc(raw)
    else:
        await harness.backend.send(raw)
        [ack] = await harness.backend.settle(1)
    assert ack["error"] == "UNAUTHORIZED"
    assert ack["message"] == "The signature does not match the message."
    assert ack["id"] == "sig"
    assert harness.plugin.stats.errors.get("INTERNAL_ERROR", 0) == 0


# ---------------------------------------------------------------------------------------------
# the same id for a different message (item 5)


@pytest.mark.parametrize("via", ["data", "rpc"])
@pytest.mark.parametrize(
    "second",
    [
        {"type": "speak", "message": "Something else."},
        {"type": "speak", "message": "Said once.", "mode": "interrupt"},
        {"type": "add_context", "context": "Said once."},
        {"type": "remove_context", "key": "k"},
    ],
    ids=["other text", "other option", "other type", "remove"],
)
async def test_an_id_reused_for_another_message_is_refused(
    harness: Harness, via: str, second: dict[str, Any]
) -> None:
    first = await answer(harness, {"type": "speak", "id": "one", "message": "Said once."}, via)
    reused = await answer(harness, {**second, "id": "one"}, via, nth=2)
    assert first["success"] is True
    assert reused == {
        "type": "ack", "id": "one", "success": False, "error": "ID_REUSED", "message": ID_REUSED,
    }
    await harness.backend.event("speech_finished", "one")
    assert harness.tts.texts == ["Said once."]
    assert harness.context_messages() == []
    # the first message is still remembered as it was: its exact repeat is a duplicate
    again = await answer(harness, {"type": "speak", "id": "one", "message": "Said once."}, via,
                         nth=3)
    assert again == {**first, "duplicate": True}


async def test_the_same_request_signed_or_not_is_the_same_request(
    make_harness: HarnessFactory,
) -> None:
    # the fingerprint is the inner request's: an envelope's timestamp and signature are not
    # part of it, so a sender switching to signing is still recognised
    harness: Harness = await make_harness(secret=SECRET)
    message = {"type": "add_context", "id": "c", "context": "Once.", "key": "k"}
    first = await harness.backend.request(message)
    await harness.backend.send(sign_request(json.dumps(message), SECRET))
    second = await harness.backend.ack_for("c", nth=2)
    assert second == {**first, "duplicate": True}
    assert harness.context_messages() == ["Once."]


# ---------------------------------------------------------------------------------------------
# refused means no effect (item 7)


async def test_a_keyed_context_refused_before_start_is_never_applied(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(start_plugin=False)
    session: AgentSession[Any] = AgentSession(
        llm=ScriptedLLM(), tts=RecordingTTS(), vad=None, turn_handling={"turn_detection": None}
    )
    session.output.audio = None
    plugin = ContextPlugin(
        agent_code=AGENT_CODE, allowed_identities=[BACKEND_IDENTITY], ready_timeout=0.1
    )
    await plugin.start(session, harness.agent_room)
    try:
        refused = await harness.backend.request(
            {"type": "add_context", "id": "early", "key": "customer", "context": "Too early."}
        )
        assert refused["error"] == "NOT_READY"
        assert len(plugin.context_store) == 0

        await session.start(Agent(instructions="late start"))
        ok = await harness.backend.request({"type": "add_context", "id": "c", "context": "Now."})
        assert ok["success"] is True
        texts = [m.text_content for m in session.current_agent.chat_ctx.messages()]
        assert "Now." in texts
        assert "Too early." not in texts
    finally:
        await plugin.aclose()
        await session.aclose()


def stored(harness: Harness) -> list[tuple[str | None, str]]:
    return [(e.key, e.text) for e in harness.plugin.context_store.entries()]


@pytest.mark.parametrize(
    ("refused", "expected"),
    [
        (
            {"type": "add_context", "key": "a", "context": "replacement"},
            [("a", "first"), (None, "second")],
        ),
        ({"type": "remove_context", "key": "a"}, [("a", "first"), (None, "second")]),
        ({"type": "add_context", "context": "third, evicting"}, [("a", "first"), (None, "second")]),
    ],
    ids=["keyed replacement", "remove", "add that evicts"],
)
async def test_a_context_change_refused_as_not_ready_changes_nothing(
    make_harness: HarnessFactory, refused: dict[str, Any], expected: list[tuple[str | None, str]]
) -> None:
    harness: Harness = await make_harness(
        context_budget=ContextBudget(max_entries=2, max_chars=1_000)
    )
    await harness.backend.request(
        {"type": "add_context", "id": "1", "key": "a", "context": "first"}
    )
    await harness.backend.request({"type": "add_context", "id": "2", "context": "second"})
    assert stored(harness) == [("a", "first"), (None, "second")]

    await harness.session.aclose()
    ack = await harness.backend.request({**refused, "id": "refused"})
    assert ack["error"] == "NOT_READY"
    assert stored(harness) == expected
    assert harness.plugin.context_store.chars == len("first") + len("second")


# ---------------------------------------------------------------------------------------------
# every answer fits its transport (item 8)


@pytest.mark.parametrize("via", ["data", "rpc"])
async def test_the_largest_get_state_answer_fits_one_packet(
    make_harness: HarnessFactory, via: str
) -> None:
    harness: Harness = await make_harness(rate_limit=None, speed=1.0)
    budget = harness.plugin.context_store.budget
    # the longest keys and ids allowed, of the character that costs the most JSON bytes
    # (a control character is written as \u00XX: six bytes)
    for i in range(budget.max_entries):
        tag = f"{i:03d}"
        harness.plugin.ingest(
            json.dumps({
                "type": "add_context", "id": tag + "\x01" * 125, "key": tag + "\x01" * 125,
                "context": "x", "ttl_s": 3600,
            }),
            sender_identity=BACKEND_IDENTITY,
        )
    for i in range(300):  # speech queued behind a long first one: hundreds of pending ids
        # the first lasts minutes, so that none ends while a loaded machine works through these
        message = LONG * 20 if i == 0 else LONG
        harness.plugin.ingest(
            json.dumps({"type": "speak", "id": f"s{i}", "message": message}),
            sender_identity=BACKEND_IDENTITY,
        )
    await harness.backend.settle(budget.max_entries + 300)

    request = {"type": "get_state", "id": "state"}
    if via == "rpc":
        response = await harness.backend.room.local_participant.perform_rpc(
            destination_identity="agent", method=RPC_METHOD, payload=json.dumps(request)
        )
        raw = response.encode()
    else:
        await harness.backend.send(request)
        await harness.backend.ack_for("state")
        [packet] = [
            p for p in harness.network.published
            if p.topic == ACK_TOPIC and b'"State retrieved' in p.payload
        ]
        raw = packet.payload
    assert len(raw) <= MAX_PAYLOAD_BYTES
    state = json.loads(raw)["data"]["state"]
    assert state["context_entries_truncated"] is True
    assert state["context_entries_total"] == budget.max_entries
    kept = state["context_entries"]
    assert 0 < len(kept) < budget.max_entries
    # the first entries, in order
    assert [e["key"][:3] for e in kept] == [f"{i:03d}" for i in range(len(kept))]
    assert state["pending_speeches_truncated"] is True
    assert state["pending_speeches_total"] >= 299
    assert state["context_chars"] == budget.max_entries


async def test_a_small_get_state_answer_is_not_marked_truncated(harness: Harness) -> None:
    await harness.backend.request({"type": "add_context", "id": "c", "context": "x"})
    state = (await harness.backend.request({"type": "get_state", "id": "s"}))["data"]["state"]
    assert len(state["context_entries"]) == 1
    assert not any(name.endswith(("_truncated", "_total")) for name in state)


# ---------------------------------------------------------------------------------------------
# a bounded outbound queue (item 9)


class StalledTransport(AckTransport):
    """Publishes nothing until released, then keeps every answer."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, payload: bytes, destination_identity: str) -> None:
        await self.release.wait()
        self.sent.append((destination_identity, json.loads(payload)))


async def test_the_outbound_queue_is_bounded_and_drops_untrusted_refusals_first(
    make_harness: HarnessFactory,
) -> None:
    transport = StalledTransport()
    harness: Harness = await make_harness(
        rate_limit=None, text_only=True, ack_transport=transport
    )
    flood = MAX_OUTBOUND_ANSWERS + 100
    stranger = json.dumps({"type": "speak", "id": "x", "message": "let me in"})
    # all in one loop iteration: the publisher cannot take any of them meanwhile
    for _ in range(flood):
        harness.plugin.ingest(stranger, sender_identity="stranger")
    assert harness.plugin.stats.answers_dropped == flood - MAX_OUTBOUND_ANSWERS

    # refusals to a trusted sender push out refusals to the untrusted one
    for i in range(10):
        harness.plugin.ingest(
            b'{"id": "bad%d", "type": "shout"}' % i, sender_identity=BACKEND_IDENTITY
        )
    assert harness.plugin.stats.answers_dropped == flood - MAX_OUTBOUND_ANSWERS + 10
    # and a success ack is never dropped while a refusal could go instead
    harness.plugin.ingest(
        json.dumps({"type": "add_context", "id": "ok", "context": "fine"}),
        sender_identity=BACKEND_IDENTITY,
    )
    await wait_until(lambda: harness.plugin.stats.applied == 1)

    transport.release.set()
    await wait_until(lambda: any(m.get("id") == "ok" for _, m in transport.sent))
    await wait_until(lambda: harness.plugin.idle)
    to_backend = [m for who, m in transport.sent if who == BACKEND_IDENTITY]
    assert sorted(m["id"] for m in to_backend) == sorted([f"bad{i}" for i in range(10)] + ["ok"])
    to_stranger = [m for who, m in transport.sent if who == "stranger"]
    assert len(to_stranger) + harness.plugin.stats.answers_dropped == flood
    assert len(transport.sent) <= MAX_OUTBOUND_ANSWERS + 1


# ---------------------------------------------------------------------------------------------
# dedup and replay tables keep their promise for the whole window (item 10)


async def test_a_full_dedup_table_refuses_new_ids_instead_of_forgetting(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(rate_limit=None, dedup_max_entries=3)
    for i in range(3):
        await harness.backend.request({"type": "add_context", "id": f"c{i}", "context": f"n{i}"})
    refused = await harness.backend.request({"type": "add_context", "id": "c3", "context": "n3"})
    assert refused["error"] == "RATE_LIMITED"
    assert refused["retry_after"] >= 1.0
    # the oldest id is still remembered: a retry of it is not applied twice
    await harness.backend.send({"type": "add_context", "id": "c0", "context": "n0"})
    repeat = await harness.backend.ack_for("c0", nth=2)
    assert repeat["duplicate"] is True
    assert harness.context_messages() == ["n0", "n1", "n2"]
    # messages that leave no id behind still work
    state = await harness.backend.request({"type": "get_state", "id": "s"})
    assert state["success"] is True


async def test_a_full_signature_table_refuses_instead_of_forgetting(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(
        secret=SECRET, allowed_identities=[], rate_limit=None, dedup_max_entries=2
    )
    envelopes = [
        sign_request(json.dumps({"type": "add_context", "context": f"n{i}"}), SECRET)
        for i in range(3)
    ]
    for envelope in envelopes:
        await harness.backend.send(envelope)
    acks = await harness.backend.settle(3)
    assert [a["success"] for a in acks] == [True, True, False]
    assert acks[2]["error"] == "RATE_LIMITED"
    assert acks[2]["retry_after"] >= 1.0
    # the first signature was not forgotten to make room: elsewhere it is still a replay
    other = harness.backend_as("another-relay")
    await other.send(envelopes[0])
    [replay] = await other.settle(1)
    assert replay["error"] == "UNAUTHORIZED"
    assert harness.context_messages() == ["n0", "n1"]


# ---------------------------------------------------------------------------------------------
# queued speech is not idle (item 11)


async def test_if_idle_right_behind_a_queued_speak_is_busy(harness: Harness) -> None:
    # one loop iteration: the first speech is queued, not yet playing, when if_idle is applied
    harness.plugin.ingest(
        json.dumps({"type": "speak", "id": "a", "message": "First."}),
        sender_identity=BACKEND_IDENTITY,
    )
    harness.plugin.ingest(
        json.dumps({"type": "speak", "id": "b", "message": "Only if idle.", "mode": "if_idle"}),
        sender_identity=BACKEND_IDENTITY,
    )
    busy = await harness.backend.ack_for("b")
    assert busy["error"] == "BUSY"
    await harness.backend.event("speech_finished", "a")
    assert harness.tts.texts == ["First."]


# ---------------------------------------------------------------------------------------------
# every speech ends with an event (item 6)


async def test_aclose_while_speaking_still_sends_speech_finished(harness: Harness) -> None:
    await harness.backend.request({"type": "speak", "id": "a", "message": LONG})
    await harness.backend.request({"type": "speak", "id": "b", "message": "Queued behind."})
    await harness.backend.event("speech_started", "a")
    await harness.plugin.aclose()

    for request_id in ("a", "b"):
        finished = await harness.backend.event("speech_finished", request_id)
        assert finished["interrupted"] is True
        assert finished["reason"] == "shutdown"
        assert "failed" not in finished
    assert [m["id"] for m in harness.backend.received if m["type"] == "speech_finished"] == [
        "a", "b"
    ]


async def test_a_reply_refused_as_not_ready_leaves_its_context_out(
    make_harness: HarnessFactory,
) -> None:
    # the session drains (LiveKit refuses new replies: "AgentSession is closing") while the
    # agent's chat context can still be updated: the add_context is refused as a whole, and its
    # entry must not stay behind in the store or in the agent's context
    harness: Harness = await make_harness(ready_timeout=0.2, speed=0.5)
    await harness.backend.request({"type": "add_context", "id": "k", "context": "Kept."})
    await harness.backend.request({"type": "speak", "id": "long", "message": "a b c d e f g h"})
    await wait_until(lambda: harness.session.agent_state == "speaking")
    harness.session.shutdown(drain=True)
    await asyncio.sleep(0.05)  # the drain starts in a task of LiveKit's
    refused = await harness.backend.request(
        {"type": "add_context", "id": "r", "context": "Reply to this.", "trigger_reply": True}
    )
    assert refused.get("error") == "NOT_READY", refused
    assert stored(harness) == [(None, "Kept.")]
    assert "Reply to this." not in harness.context_messages()
