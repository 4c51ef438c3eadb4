"""A resumable event stream (protocol v1.3) on the real AgentSession: ``seq`` / ``t_ms`` on every
event, the snapshot in the ``subscribe`` ack, ``subscribe{since_seq}`` replays from the bounded
buffer (its edges, ``events_lost`` and a fresh ``snapshot`` beyond them), and a subscriber that
left the room resuming with nothing missing and nothing twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imaginex_context_plugin import protocol
from imaginex_context_plugin.receiver.event_log import DEFAULT_EVENT_BUFFER, EventLog
from tests.conftest import ROOM, Backend, Harness, HarnessFactory
from tests.helpers import wait_until

ALL_EVENTS = list(protocol.SESSION_EVENT_TYPES)
WATCHERS = ("watcher", "control", "other")
GRANTED: dict[str, Any] = {
    "permissions": {"backend": {"*"}, **{w: {"subscribe"} for w in WATCHERS}},
    "allowed_identities": ["backend", *WATCHERS],
}
V13 = {"protocol": "1.3"}


def events(backend: Backend) -> list[dict[str, Any]]:
    return [m for m in backend.received if m["type"] != "ack"]


async def subscribe(backend: Backend, rid: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("events", ALL_EVENTS)
    ack = await backend.request({"type": "subscribe", "id": rid, **fields})
    assert ack["success"] is True, ack
    return ack


async def speak(harness: Harness, rid: str, text: str = "Your order shipped.") -> None:
    ack = await harness.backend.request({"type": "speak", "id": rid, "message": text, **V13})
    assert ack["success"] is True
    await harness.backend.event("speech_finished", rid)


def seqs(received: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in received]


async def test_every_event_is_numbered_and_timed_across_kinds(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**GRANTED)
    watcher = harness.backend_as("watcher")
    await subscribe(watcher, "w")
    await speak(harness, "s1")
    await harness.backend.request({"type": "add_context", "id": "c1", "context": "VIP", **V13})
    await speak(harness, "s2")

    mine = events(harness.backend)
    assert [m["type"] for m in mine] == [
        "speech_started", "speech_finished", "speech_started", "speech_finished",
    ]
    # one counter for all the agent's events, whoever they went to: one seq is one event
    await wait_until(lambda: len(events(watcher)) >= 8, "the watcher's events")
    everything = mine + events(watcher)
    by_seq: dict[int, dict[str, Any]] = {}
    for message in everything:
        assert by_seq.setdefault(message["seq"], message) == message, "a seq given twice"
    for received in (mine, events(watcher)):
        assert len(set(seqs(received))) == len(received)
        assert seqs(received) == sorted(seqs(received)), "out of order for one receiver"
        times = [m["t_ms"] for m in received]
        assert times == sorted(times)
        assert all(isinstance(t, int) and t >= 0 for t in times)
    # the watcher gets every speech's events (kind "speech"), the same seq as the sender's
    speech_seqs = {m["seq"] for m in mine}
    assert speech_seqs <= set(seqs(events(watcher)))
    # the context entry was used by the reply-less turns? no: nothing called the model, it is
    # still live, so no context event has gone out yet
    assert not [m for m in everything if m["type"].startswith("context_")]


async def test_subscribe_ack_carries_a_snapshot_the_live_stream_continues_after(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**GRANTED)
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "context": "Loyal customer", "key": "tier"}
    )
    await speak(harness, "s1", "Hello there.")
    last_seq = max(seqs(events(harness.backend)))
    watcher = harness.backend_as("watcher")
    ack = await subscribe(watcher, "w")

    snapshot = ack["data"]["snapshot"]
    assert set(snapshot) == {"seq", "state", "items", "pending_speeches"}
    assert snapshot["seq"] >= last_seq  # the agent's own events (states, transcripts) count too
    assert snapshot["state"]["context_entries"][0]["key"] == "tier"
    assert snapshot["state"]["agent_state"] in ("listening", "idle", "speaking", "thinking")
    assert [(i["role"], i["text"]) for i in snapshot["items"]] == [("assistant", "Hello there.")]
    assert snapshot["pending_speeches"] == []
    assert "replayed" not in ack["data"]  # no since_seq: nothing replayed

    await speak(harness, "s2")
    await wait_until(lambda: any(m["type"] == "speech_finished" for m in events(watcher)))
    assert min(seqs(events(watcher))) == snapshot["seq"] + 1 or min(
        seqs(events(watcher))
    ) > snapshot["seq"]


async def test_snapshot_lists_pending_speeches_with_their_requests(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(speed=1.0, **GRANTED)
    for rid in ("p1", "p2"):
        await harness.backend.request(
            {"type": "speak", "id": rid, "message": "A rather long announcement to play."}
        )
    watcher = harness.backend_as("watcher")
    ack = await subscribe(watcher, "w", events=["speech"])
    pending = ack["data"]["snapshot"]["pending_speeches"]
    assert [p["request_id"] for p in pending] == ["p1", "p2"]
    assert [p["speech_id"] for p in pending] == [
        (await harness.backend.ack_for(rid))["data"]["speech_id"] for rid in ("p1", "p2")
    ]
    assert sum(p["playing"] for p in pending) <= 1
    assert pending[1]["playing"] is False
    await harness.backend.request({"type": "interrupt", "id": "i", "force": True})


async def test_a_subscriber_that_left_resumes_with_no_gap_and_no_duplicate(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**GRANTED)
    control = harness.backend_as("control")  # stays subscribed throughout: the truth
    await subscribe(control, "c")
    watcher = harness.backend_as("watcher")
    await subscribe(watcher, "w1")
    await speak(harness, "s1")
    await wait_until(
        lambda: any(m["type"] == "speech_finished" for m in events(watcher)), "s1 at the watcher"
    )
    seen = events(watcher)
    last = seen[-1]["seq"]

    # the watcher's connection drops mid-call; the call goes on
    await watcher.room.disconnect()
    await speak(harness, "s2", "While you were away.")
    await harness.backend.request(
        {"type": "add_context", "id": "c1", "context": "note", "key": "k", **V13}
    )
    await harness.backend.request(
        {"type": "add_context", "id": "c2", "context": "note 2", "key": "k", **V13}
    )
    await wait_until(
        lambda: any(m["type"] == "context_dropped" for m in events(control)), "the replacement"
    )

    # back, as a new connection under the same identity: replay, then live
    back = Backend(harness.network.create_room(ROOM, "watcher"))
    ack = await subscribe(back, "w2", since_seq=last)
    replayed = ack["data"]["replayed"]
    await wait_until(lambda: len(events(back)) >= replayed, "the replay")
    await speak(harness, "s3", "Live again.")
    await wait_until(
        lambda: any(m["type"] == "speech_finished" and m["id"] == "s3" for m in events(back)),
        "live events after the replay",
    )
    resumed = events(back)
    assert all(m.get("replay") is True for m in resumed[:replayed])
    assert not any(m.get("replay") for m in resumed[replayed:])
    # exactly what the always-subscribed control got after `last`, in the same order
    await wait_until(
        lambda: any(m["type"] == "speech_finished" and m["id"] == "s3" for m in events(control))
    )

    def comparable(received: list[dict[str, Any]]) -> list[tuple[int, str]]:
        return [(m["seq"], m["type"]) for m in received if m["seq"] > last]

    assert comparable(resumed) == comparable(events(control))
    assert len(set(seqs(seen + resumed))) == len(seen + resumed), "an event came twice"
    assert "context_dropped" in [m["type"] for m in resumed]
    assert [m["seq"] for m in seen + resumed] == sorted(m["seq"] for m in seen + resumed)


async def test_a_resubscribe_with_since_seq_replays_in_order_without_duplicates(
    make_harness: HarnessFactory,
) -> None:
    harness: Harness = await make_harness(**GRANTED)
    watcher = harness.backend_as("watcher")
    await subscribe(watcher, "w1", events=["speech"])
    await speak(harness, "s1")
    await speak(harness, "s2")
    await wait_until(lambda: len(events(watcher)) == 4, "two speeches' events")
    first = events(watcher)
    # the same subscription asks again from the first event: its queue is replaced by the replay
    ack = await subscribe(watcher, "w2", events=["speech"], since_seq=first[0]["seq"])
    assert ack["data"]["replayed"] == 3
    await wait_until(lambda: len(events(watcher)) == 7, "the replay")
    again = events(watcher)[4:]
    assert [(m["seq"], m["type"]) for m in again] == [
        (m["seq"], m["type"]) for m in first[1:]
    ]
    assert all(m["replay"] is True for m in again)


@pytest.mark.parametrize("buffer", [3, 8])
async def test_the_buffer_edges(make_harness: HarnessFactory, buffer: int) -> None:
    harness: Harness = await make_harness(event_buffer=buffer, **GRANTED)
    log: EventLog = harness.plugin._events  # the buffer's own view, to name its edges
    control = harness.backend_as("control")
    await subscribe(control, "c", events=["speech"])
    for n in range(3):
        await speak(harness, f"s{n}")
    await wait_until(lambda: len(events(control)) == 6)
    oldest = log._buffer[0].seq
    assert len(log._buffer) == buffer
    assert log.since(0) is None  # the first events are gone

    # just inside: since_seq = the seq right before the oldest kept: all of it, no loss
    watcher = harness.backend_as("watcher")
    ack = await subscribe(watcher, "w1", events=ALL_EVENTS, since_seq=oldest - 1)
    replayed = ack["data"]["replayed"]
    await wait_until(lambda: len(events(watcher)) >= replayed)
    assert events(watcher)[0]["type"] != "events_lost"
    assert events(watcher)[0]["seq"] == oldest

    # just outside: one further back: events_lost, then a fresh snapshot, nothing else replayed
    other = harness.backend_as("other")
    lost_ack = await subscribe(other, "c2", events=["speech"], since_seq=oldest - 2)
    assert lost_ack["data"]["replayed"] == 2
    await wait_until(lambda: [m["type"] for m in events(other)][:2] == ["events_lost", "snapshot"])
    lost, fresh = events(other)[:2]
    assert (lost["from_seq"], lost["to_seq"]) == (oldest - 1, lost_ack["data"]["snapshot"]["seq"])
    assert fresh["seq"] == lost["seq"] + 1
    assert set(fresh) >= {"state", "items", "pending_speeches", "t_ms", "timestamp"}
    assert lost["replay"] is True
    assert fresh["replay"] is True
    # the stream goes live after them
    await speak(harness, "live")
    await wait_until(lambda: any(m.get("id") == "live" for m in events(other)))
    assert seqs(events(other)) == sorted(seqs(events(other)))


async def test_no_buffer_and_a_seq_from_another_session(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(event_buffer=0, **GRANTED)
    await speak(harness, "s1")
    watcher = harness.backend_as("watcher")
    await subscribe(watcher, "w1", since_seq=1)
    await wait_until(lambda: len(events(watcher)) >= 2)
    assert events(watcher)[0]["type"] == "events_lost"

    harness2: Harness = await make_harness(**GRANTED)
    watcher2 = harness2.backend_as("watcher")
    ack = await subscribe(watcher2, "w1", since_seq=10_000)  # a seq this session never gave
    await wait_until(lambda: len(events(watcher2)) >= 2)
    lost = events(watcher2)[0]
    assert lost["type"] == "events_lost"
    assert (lost["from_seq"], lost["to_seq"]) == (1, ack["data"]["snapshot"]["seq"])


async def test_a_subscribed_sender_gets_its_speech_events_in_seq_order(
    make_harness: HarnessFactory,
) -> None:
    # its own speech events and its session events share one queue: nothing overtakes
    harness: Harness = await make_harness(**GRANTED)
    await subscribe(harness.backend, "sub", events=["agent_state", "conversation_item"])
    for n in range(3):
        await speak(harness, f"s{n}")
    received = events(harness.backend)
    assert {"speech_started", "agent_state", "conversation_item"} <= {m["type"] for m in received}
    assert seqs(received) == sorted(seqs(received))


async def test_interim_transcripts_are_numbered_but_not_kept() -> None:
    log = EventLog(4)
    assert log.capacity == 4
    assert DEFAULT_EVENT_BUFFER == 1_024
    for _ in range(6):
        log.stamp()
    assert log.since(0) == []  # nothing kept, nothing lost: interims only
    with pytest.raises(ValueError, match="event_buffer must be between 0 and"):
        EventLog(-1)


async def test_t_ms_counts_from_the_sessions_start() -> None:
    now = [5_000_000_000]
    log = EventLog(clock=lambda: now[0])
    log.start_clock(started_ago_s=2.5)
    now[0] += 1_000_000
    assert log.stamp() == (1, 2_501)
    await asyncio.sleep(0)
