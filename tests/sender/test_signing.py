"""Signed messages end to end: the client signs, the real receiver verifies.

The receiver trusts nobody by identity here (``allowed_identities=[]``), so only a valid
signature gets a message applied. Raw envelopes (tampered, stale, replayed) go through the
backend's room as a sender in another language would send them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from imaginex_context_plugin import (
    ContextClient,
    ContextError,
    ContextPlugin,
    ErrorCode,
    sign_request,
)
from imaginex_context_plugin.security import RateLimit, SignatureProblem, SignatureVerifier
from imaginex_context_plugin.sender import Via
from tests.conftest import AGENT_CODE, Harness, HarnessFactory
from tests.protocol_fixtures import signature
from tests.sender.test_client import DropFirstAck, LoseFirstResponse, packets_for

SECRET = "shared-secret-between-backend-and-agent"
VIAS = pytest.mark.parametrize("via", ["rpc", "data"])


@pytest.fixture
async def signed(make_harness: HarnessFactory) -> Harness:
    """An agent that trusts signatures only."""
    harness: Harness = await make_harness(secret=SECRET, allowed_identities=[])
    return harness


def speak(request_id: str, text: str = "Signed and sealed.") -> str:
    return json.dumps({"type": "speak", "id": request_id, "message": text})


async def refusal(harness: Harness, envelope: str | dict[str, Any], via: Via) -> dict[str, Any]:
    """Send a raw envelope and return the agent's answer."""
    payload = envelope if isinstance(envelope, str) else json.dumps(envelope)
    if via == "rpc":
        return await harness.backend.rpc(payload)
    await harness.backend.send(payload)
    return await harness.backend.wait_for(lambda m: m["type"] == "ack")


def test_the_scheme_is_hmac_sha256_over_timestamp_dot_body() -> None:
    # docs/protocol.md's test vector, pinned in fixtures/protocol.json (TypeScript reads it too)
    vector = signature("v1")
    assert (vector["secret"], vector["timestamp"], vector["body"]) == (
        "s3cret", 1_700_000_000, '{"type":"speak","message":"hi"}'
    )
    body = vector["body"]
    envelope = json.loads(sign_request(body, "s3cret", timestamp=1_700_000_000))
    expected = hmac.new(b"s3cret", b"1700000000." + body.encode(), hashlib.sha256).hexdigest()
    assert envelope == {
        "type": "signed", "body": body, "timestamp": 1_700_000_000, "signature": expected
    }
    # pinned, so a sender in another language can check its implementation against it
    assert expected == vector["signature"]
    assert sign_request(body, "s3cret", timestamp=1_700_000_000) == vector["envelope"]


@VIAS
async def test_a_validly_signed_message_is_trusted_whoever_relays_it(
    signed: Harness, via: Via
) -> None:
    async with ContextClient(signed.backend.room, via=via, secret=SECRET) as client:
        ack = await client.speak("Signed and sealed.", id="sig-1")
    assert ack.id == "sig-1"
    assert ack.data.agent_code == AGENT_CODE
    envelope = json.loads(signed.network.published[0].payload) if via == "data" else None
    if envelope is not None:
        assert set(envelope) == {"type", "body", "timestamp", "signature"}
        assert json.loads(envelope["body"])["id"] == "sig-1"


@VIAS
async def test_an_unsigned_message_from_an_untrusted_identity_is_refused(
    signed: Harness, via: Via
) -> None:
    async with ContextClient(signed.backend.room, via=via) as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("No signature.")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert signed.tts.texts == []


@VIAS
async def test_a_wrong_secret_is_refused(signed: Harness, via: Via) -> None:
    async with ContextClient(signed.backend.room, via=via, secret="not-the-secret") as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Forged.", id="forged")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.message == "The signature does not match the message."
    assert caught.value.request_id == "forged"
    assert signed.tts.texts == []


@VIAS
async def test_a_tampered_body_is_refused(signed: Harness, via: Via) -> None:
    envelope = json.loads(sign_request(speak("t-1", "Pay 10 dollars."), SECRET))
    envelope["body"] = envelope["body"].replace("10", "10000")
    answer = await refusal(signed, envelope, via)
    assert answer["success"] is False
    assert answer["error"] == "UNAUTHORIZED"
    assert answer["message"] == "The signature does not match the message."
    assert signed.tts.texts == []


@VIAS
@pytest.mark.parametrize("skew", [-301, 301])
async def test_a_timestamp_outside_five_minutes_is_refused(
    signed: Harness, via: Via, skew: int
) -> None:
    envelope = sign_request(speak("stale"), SECRET, timestamp=int(time.time()) + skew)
    answer = await refusal(signed, envelope, via)
    assert answer["error"] == "UNAUTHORIZED"
    assert answer["message"] == "The signature timestamp is outside the allowed 5 minute window."
    assert answer["id"] == "stale"


@VIAS
async def test_the_same_envelope_again_from_its_relay_is_answered_as_a_duplicate(
    signed: Harness, via: Via
) -> None:
    # a relay retrying within the same second re-signs a byte-identical envelope (timestamps
    # are whole seconds): it is the same request, so it gets the first ack again
    envelope = sign_request(speak("r-1"), SECRET)
    first = await refusal(signed, envelope, via)
    if via == "rpc":
        second = await signed.backend.rpc(envelope)
    else:
        await signed.backend.send(envelope)
        second = await signed.backend.ack_for("r-1", nth=2)
    assert first["success"] is True
    assert second == {**first, "duplicate": True}
    await signed.backend.event("speech_finished", "r-1")
    assert signed.tts.texts == ["Signed and sealed."]
    assert signed.plugin.stats.applied == 1


@VIAS
async def test_a_replayed_envelope_via_another_relay_is_refused(signed: Harness, via: Via) -> None:
    envelope = sign_request(speak("r-2"), SECRET)
    first = await refusal(signed, envelope, via)
    other = signed.backend_as("another-relay")
    if via == "rpc":
        second = await other.rpc(envelope)
    else:
        await other.send(envelope)
        second = await other.ack_for("r-2")
    assert first["success"] is True
    assert second["success"] is False
    assert second["error"] == "UNAUTHORIZED"
    assert second["message"] == "This signed message was already received (replay)."
    assert signed.plugin.stats.applied == 1


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"type": "speak", "message": "No id to recognise a retry by."}),
        json.dumps({"type": "get_state", "id": "g-1"}),
    ],
    ids=["without id", "get_state"],
)
async def test_a_replay_that_cannot_be_a_retry_is_refused(signed: Harness, body: str) -> None:
    envelope = sign_request(body, SECRET)
    await signed.backend.send(envelope)
    await signed.backend.send(envelope)
    first, second = await signed.backend.settle(2)
    assert first["success"] is True
    assert second["error"] == "UNAUTHORIZED"
    assert second["message"] == "This signed message was already received (replay)."


@VIAS
async def test_require_signature_refuses_a_trusted_identity_without_one(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness: Harness = await make_harness(secret=SECRET, require_signature=True)
    async with ContextClient(harness.backend.room, via=via) as unsigned:
        with pytest.raises(ContextError) as caught:
            await unsigned.add_context("Trusted, but unsigned.")
    async with ContextClient(harness.backend.room, via=via, secret=SECRET) as signed_client:
        ack = await signed_client.add_context("Trusted and signed.")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert caught.value.message == (
        "This agent only accepts signed messages, and this one is not signed."
    )
    assert ack.success
    assert harness.context_messages() == ["Trusted and signed."]


@VIAS
async def test_a_signed_message_to_an_agent_without_a_secret_is_refused(
    make_harness: HarnessFactory, via: Via
) -> None:
    # no shared secret, and no LiveKit API secret either (trust_server=False)
    harness: Harness = await make_harness(trust_server=False)
    async with ContextClient(harness.backend.room, via=via, secret=SECRET) as client:
        with pytest.raises(ContextError) as caught:
            await client.speak("Nobody can check this.")
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert "no secret configured" in caught.value.message


@VIAS
async def test_a_retry_is_signed_again_and_applied_once(
    make_harness: HarnessFactory, via: Via
) -> None:
    harness: Harness = await make_harness(start_plugin=False)
    kwargs: dict[str, Any] = {"agent_code": AGENT_CODE, "secret": SECRET, "allowed_identities": []}
    if via == "data":
        kwargs["ack_transport"] = DropFirstAck(harness.agent_room)
    else:
        harness.agent_room.local_participant.add_rpc_interceptor(LoseFirstResponse())
    harness.plugin = ContextPlugin(**kwargs)
    await harness.plugin.start(harness.session, harness.agent_room)

    async with ContextClient(
        harness.backend.room, via=via, secret=SECRET, timeout=0.3, backoff=0
    ) as client:
        # the retry comes within the same second: an identical envelope would be a replay
        ack = await client.speak("Signed twice, said once.", id="rs-1", wait_for_playout=True)

    assert ack.ack.duplicate is True
    assert harness.tts.texts.count("Signed twice, said once.") == 1
    assert harness.plugin.stats.errors.get("UNAUTHORIZED", 0) == 0
    if via == "data":
        envelopes = [
            json.loads(p.payload) for p in harness.network.published if b'"signature"' in p.payload
        ]
        assert len(envelopes) == 2
        assert envelopes[0]["body"] == envelopes[1]["body"]
        assert envelopes[0]["signature"] != envelopes[1]["signature"]
        assert len(packets_for(harness.network, "rs-1")) == 2


async def test_refusals_of_signed_messages_name_their_request(harness: Harness) -> None:
    # the agent has no secret: it cannot check signatures, but still names the request it
    # refuses, so concurrent requests each get their own answer instead of a timeout
    async with ContextClient(
        harness.backend.room, via="data", secret=SECRET, timeout=2.0, retries=0
    ) as client:
        results = await asyncio.gather(
            client.speak("one", id="u-1"), client.speak("two", id="u-2"), return_exceptions=True
        )
    assert [type(r) for r in results] == [ContextError, ContextError]
    assert [r.request_id for r in results if isinstance(r, ContextError)] == ["u-1", "u-2"]
    assert all(isinstance(r, ContextError) and r.code is ErrorCode.UNAUTHORIZED for r in results)


# ---------------------------------------------------------------------------------------------
# a signed sender: several relays (gateway replicas) that are one sender


GATEWAY_SENDER = "imaginex-gateway"


def test_the_scheme_with_a_sender_is_pinned() -> None:
    vector = signature("v1.2 sender")
    assert (vector["secret"], vector["timestamp"], vector["body"], vector["sender"]) == (
        "s3cret", 1_700_000_000, '{"type":"speak","message":"hi"}', GATEWAY_SENDER
    )
    body = vector["body"]
    envelope = json.loads(
        sign_request(body, "s3cret", timestamp=1_700_000_000, sender=GATEWAY_SENDER)
    )
    message = b"imaginex-sender-v1.1700000000.16.imaginex-gateway." + body.encode()
    expected = hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    assert envelope == {
        "type": "signed",
        "body": body,
        "timestamp": 1_700_000_000,
        "signature": expected,
        "sender": GATEWAY_SENDER,
    }
    assert expected == vector["signature"]
    # the length counts UTF-8 bytes, so a sender holding dots or accents is still unambiguous
    accented_vector = signature("v1.2 sender with a dot and an accent")
    assert accented_vector["sender"] == "café.x"
    assert accented_vector["message"].encode() == (
        "imaginex-sender-v1.1700000000.7.café.x.".encode() + body.encode()
    )
    accented = json.loads(sign_request(body, "s3cret", timestamp=1_700_000_000, sender="café.x"))
    assert accented["signature"] == accented_vector["signature"]


@pytest.mark.parametrize(
    ("signed_for", "presented"),
    [
        (GATEWAY_SENDER, "someone-else"),  # another sender
        (GATEWAY_SENDER, None),  # the sender dropped: a v1 envelope
        (None, GATEWAY_SENDER),  # a v1 signature with a sender added
        # the same bytes cut differently between sender and body
        ("a.b", "a"),
    ],
    ids=["other sender", "sender dropped", "sender added", "moved boundary"],
)
def test_a_signature_is_only_good_for_the_sender_it_was_made_for(
    signed_for: str | None, presented: str | None
) -> None:
    body = speak("s-1")
    if signed_for == "a.b":
        body = "{}"
    envelope = json.loads(sign_request(body, SECRET, sender=signed_for))
    if signed_for == "a.b":
        # "a.b" + "." + "{}" == "a" + "." + "b.{}": only the length tells them apart
        envelope["body"] = "b.{}"
    verifier = SignatureVerifier(SECRET)
    problem = verifier.verify(
        envelope["body"], envelope["timestamp"], envelope["signature"], sender=presented
    )
    assert problem is SignatureProblem.MISMATCH
    # the unaltered envelope is fine, so the refusal above is the sender's doing
    untouched = json.loads(sign_request(body, SECRET, sender=signed_for))
    assert verifier.verify(
        untouched["body"], untouched["timestamp"], untouched["signature"], sender=signed_for
    ) is None


@VIAS
async def test_a_changed_sender_is_refused_by_the_agent(signed: Harness, via: Via) -> None:
    envelope = json.loads(sign_request(speak("cs-1"), SECRET, sender=GATEWAY_SENDER))
    envelope["sender"] = "supervisor"
    answer = await refusal(signed, envelope, via)
    assert answer["error"] == "UNAUTHORIZED"
    assert answer["message"] == "The signature does not match the message."
    assert answer["id"] == "cs-1"
    assert signed.tts.texts == []


async def _from_two_relays(
    harness: Harness, via: Via, first: str, second: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send ``first`` from relay ``replica-a`` and then ``second`` from ``replica-b``."""
    answers = []
    for relay, envelope in (("replica-a", first), ("replica-b", second)):
        backend = harness.backend_as(relay)
        request_id = json.loads(json.loads(envelope)["body"])["id"]
        if via == "rpc":
            answers.append(await backend.rpc(envelope))
        else:
            await backend.send(envelope)
            answers.append(await backend.ack_for(request_id))
    return answers[0], answers[1]


@VIAS
@pytest.mark.parametrize("same_second", [True, False], ids=["same envelope", "re-signed"])
async def test_one_named_sender_through_two_relays_is_applied_once(
    signed: Harness, via: Via, same_second: bool
) -> None:
    # two gateway replicas (distinct identities) relay one request id: the agent answers the
    # second from its dedup memory, to the relay that sent it, and says it once
    now = int(time.time())
    first = sign_request(speak("rep-1"), SECRET, timestamp=now, sender=GATEWAY_SENDER)
    second = sign_request(
        speak("rep-1"), SECRET, timestamp=now if same_second else now - 1, sender=GATEWAY_SENDER
    )
    assert (first == second) is same_second
    a, b = await _from_two_relays(signed, via, first, second)
    assert a["success"] is True
    assert b == {**a, "duplicate": True}
    await asyncio.sleep(0.3)  # a second application would have started speaking by now
    assert signed.tts.texts == ["Signed and sealed."]
    assert signed.plugin.stats.applied == 1


@VIAS
async def test_without_a_named_sender_each_relay_is_its_own_sender(
    signed: Harness, via: Via
) -> None:
    # today's rule, unchanged for v1 envelopes: the same id from two relays is two requests
    now = int(time.time())
    first = sign_request(speak("v1-1"), SECRET, timestamp=now)
    second = sign_request(speak("v1-1"), SECRET, timestamp=now - 1)
    a, b = await _from_two_relays(signed, via, first, second)
    assert a["success"] is True
    assert b["success"] is True
    assert "duplicate" not in b
    assert signed.plugin.stats.applied == 2


@VIAS
async def test_the_same_id_for_another_request_through_another_relay_is_id_reused(
    signed: Harness, via: Via
) -> None:
    now = int(time.time())
    first = sign_request(speak("ir-1", "One thing."), SECRET, timestamp=now, sender=GATEWAY_SENDER)
    second = sign_request(speak("ir-1", "Another."), SECRET, timestamp=now, sender=GATEWAY_SENDER)
    a, b = await _from_two_relays(signed, via, first, second)
    assert a["success"] is True
    assert b["error"] == "ID_REUSED"
    assert signed.plugin.stats.applied == 1


async def test_permissions_follow_the_named_sender(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(
        secret=SECRET, allowed_identities=[], permissions={"supervisor": {"get_history"}}
    )
    relay = harness.backend_as("replica-a")
    history = json.dumps({"type": "get_history", "id": "h-1"})
    granted = await relay.rpc(sign_request(history, SECRET, sender="supervisor"))
    # the relay itself is named in no entry, and neither is a sender it might claim unsigned
    refused = await relay.rpc(sign_request(history.replace("h-1", "h-2"), SECRET))
    other = await relay.rpc(sign_request(history.replace("h-1", "h-3"), SECRET, sender="crm"))
    assert granted["success"] is True
    assert refused["error"] == "UNAUTHORIZED"
    assert other["error"] == "UNAUTHORIZED"
    assert "get_history" in other["message"]


async def test_the_rate_limit_follows_the_named_sender(make_harness: HarnessFactory) -> None:
    harness: Harness = await make_harness(
        secret=SECRET, allowed_identities=[], rate_limit=RateLimit(per_second=0.01, burst=2)
    )
    relays = [harness.backend_as(name) for name in ("replica-a", "replica-b", "replica-c")]
    answers = []
    for n, relay in enumerate(relays):
        envelope = sign_request(speak(f"rl-{n}"), SECRET, sender=GATEWAY_SENDER)
        answers.append(await relay.rpc(envelope))
    # another sender through the same relay has its own bucket
    other = await relays[2].rpc(sign_request(speak("rl-other"), SECRET, sender="crm"))
    assert [a["success"] for a in answers] == [True, True, False]
    assert answers[2]["error"] == "RATE_LIMITED"
    assert other["success"] is True


async def test_a_cancel_through_another_relay_finds_the_named_senders_speech(
    signed: Harness,
) -> None:
    # the speech belongs to the signed sender, not to the replica that relayed it: a cancel
    # retried through another replica reaches it; another sender's cancel does not
    long_text = "This is a long announcement that keeps playing for a while. " * 8
    replica_a, replica_b = signed.backend_as("replica-a"), signed.backend_as("replica-b")
    spoken = json.dumps({"type": "speak", "id": "own-1", "message": long_text})
    assert (await replica_a.rpc(sign_request(spoken, SECRET, sender=GATEWAY_SENDER)))["success"]
    await replica_a.event("speech_started", "own-1")
    stranger = await replica_b.rpc(
        sign_request(
            json.dumps({"type": "cancel", "id": "x-1", "target_id": "own-1"}), SECRET, sender="crm"
        )
    )
    assert stranger["error"] == "NOT_FOUND"
    cancel = json.dumps({"type": "cancel", "id": "x-2", "target_id": "own-1"})
    ack = await replica_b.rpc(sign_request(cancel, SECRET, sender=GATEWAY_SENDER))
    assert ack["success"] is True
    assert ack["data"]["cancelled"] == "playing"
    # the playout report goes to the relay that started the speech
    finished = await replica_a.event("speech_finished", "own-1")
    assert (finished["interrupted"], finished["cancelled"]) == (True, True)
