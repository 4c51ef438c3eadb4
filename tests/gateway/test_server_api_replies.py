"""Answers over HTTP for server-API packets: the signed ``reply_to``, the agent's allow-list,
the signed reply and the gateway's inbox, on a real AgentSession and real aiohttp servers on
127.0.0.1 (no LiveKit: the packet goes in through ``ingest`` as a server packet would)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from imaginex_context_plugin import protocol
from imaginex_context_plugin.errors import BackendError, ErrorCode, ProtocolError
from imaginex_context_plugin.gateway import DEFAULT_HEADER_TIMEOUT_S
from imaginex_context_plugin.gateway.delivery import (
    REPLIES_PATH,
    AgentTarget,
    LiveKitBackend,
    ReplyInbox,
    ServerApiBackend,
)
from imaginex_context_plugin.gateway.delivery.server_api_delivery import MAX_REPLY_BYTES
from imaginex_context_plugin.receiver.http_replies import KEEPALIVE_S, HttpReplies
from imaginex_context_plugin.receiver.stats import PluginStats
from imaginex_context_plugin.replies import (
    REPLY_SIGNATURE_HEADER,
    REPLY_TIMESTAMP_HEADER,
    REPLY_URL_NOT_ALLOWED,
    ReplyUrls,
    reply_signature,
)
from imaginex_context_plugin.security import SignatureProblem, SignatureVerifier, sign_request
from tests.conftest import AGENT_CODE, ROOM, HarnessFactory
from tests.helpers import wait_until

SECRET = "the-agents-shared-signing-secret"
SENDER = "imaginex-gateway"

# ---------------------------------------------------------------------------------------------
# the signed message, pinned so that other languages can implement it


def test_reply_to_is_signed_in_its_own_unambiguous_scheme() -> None:
    body, ts, url = '{"type":"speak","id":"r1","message":"hi"}', 1_700_000_000, "http://gw/x/"
    packet = json.loads(sign_request(body, SECRET, timestamp=ts, sender=SENDER, reply_to=url))
    message = f"imaginex-reply-v1.{ts}.16.{SENDER}.12.{url}.{body}".encode()
    assert packet == {
        "type": "signed",
        "body": body,
        "timestamp": ts,
        "signature": hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest(),
        "sender": SENDER,
        "reply_to": url,
    }
    # without a sender the length is 0 and the sender empty
    bare = json.loads(sign_request(body, SECRET, timestamp=ts, reply_to=url))
    message = f"imaginex-reply-v1.{ts}.0..12.{url}.{body}".encode()
    assert bare["signature"] == hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert "sender" not in bare


def test_a_reply_to_cannot_be_added_changed_or_removed_in_flight() -> None:
    body, ts, url = '{"type":"speak","id":"r1","message":"hi"}', 1_700_000_000, "http://gw/x/"
    signed = json.loads(sign_request(body, SECRET, timestamp=ts, sender=SENDER, reply_to=url))
    plain = json.loads(sign_request(body, SECRET, timestamp=ts, sender=SENDER))

    def check(signature: str, *, sender: str | None, reply_to: str | None) -> object:
        verifier = SignatureVerifier(SECRET, clock=lambda: ts)
        return verifier.verify(body, ts, signature, sender=sender, reply_to=reply_to)

    assert check(signed["signature"], sender=SENDER, reply_to=url) is None
    for sender, reply_to in [
        (SENDER, "http://evil/x/"),  # changed
        (SENDER, None),  # removed
        (None, url),  # sender removed
        ("imaginex-gatewa", "y.12.http://gw/x/"),  # the boundary moved
    ]:
        assert check(signed["signature"], sender=sender, reply_to=reply_to) is (
            SignatureProblem.MISMATCH
        )
    # added to a message signed without one
    assert check(plain["signature"], sender=SENDER, reply_to=url) is SignatureProblem.MISMATCH


def test_an_envelope_without_reply_to_dumps_exactly_as_before() -> None:
    v1 = {"type": "signed", "body": "{}", "timestamp": 1, "signature": "ab"}
    parsed = protocol.read_packet(json.dumps(v1).encode())
    # as pinned in test_wire_format: ``sender`` as before, no ``reply_to`` key at all
    assert parsed.model_dump(mode="json") == {**v1, "sender": None}
    with_url = {**v1, "sender": None, "reply_to": "http://gw/x/"}
    assert protocol.read_packet(json.dumps(with_url).encode()).model_dump(mode="json") == with_url


@pytest.mark.parametrize(
    "reply_to", ["", "http://gw/ x/", "http://gw/\u00e9/", "http://gw/\n", "h" * 513]
)
def test_a_reply_to_that_is_not_a_plain_url_is_a_validation_error(reply_to: str) -> None:
    packet = {"type": "signed", "body": "{}", "timestamp": 1, "signature": "ab"}
    with pytest.raises(ProtocolError) as raised:
        protocol.read_packet(json.dumps({**packet, "reply_to": reply_to}).encode())
    assert raised.value.code is ErrorCode.VALIDATION_ERROR


def test_the_reply_signature_is_domain_separated() -> None:
    body, ts = b'{"room":"r","ack":"{}"}', 1_700_000_000
    expected = hmac.new(
        SECRET.encode(), b"imaginex-answer-v1.1700000000." + body, hashlib.sha256
    ).hexdigest()
    assert reply_signature(body, ts, SECRET) == expected


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://gw.internal:8089/v1/internal/replies", True),
        ("HTTP://GW.INTERNAL:8089/v1/internal/replies", True),
        ("http://gw.internal:8089/v1/internal/", True),
        ("http://gw.internal:8089/v1/other", False),  # outside the path
        ("http://gw.internal:8089/v1/internal/../../admin", False),  # climbs out
        ("http://gw.internal:8089/v1/internal/%2e%2e/admin", False),
        ("http://gw.internal:8090/v1/internal/replies", False),  # another port
        ("http://gw.internal/v1/internal/replies", False),  # port 80
        ("https://gw.internal:8089/v1/internal/replies", False),  # another scheme
        ("http://gw.internal:8089@evil.example/v1/internal/", False),  # user info
        ("http://gw.internal.evil.example:8089/v1/internal/", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("file:///etc/passwd", False),
        ("http://gw.internal:8089/v1/internal/replies?x=1", False),
        ("http://gw.internal:8089/v1/internal/replies#x", False),
        ("http://gw.internal:99999/v1/internal/", False),  # not a port
    ],
)
def test_reply_urls_allow_only_what_a_prefix_covers(url: str, allowed: bool) -> None:
    urls = ReplyUrls(["http://gw.internal:8089/v1/internal/"])
    assert urls.allows(url) is allowed


@pytest.mark.parametrize("prefix", ["http://gw:8089/v1", "ftp://gw/", "http:///x/", "http://u@gw/"])
def test_a_reply_url_prefix_must_be_a_whole_http_path(prefix: str) -> None:
    with pytest.raises(ValueError, match="reply URL prefix"):
        ReplyUrls([prefix])


def test_no_reply_url_is_allowed_by_default() -> None:
    assert not ReplyUrls([])
    assert not ReplyUrls([]).allows("http://127.0.0.1:8089/v1/internal/replies")


# ---------------------------------------------------------------------------------------------
# the agent posts its answer; the gateway's inbox takes only what it waits for


@pytest.fixture
async def inbox_server() -> AsyncIterator[tuple[ReplyInbox, TestServer]]:
    inbox = ReplyInbox([SECRET])
    app = web.Application()
    app.router.add_post(REPLIES_PATH, inbox.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield inbox, server
    await server.close()


class Recorder:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.json_response({})


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    await rec.server.start_server()
    yield rec
    await rec.server.close()


def _reply_url(server: TestServer) -> str:
    return str(server.make_url(REPLIES_PATH))


def _allowed(server: TestServer) -> list[str]:
    return [str(server.make_url("/v1/internal/"))]


def _speak(request_id: str, *, reply_to: str, secret: str = SECRET) -> str:
    body = json.dumps(
        {"type": "speak", "id": request_id, "message": "Your order shipped.", "room_id": ROOM}
    )
    return sign_request(body, secret, sender=SENDER, reply_to=reply_to)


async def test_the_agent_posts_its_signed_ack_to_an_allowed_reply_url(
    make_harness: HarnessFactory, inbox_server: tuple[ReplyInbox, TestServer]
) -> None:
    inbox, server = inbox_server
    harness = await make_harness(secret=SECRET, reply_urls=_allowed(server))
    waiter = inbox.expect(ROOM, "r1")

    harness.plugin.ingest(_speak("r1", reply_to=_reply_url(server)), sender_identity=None)

    ack = json.loads(await asyncio.wait_for(waiter.answer, 5))
    assert ack["success"] is True
    assert ack["id"] == "r1"
    assert ack["data"]["agent_code"] == AGENT_CODE
    assert harness.tts.texts == ["Your order shipped."]
    # a retry (signed again) is answered as a duplicate, through the same path, not spoken
    inbox.forget(waiter)
    retry = inbox.expect(ROOM, "r1")
    harness.plugin.ingest(_speak("r1", reply_to=_reply_url(server)), sender_identity=None)
    again = json.loads(await asyncio.wait_for(retry.answer, 5))
    assert again["success"] is True
    assert again.get("duplicate") is True
    assert harness.tts.texts == ["Your order shipped."]
    await wait_until(lambda: harness.plugin.stats.acks_sent == 2)


async def test_a_refusal_is_posted_too(
    make_harness: HarnessFactory, inbox_server: tuple[ReplyInbox, TestServer]
) -> None:
    inbox, server = inbox_server
    harness = await make_harness(secret=SECRET, reply_urls=_allowed(server))
    waiter = inbox.expect(ROOM, "r2")
    body = json.dumps({"type": "speak", "id": "r2", "message": "x", "agent_code": "OTHER"})
    packet = sign_request(body, SECRET, sender=SENDER, reply_to=_reply_url(server))

    harness.plugin.ingest(packet, sender_identity=None)

    ack = json.loads(await asyncio.wait_for(waiter.answer, 5))
    assert ack["success"] is False
    assert ack["error"] == "AGENT_NOT_FOUND"


async def test_a_reply_url_the_agent_does_not_allow_is_never_called(
    make_harness: HarnessFactory, recorder: Recorder
) -> None:
    harness = await make_harness(secret=SECRET)  # reply_urls: none, the default

    harness.plugin.ingest(_speak("r3", reply_to=_reply_url(recorder.server)), sender_identity=None)

    await wait_until(lambda: harness.plugin.stats.errors.get(REPLY_URL_NOT_ALLOWED) == 1)
    other = await make_harness(
        secret=SECRET, reply_urls=["http://127.0.0.1:1/v1/internal/"]
    )  # allows another address only
    other.plugin.ingest(_speak("r4", reply_to=_reply_url(recorder.server)), sender_identity=None)
    await wait_until(lambda: other.plugin.stats.errors.get(REPLY_URL_NOT_ALLOWED) == 1)
    await asyncio.sleep(0.3)
    assert recorder.hits == []
    assert harness.tts.texts == []
    assert other.tts.texts == []


async def test_a_forged_reply_to_is_refused_and_nothing_called(
    make_harness: HarnessFactory, recorder: Recorder
) -> None:
    harness = await make_harness(secret=SECRET, reply_urls=_allowed(recorder.server))
    # signed for one URL, the URL swapped in flight
    packet = json.loads(_speak("r5", reply_to="http://127.0.0.1:1/v1/internal/replies"))
    packet["reply_to"] = _reply_url(recorder.server)

    harness.plugin.ingest(json.dumps(packet), sender_identity=None)

    await wait_until(lambda: harness.plugin.stats.errors.get("UNAUTHORIZED") == 1)
    await asyncio.sleep(0.3)
    assert recorder.hits == []


def test_reply_urls_need_a_key_to_sign_the_replies_with() -> None:
    from imaginex_context_plugin import ContextPlugin

    with pytest.raises(ValueError, match="reply_urls needs a secret"):
        ContextPlugin(trust_server=False, reply_urls=["http://127.0.0.1:8089/v1/internal/"])


async def _post(
    server: TestServer, body: bytes, *, secret: str | None = SECRET, ts: int | None = None
) -> tuple[int, dict[str, Any]]:
    stamp = int(time.time()) if ts is None else ts
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[REPLY_TIMESTAMP_HEADER] = str(stamp)
        headers[REPLY_SIGNATURE_HEADER] = reply_signature(body, stamp, secret)
    async with (
        aiohttp.ClientSession() as session,
        session.post(_reply_url(server), data=body, headers=headers) as response,
    ):
        return response.status, await response.json()


def _reply(request_id: str | None, room: str = ROOM) -> bytes:
    ack = json.dumps({"type": "ack", "id": request_id, "success": True})
    return json.dumps({"room": room, "ack": ack}).encode()


async def test_the_inbox_refuses_every_reply_it_did_not_ask_for_with_401(
    inbox_server: tuple[ReplyInbox, TestServer],
) -> None:
    inbox, server = inbox_server
    waiter = inbox.expect(ROOM, "w1")
    cases = [
        (_reply("w1"), None, None),  # unsigned
        (_reply("w1"), "a-forged-secret", None),  # forged
        (_reply("w1"), SECRET, 1_000),  # stale
        (_reply("w2"), SECRET, None),  # nobody waits for this id
        (_reply("w1", room="room-2"), SECRET, None),  # nor in this room
        (b"not json", SECRET, None),
        (json.dumps({"room": ROOM, "ack": {"id": "w1"}}).encode(), SECRET, None),
        # correctly signed, but nested too deeply to read (about 10 KB): the ack, its id, the body
        (json.dumps({"room": ROOM, "ack": "[" * 10_000 + "]" * 10_000}).encode(), SECRET, None),
        (json.dumps({"room": ROOM, "ack": '{"id": ' + "[" * 5_000 + "]" * 5_000 + "}"}).encode(),
         SECRET, None),
        (json.dumps({"room": ROOM, "ack": '{"id": "w1", "x": ' + "[" * 5_000 + "]" * 5_000 + "}"})
         .encode(), SECRET, None),
        (b"[" * 10_000 + b"]" * 10_000, SECRET, None),
        (b'{"room": ' + b"[" * 10_000 + b"]" * 10_000 + b', "ack": "{}"}', SECRET, None),
    ]
    for body, secret, ts in cases:
        status, answer = await _post(server, body, secret=secret, ts=ts)
        assert status == 401, body
        assert answer["success"] is False
        assert answer["error"] == "UNAUTHORIZED"
    assert not waiter.answer.done()

    status, _ = await _post(server, b"x" * (MAX_REPLY_BYTES + 1))
    assert status == 413

    good, stamp = _reply("w1"), int(time.time())
    assert (await _post(server, good, ts=stamp - 1))[0] == 200
    assert json.loads(await waiter.answer)["id"] == "w1"
    # the same reply again (a replay) is refused, even for a later delivery of the same id
    inbox.forget(waiter)
    later = inbox.expect(ROOM, "w1")
    assert (await _post(server, good, ts=stamp - 1))[0] == 401
    assert not later.answer.done()
    assert (await _post(server, good, ts=stamp))[0] == 200
    assert later.answer.done()


async def test_a_second_answer_to_an_answered_delivery_is_taken_quietly_for_a_while(
    inbox_server: tuple[ReplyInbox, TestServer],
) -> None:
    """A resend's duplicate answer comes after the delivery was answered: 200, counted as
    late, nothing else done; it must still be signed, and is refused when replayed."""
    inbox, server = inbox_server
    waiter = inbox.expect(ROOM, "r1")
    stamp = int(time.time())
    assert (await _post(server, _reply("r1"), ts=stamp))[0] == 200
    inbox.forget(waiter)

    duplicate = json.dumps(
        {"room": ROOM, "ack": json.dumps({"type": "ack", "id": "r1", "duplicate": True})}
    ).encode()
    assert (await _post(server, duplicate, ts=stamp))[0] == 200
    assert (inbox.accepted, inbox.late, inbox.refused) == (1, 1, 0)
    assert (await _post(server, duplicate, ts=stamp))[0] == 401  # the same reply replayed
    assert (await _post(server, duplicate, secret="a-forged-secret"))[0] == 401
    # a delivery that timed out unanswered gets no such grace
    unanswered = inbox.expect(ROOM, "r2")
    inbox.forget(unanswered)
    assert (await _post(server, _reply("r2")))[0] == 401


async def test_the_agents_replies_are_access_logged_at_debug_their_refusals_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One reply per room per fan-out: at INFO they would drown the requests' own lines."""
    from imaginex_context_plugin._livekit.settings import LiveKitSettings
    from imaginex_context_plugin.gateway import ApiSecrets, create_app

    settings = LiveKitSettings(url="ws://127.0.0.1:1", api_key="k", api_secret="s" * 32)
    backend = ServerApiBackend(
        LiveKitBackend(settings), settings, signing_secret=SECRET, public_url="http://a/"
    )
    server = TestServer(
        create_app(backend, ApiSecrets(secret="x" * 32), signing_secret=SECRET), host="127.0.0.1"
    )
    await server.start_server()
    try:
        waiter = backend.reply_inbox.expect(ROOM, "q1")
        with caplog.at_level(logging.DEBUG, logger="imaginex_context_plugin"):
            assert (await _post(server, _reply("q1")))[0] == 200
            assert (await _post(server, _reply("q2")))[0] == 401
        assert waiter.answer.done()
    finally:
        await server.close()
        await backend.aclose()
    access = [
        (r.levelno, r.status, r.reason)  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "path", None) == REPLIES_PATH
    ]
    assert access == [
        (logging.DEBUG, 200, None),
        (logging.INFO, 401, "No delivery is waiting for this reply."),
    ]
    # the refusal's one INFO line is its access line, which says why
    ours = [r for r in caplog.records if r.name.startswith("imaginex_context_plugin")]
    assert len([r for r in ours if r.levelno >= logging.INFO]) == 1


async def test_the_backend_refuses_to_run_unsigned() -> None:
    from imaginex_context_plugin._livekit.settings import LiveKitSettings

    settings = LiveKitSettings(url="ws://127.0.0.1:1", api_key="k", api_secret="s" * 32)
    finder = LiveKitBackend(settings)
    try:
        with pytest.raises(ValueError, match="signing secret"):
            ServerApiBackend(finder, settings, signing_secret=None, public_url="http://a/")
        for resend_after in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match="resend_after"):
                ServerApiBackend(
                    finder,
                    settings,
                    signing_secret=SECRET,
                    public_url="http://a/",
                    resend_after=resend_after,
                )
        backend = ServerApiBackend(
            finder, settings, signing_secret=SECRET, public_url="http://127.0.0.1:8089/"
        )
        assert backend.reply_url == "http://127.0.0.1:8089/v1/internal/replies"
        with pytest.raises(BackendError) as raised:  # an unsigned message cannot name a URL
            await backend.deliver(
                AgentTarget(ROOM, "agent"),
                '{"type":"speak","id":"x","message":"hi"}',
                timeout=1,
            )
        assert raised.value.code is ErrorCode.INTERNAL_ERROR
        # a message that fit without the reply URL but not with it is refused, nothing sent
        body = json.dumps({"type": "speak", "id": "big", "message": "x"})
        filler = protocol.MAX_PAYLOAD_BYTES - len(sign_request(body, SECRET, sender=SENDER)) - 10
        body = json.dumps({"type": "speak", "id": "big", "message": "x" * filler})
        fits = sign_request(body, SECRET, sender=SENDER)
        assert len(fits) <= protocol.MAX_PAYLOAD_BYTES
        with pytest.raises(BackendError) as raised:
            await backend.deliver(AgentTarget(ROOM, "agent"), fits, timeout=1)
        assert raised.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    finally:
        await finder.aclose()


async def test_a_reply_arriving_in_pieces_is_read_whole(
    inbox_server: tuple[ReplyInbox, TestServer],
) -> None:
    inbox, server = inbox_server
    waiter = inbox.expect(ROOM, "w9")
    ack = json.dumps({"type": "ack", "id": "w9", "success": True, "message": "m" * 10_000})
    body = json.dumps({"room": ROOM, "ack": ack}).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        REPLY_TIMESTAMP_HEADER: str(stamp),
        REPLY_SIGNATURE_HEADER: reply_signature(body, stamp, SECRET),
    }

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]
            await asyncio.sleep(0.005)

    async with (
        aiohttp.ClientSession() as session,
        session.post(_reply_url(server), data=pieces(), headers=headers) as response,
    ):
        assert response.status == 200
    assert json.loads(await waiter.answer)["id"] == "w9"


async def test_over_rpc_the_answer_is_the_response_even_with_a_reply_to(
    make_harness: HarnessFactory, recorder: Recorder
) -> None:
    harness = await make_harness(secret=SECRET, reply_urls=_allowed(recorder.server))

    ack = await harness.backend.rpc(_speak("r6", reply_to=_reply_url(recorder.server)))

    assert ack["success"] is True
    assert ack["id"] == "r6"
    await asyncio.sleep(0.2)
    assert recorder.hits == []


class ClosesReusedConnections:
    """An HTTP server on 127.0.0.1 that answers the first request of each connection and
    closes the connection, unanswered, when a second one comes on it: a gateway closing an
    idle keep-alive connection at the moment the agent reuses it, every time."""

    def __init__(self) -> None:
        self.answered: list[bytes] = []
        self.dropped = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ClosesReusedConnections:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/internal/replies"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                if served:
                    self.dropped += 1
                    break
                self.answered.append(body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\n\r\n{}"
                )
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_reply_on_a_connection_the_gateway_just_closed_is_posted_again() -> None:
    stats = PluginStats()
    replies = HttpReplies(secret=SECRET, room_name=lambda: ROOM, stats=stats)
    async with ClosesReusedConnections() as gateway:
        try:
            for n in range(3):
                replies.post(gateway.url, json.dumps({"type": "ack", "id": f"k{n}"}).encode())
                await wait_until(lambda n=n: stats.acks_sent == n + 1, "the reply posted")
        finally:
            await replies.aclose()
    assert stats.ack_failures == 0
    # each later reply first went out on the closing connection, then on a fresh one
    assert gateway.dropped == 2
    assert [json.loads(json.loads(b)["ack"])["id"] for b in gateway.answered] == ["k0", "k1", "k2"]


def test_an_idle_connection_to_the_gateway_is_let_go_before_the_gateway_closes_it() -> None:
    assert KEEPALIVE_S < DEFAULT_HEADER_TIMEOUT_S
