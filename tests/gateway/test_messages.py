"""The message each room is sent: the writer splices the room into one dump of the request and
signs it from one HMAC state (``security.SplicedBodies``); the text must be byte for byte what
dumping the request with its room and ``sign_request`` write."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from imaginex_context_plugin.protocol import validate_request
from imaginex_context_plugin.security import SplicedBodies, sign_request

SECRET = "writer-test-secret"

# room names are what LiveKit gave us: any text (no lone surrogates: protobuf strings are UTF-8)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
rooms = texts
senders = st.none() | st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=20
).filter(lambda s: s.strip() == s and s.strip() != "")
OUTGOING = [
    Outgoing("speak", {"type": "speak", "message": "Your order é \"1234\" has\nshipped"}),
    Outgoing("add-context", {"type": "add_context", "context": "VIP\u2028customer \\ 😀"}),
    Outgoing("interrupt", {"type": "interrupt"}),
]


def reference(
    outgoing: Outgoing, request_id: str, room: str, secret: str | None, sender: str | None, ts: int
) -> str:
    """The room's message written the plain way: dump the request with its room, then sign."""
    obj: dict[str, Any] = {**outgoing.fields, "id": request_id, "agent_code": "CODE"}
    request = validate_request(obj).model_copy(update={"room_id": room})
    body = request.model_dump_json(exclude_defaults=True)
    return sign_request(body, secret, timestamp=ts, sender=sender) if secret else body


def timestamp_of(message: str) -> int:
    stamp: int = json.loads(message)["timestamp"]
    return stamp


def make_writer(secret: str | None, sender: str | None) -> MessageWriter:
    try:
        return MessageWriter(signing_secret=secret, sender=sender)
    except ValueError:  # a sender the agents would refuse: not what is tested here
        assume(False)
        raise


@given(
    room=rooms,
    others=st.lists(rooms, max_size=3),
    which=st.sampled_from(range(len(OUTGOING))),
    secret=st.sampled_from([None, SECRET]),
    sender=senders,
)
def test_each_rooms_message_is_what_dumping_and_signing_it_write(
    room: str, others: list[str], which: int, secret: str | None, sender: str | None
) -> None:
    writer = make_writer(secret, sender)
    outgoing = OUTGOING[which]
    for each in [room, *others, room]:  # one request, many rooms, one of them again
        written = writer.write(outgoing, "req-1", "CODE", each)
        ts = timestamp_of(written) if secret else 0
        assert written == reference(outgoing, "req-1", each, secret, sender, ts)


def test_a_new_request_is_written_afresh() -> None:
    writer = make_writer(SECRET, "gateway")
    first = writer.write(OUTGOING[0], "req-1", "CODE", "room-a")
    second = writer.write(OUTGOING[1], "req-2", "CODE", "room-a")
    assert json.loads(json.loads(first)["body"])["type"] == "speak"
    assert json.loads(json.loads(second)["body"]) == {
        "type": "add_context",
        "id": "req-2",
        "agent_code": "CODE",
        "room_id": "room-a",
        "context": "VIP\u2028customer \\ 😀",
    }


def test_a_field_holding_the_room_placeholder_is_written_room_by_room() -> None:
    """The placeholder is random per writer; were a field to hold it, splicing could put the
    room in the wrong place, so each room's copy is dumped whole instead."""
    writer = make_writer(SECRET, "gateway")
    text = f"say {writer._placeholder} please"  # the one way to hit it: read the writer's own
    outgoing = Outgoing("add-context", {"type": "add_context", "context": text})
    written = writer.write(outgoing, "req-1", "CODE", "room-a")
    body = json.loads(json.loads(written)["body"])
    assert body["context"] == text
    assert body["room_id"] == "room-a"
    ts = timestamp_of(written)
    assert written == reference(outgoing, "req-1", "room-a", SECRET, "gateway", ts)


@given(
    head=texts,
    tail=texts,
    parts=st.lists(texts, min_size=1, max_size=4),
    sender=senders,
    start=st.integers(min_value=0, max_value=2**33),
)
def test_spliced_envelopes_are_sign_requests_across_seconds(
    head: str, tail: str, parts: list[str], sender: str | None, start: int
) -> None:
    bodies = SplicedBodies(head, tail, secret=SECRET, sender=sender)
    unsigned = SplicedBodies(head, tail, secret=None, sender=sender)
    for offset, part in enumerate(parts):
        ts = start + offset // 2  # the same second twice, then the next
        body = head + json.dumps(part, ensure_ascii=False) + tail
        assert bodies.body(part) == body
        assert unsigned.message(part) == body
        assert bodies.message(part, timestamp=ts) == sign_request(
            body, SECRET, timestamp=ts, sender=sender
        )
