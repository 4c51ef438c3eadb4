"""The shared fixtures (``fixtures/protocol.json``) hold for the Python side: the TypeScript
client's tests read the same file, so what is pinned here is what both languages do."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, get_args

import pytest
from livekit import rtc

from imaginex_context_plugin import protocol, sign_request
from imaginex_context_plugin._livekit.agents import choose_agent
from imaginex_context_plugin._livekit.rpc import HANDLER_FAILED, RPC_FAILURES, rpc_failure
from imaginex_context_plugin.errors import RETRYABLE_CODES, ErrorCode, ProtocolError
from imaginex_context_plugin.request_errors import ContextError, SpeechFailedError
from imaginex_context_plugin.security import SIGNATURE_WINDOW_S, signed_message
from tests.protocol_fixtures import FIXTURES


def names(section: str) -> list[str]:
    return [entry["name"] for entry in FIXTURES[section]]


def entries(section: str) -> Any:
    return pytest.mark.parametrize("entry", FIXTURES[section], ids=names(section))


def test_names_codes_and_tables() -> None:
    assert FIXTURES["names"] == {
        "context_topic": protocol.CONTEXT_TOPIC,
        "ack_topic": protocol.ACK_TOPIC,
        "rpc_method": protocol.RPC_METHOD,
        "agent_code_attribute": protocol.AGENT_CODE_ATTRIBUTE,
        "sender_attribute": protocol.SENDER_ATTRIBUTE,
        "max_payload_bytes": protocol.MAX_PAYLOAD_BYTES,
        "max_id_length": protocol.MAX_ID_LENGTH,
        "signature_window_s": SIGNATURE_WINDOW_S,
    }
    assert FIXTURES["message_types"] == list(protocol.MESSAGE_TYPES)
    assert FIXTURES["session_event_types"] == list(protocol.SESSION_EVENT_TYPES)
    assert FIXTURES["error_codes"] == [code.value for code in ErrorCode]
    assert FIXTURES["retryable_codes"] == sorted(code.value for code in RETRYABLE_CODES)


def test_the_one_rpc_failure_table() -> None:
    table = FIXTURES["rpc_failures"]
    assert table["by_livekit_code"] == {
        str(int(code)): {"code": failure.code.value, "retryable": failure.retryable}
        for code, failure in RPC_FAILURES.items()
    }
    assert table["otherwise"] == {
        "code": HANDLER_FAILED.code.value, "retryable": HANDLER_FAILED.retryable
    }
    # and what rpc_failure makes of each, a code LiveKit may add later included
    for code, expected in [*table["by_livekit_code"].items(), ("1500", table["otherwise"])]:
        error = rpc_failure(rtc.RpcError(int(code), "x"), agent="agent-1")
        assert (error.code.value, error.retryable) == (expected["code"], expected["retryable"])


def test_what_each_speech_failed_reason_says() -> None:
    table = FIXTURES["speech_failed"]
    assert sorted(table["sentences"]) == sorted(get_args(protocol.SpeechFailureReason))
    for reason, sentence in table["sentences"].items():
        event = protocol.SpeechFailedEvent(
            id="r1", speech_id="speech_r1", reason=reason, started=False,
            timestamp="2026-01-01T00:00:00Z",
        )
        error = SpeechFailedError(event)
        assert (error.code, error.message, error.retryable) == (
            ErrorCode.SPEECH_FAILED, sentence, reason in table["retryable_reasons"]
        )


@entries("signatures")
def test_signature_vectors(entry: dict[str, Any]) -> None:
    sender = entry.get("sender")
    message = signed_message(entry["body"], entry["timestamp"], sender)
    assert message == entry["message"].encode("utf-8")
    expected = hmac.new(entry["secret"].encode(), message, hashlib.sha256).hexdigest()
    assert expected == entry["signature"]
    envelope = sign_request(
        entry["body"], entry["secret"], timestamp=entry["timestamp"], sender=sender
    )
    assert envelope == entry["envelope"]  # byte for byte
    parsed = protocol.read_packet(envelope.encode())
    assert isinstance(parsed, protocol.SignedEnvelope)
    assert (parsed.body, parsed.signature, parsed.sender) == (
        entry["body"], entry["signature"], sender
    )


@entries("requests")
def test_request_examples(entry: dict[str, Any]) -> None:
    assert protocol.validate_request(entry["sent"]).model_dump(mode="json") == entry["parsed"]
    raw = json.dumps(entry["sent"]).encode()
    assert protocol.parse_request(raw).model_dump(mode="json") == entry["parsed"]


@entries("server_messages")
def test_server_message_examples(entry: dict[str, Any]) -> None:
    parsed = protocol.parse_server_message(json.dumps(entry["wire"]))
    assert type(parsed).__name__ == entry["model"]
    assert parsed.model_dump(mode="json") == entry["wire"]
    assert json.loads(protocol.encode_message(parsed)) == entry["wire"]


@entries("invalid_requests")
def test_invalid_request_examples(entry: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.validate_request(entry["request"])
    assert caught.value.code.value == entry["error"]
    assert caught.value.message == entry["message"]
    assert caught.value.request_id == entry["id"]


@entries("agent_choice")
def test_agent_choice_examples(entry: dict[str, Any]) -> None:
    people = [(p["identity"], p["kind"], p["attributes"]) for p in entry["participants"]]

    def choose() -> str | None:
        return choose_agent(
            people, agent_code=entry["agent_code"], room="shop-42", exclude=entry["exclude"]
        )

    if "error" in entry:
        with pytest.raises(ContextError) as caught:
            choose()
        error = caught.value
        assert {"code": error.code.value, "message": error.message,
                "retryable": error.retryable} == entry["error"]
    else:
        assert choose() == entry["chosen"]
