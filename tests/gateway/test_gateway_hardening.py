"""The gateway against hostile or careless clients: raw header bytes, secret guessing.

Requests go over real sockets on 127.0.0.1, to the test servers of the gateway's fixtures
(``tests/gateway_fixtures.py``: real ``LiveKitBackend``, real agents on the relay network where
one is needed).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from livekit import rtc

from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, RPC_METHOD
from imaginex_context_plugin.errors import ErrorCode
from imaginex_context_plugin.gateway import (
    FAILURE_PRECEDENCE,
    STATUS_FOR,
    ApiSecrets,
    GatewayServer,
    build_openapi,
    create_app,
    start_gateway_server,
)
from imaginex_context_plugin.gateway.directory import MemoryAgentDirectory
from imaginex_context_plugin.gateway.directory.webhook import WEBHOOK_PATH
from imaginex_context_plugin.gateway.http.limits import FailureLimiter, client_key
from imaginex_context_plugin.gateway.models import CONTROL_BODIES
from imaginex_context_plugin.security import RateLimit
from tests.gateway_fixtures import (
    CODE,
    HEADERS,
    ROOM_1,
    ROOM_2,
    SECRET,
    Client,
    Fleet,
    GatewayFactory,
    post,
)
from tests.helpers import wait_until

SPEAK = f"/v1/agent/{CODE}/speak"


async def raw_request(client: TestClient[Any, Any], head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (request line and headers, as bytes) and ``body``; return the raw answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, json.loads(body)


def speak_head(secret: bytes, body: bytes) -> bytes:
    return (
        b"POST " + SPEAK.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\napi-secret: " + secret + b"\r\n"
    )


# ---------------------------------------------------------------------------------------------
# api-secret bytes


@pytest.mark.parametrize(
    "secret",
    [
        b"\xff\xfe",
        b"\xc3\x28",  # a broken two-byte sequence
        b"\xed\xa0\x80",  # an encoded surrogate
        SECRET.encode() + b"\xff",
        b"\xff" + SECRET.encode(),
        b"\x80" * 200,
    ],
)
async def test_an_api_secret_that_is_not_utf8_is_unauthorized(
    make_gateway: GatewayFactory, secret: bytes
) -> None:
    client = await make_gateway()
    body = b'{"message": "Hi"}'
    status, _, answer = parse_answer(await raw_request(client, speak_head(secret, body), body))

    assert status == 401
    assert answer == {"success": False, "error": "UNAUTHORIZED", "message": "Invalid api-secret"}


async def test_a_non_ascii_secret_configured_in_utf8_is_accepted_from_its_raw_bytes(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent("room_1")
    client = await make_gateway(secrets=ApiSecrets(secret="clé-secrète-ü"))
    body = b'{"message": "Hi"}'
    raw = await raw_request(client, speak_head("clé-secrète-ü".encode(), body), body)
    status, _, answer = parse_answer(raw)

    assert status == 200, answer
    assert answer["data"]["delivered_to_rooms"] == 1


# ---------------------------------------------------------------------------------------------
# failed authentication is throttled per client address


async def test_failed_authentications_are_rate_limited_per_address(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # no agent is live: an authenticated call is a 404, which is enough to tell it got in
    client = await make_gateway(
        rate_limit=None, auth_failure_limit=RateLimit(per_second=0.01, burst=3)
    )
    for _ in range(10):  # successes are not charged
        status, _, _ = await post(client, SPEAK, {"message": "Hi"})
        assert status == 404
    for _ in range(3):
        status, _, _ = await post(client, SPEAK, {"message": "Hi"}, headers={"api-secret": "x"})
        assert status == 401

    status, answer, headers = await post(
        client, SPEAK, {"message": "Hi"}, headers={"api-secret": "x"}
    )
    assert status == 429
    assert answer["error"] == "RATE_LIMITED"
    assert set(answer) == {"success", "error", "message"}
    assert answer["success"] is False
    assert 1 <= int(headers["Retry-After"]) <= 100
    # while throttled, even the right secret is not compared: no answer tells a guess apart
    status, answer, headers = await post(client, SPEAK, {"message": "Hi"}, headers=HEADERS)
    assert status == 429
    assert "Retry-After" in headers
    # raw bytes that are not UTF-8 count as failures too, and are throttled the same way
    body = b'{"message": "Hi"}'
    status, _, _ = parse_answer(await raw_request(client, speak_head(b"\xff", body), body))
    assert status == 429


async def test_health_and_unknown_routes_are_not_throttled(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(auth_failure_limit=RateLimit(per_second=0.01, burst=1))
    for _ in range(2):
        await post(client, SPEAK, {"message": "Hi"}, headers={"api-secret": "x"})
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/openapi.json")).status == 200


async def test_without_an_auth_failure_limit_wrong_secrets_stay_401(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway(auth_failure_limit=None)
    for _ in range(30):
        status, _, _ = await post(client, SPEAK, {"message": "Hi"}, headers={"api-secret": "x"})
        assert status == 401


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failure_limiter_refills_and_is_per_client() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(RateLimit(per_second=2.0, burst=2), clock=clock)
    assert limiter.retry_after("a") == 0.0
    limiter.charge("a")
    limiter.charge("a")
    assert limiter.retry_after("a") == pytest.approx(0.5)
    assert limiter.retry_after("b") == 0.0
    clock.now += 0.5
    assert limiter.retry_after("a") == 0.0
    limiter.charge("a")
    assert limiter.retry_after("a") > 0
    clock.now += 100
    assert limiter.retry_after("a") == 0.0


def test_failure_limiter_table_is_bounded_forgetting_the_oldest_first() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(RateLimit(per_second=0.001, burst=1), max_clients=3, clock=clock)
    for client in ("a", "b", "c", "d"):
        limiter.charge(client)
    assert len(limiter) == 3
    assert limiter.retry_after("a") == 0.0  # forgotten
    assert limiter.retry_after("d") > 0


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:10.0.0.7", "10.0.0.7"),
        (None, "unknown"),
        ("", "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_key(remote: str | None, key: str) -> None:
    assert client_key(remote) == key


# ---------------------------------------------------------------------------------------------
# an Idempotency-Key reused for another request: 422 ID_REUSED


def keyed(key: str) -> dict[str, str]:
    return {**HEADERS, "Idempotency-Key": key}


async def test_a_key_reused_with_another_body_is_refused_before_anything_is_sent(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1)
    client = await make_gateway()
    first, _, _ = await post(client, SPEAK, {"message": "Order 42 shipped."}, headers=keyed("o-42"))
    received = agent.plugin.stats.received

    status, answer, _ = await post(
        client, SPEAK, {"message": "Order 43 shipped."}, headers=keyed("o-42")
    )
    assert first == 200
    assert status == 422
    assert answer["error"] == "ID_REUSED"
    assert answer["success"] is False
    assert "data" not in answer  # refused by the gateway: no room was tried
    assert agent.plugin.stats.received == received  # nothing reached the agent

    # the same request again is the retry the key exists for: the first answer, again
    status, answer, headers = await post(
        client, SPEAK, {"message": "Order 42 shipped."}, headers=keyed("o-42")
    )
    assert status == 200
    assert headers["Idempotent-Replayed"] == "true"
    assert answer["data"]["rooms"][0]["duplicate"] is False
    assert agent.plugin.stats.received == received
    await agent.idle()
    assert agent.said() == ["Order 42 shipped."]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # the same text through the other endpoint, or as context
        (f"/v1/agent/{CODE}/add-context", {"context": "Hello", "type": "speak"}),
        (f"/v1/agent/{CODE}/add-context", {"context": "Hello"}),
        # the same text for one room only
        (SPEAK, {"message": "Hello", "room_id": ROOM_1}),
    ],
)
async def test_a_key_reused_with_another_endpoint_or_target_is_refused(
    fleet: Fleet, make_gateway: GatewayFactory, path: str, body: dict[str, Any]
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    first, _, _ = await post(client, SPEAK, {"message": "Hello"}, headers=keyed("k-1"))
    status, answer, _ = await post(client, path, body, headers=keyed("k-1"))
    assert first == 200
    assert (status, answer["error"]) == (422, "ID_REUSED")


async def test_the_same_body_with_other_spacing_or_unknown_fields_is_the_same_request(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    first, _, _ = await post(client, SPEAK, '{"message":"Hi"}', headers=keyed("k-2"))
    status, _, headers = await post(
        client, SPEAK, '{ "trace": 7,  "message" : "Hi" }', headers=keyed("k-2")
    )
    assert (first, status) == (200, 200)
    assert headers["Idempotent-Replayed"] == "true"


async def test_a_key_is_bound_per_agent_code(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    await fleet.agent(ROOM_1)
    await fleet.agent(ROOM_2, code="B00000000", identity="agent-b")
    client = await make_gateway()
    one, _, _ = await post(client, SPEAK, {"message": "One"}, headers=keyed("k-3"))
    other, _, _ = await post(
        client, "/v1/agent/B00000000/speak", {"message": "Two"}, headers=keyed("k-3")
    )
    assert (one, other) == (200, 200)


async def test_a_refused_body_does_not_bind_the_key(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    await fleet.agent(ROOM_1)
    client = await make_gateway()
    bad, _, _ = await post(client, SPEAK, {"message": ""}, headers=keyed("k-4"))
    good, _, _ = await post(client, SPEAK, {"message": "Fixed"}, headers=keyed("k-4"))
    assert (bad, good) == (400, 200)


async def test_concurrent_calls_with_one_key_and_two_bodies_send_one(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    agent = await fleet.agent(ROOM_1)
    client = await make_gateway()
    results = await asyncio.gather(
        *(post(client, SPEAK, {"message": f"Body {i}"}, headers=keyed("k-5")) for i in range(6))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 422, 422, 422, 422, 422]
    await agent.idle()
    assert len(agent.said()) == 1


def answering_agent(
    fleet: Fleet, room: str, answer: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """A participant claiming the code whose RPC answer is ``answer(request)``."""
    fleet.register_room(room)
    participant = fleet.network.create_room(
        room, "scripted-agent", attributes={AGENT_CODE_ATTRIBUTE: CODE}
    )
    seen: list[dict[str, Any]] = []

    async def handler(invocation: rtc.RpcInvocationData) -> str:
        request = json.loads(invocation.payload)
        seen.append(request)
        return json.dumps(answer(request))

    participant.local_participant.register_rpc_method(RPC_METHOD, handler)
    return seen


def refusal(error: str, message: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An agent's answer refusing the request it got (its id echoed) with ``error``."""
    return lambda request: {
        "type": "ack",
        "id": request["id"],
        "success": False,
        "error": error,
        "message": message,
    }


async def test_an_agent_answering_id_reused_is_a_422(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # e.g. another gateway replica with the same identity already used the key for other text
    seen = answering_agent(
        fleet, ROOM_1, refusal("ID_REUSED", "This id was already used for a different message.")
    )
    client = await make_gateway()
    status, answer, _ = await post(client, SPEAK, {"message": "Hi"}, headers=keyed("k-6"))

    assert status == 422
    assert answer["success"] is False
    assert answer["error"] == "ID_REUSED"
    assert answer["data"]["rooms"] == [
        {
            "room": ROOM_1,
            "delivered": False,
            "error": "ID_REUSED",
            "message": "This id was already used for a different message.",
            "duplicate": False,
        }
    ]
    assert [request["id"] for request in seen] == ["k-6"]


async def test_id_reused_in_one_room_does_not_fail_a_delivery_elsewhere(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    answering_agent(fleet, ROOM_1, refusal("ID_REUSED", "Reused."))
    await fleet.agent(ROOM_2)
    client = await make_gateway()
    status, answer, _ = await post(client, SPEAK, {"message": "Hi"}, headers=keyed("k-7"))
    assert status == 200
    assert answer["data"]["delivered_to_rooms"] == 1


def test_every_error_code_has_a_status_and_a_place_in_the_precedence() -> None:
    assert set(STATUS_FOR) == set(ErrorCode)
    assert set(FAILURE_PRECEDENCE) == set(ErrorCode)
    assert STATUS_FOR[ErrorCode.ID_REUSED] == 422


def test_openapi_documents_id_reused_as_422() -> None:
    for path in ("/v1/agent/{agent_code}/speak", "/v1/agent/{agent_code}/add-context"):
        responses = build_openapi()["paths"][path]["post"]["responses"]
        assert "ID_REUSED" in responses["422"]["description"]


# ---------------------------------------------------------------------------------------------
# slow clients and too many clients: the real server (start_gateway_server) on 127.0.0.1


@pytest.fixture
async def serve(fleet: Fleet) -> AsyncIterator[Callable[..., Awaitable[GatewayServer]]]:
    """Start the gateway's real server on a free port; keyword arguments go to
    ``start_gateway_server``, and ``app_options`` to ``create_app``."""
    started: list[GatewayServer] = []

    async def start(*, app_options: dict[str, Any] | None = None, **options: Any) -> GatewayServer:
        app = create_app(fleet.backend(), ApiSecrets(secret=SECRET), **(app_options or {}))
        server = await start_gateway_server(app, host="127.0.0.1", port=0, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.aclose()


async def read_until_closed(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``within``)."""
    chunks = []
    async with asyncio.timeout(within):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.both_event_loops
async def test_the_server_answers_requests(serve: Callable[..., Awaitable[GatewayServer]]) -> None:
    server = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, answer = parse_answer(await read_until_closed(reader))
    writer.close()
    assert status == 200
    assert answer["status"] == "ok"


@pytest.mark.both_event_loops
@pytest.mark.parametrize("trickle", [False, True])
async def test_a_client_that_does_not_finish_its_headers_is_disconnected(
    serve: Callable[..., Awaitable[GatewayServer]], trickle: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(header_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/agent/A12345678/spe")

    async def dribble() -> None:
        for byte in b"ak HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
            await asyncio.sleep(0.02)
            writer.write(bytes([byte]))

    dribbling = asyncio.create_task(dribble()) if trickle else None
    with caplog.at_level(logging.INFO, logger="imaginex_context_plugin"):
        answer = await read_until_closed(reader)  # fails the test if the server never closes
    if dribbling is not None:
        dribbling.cancel()
    writer.close()
    assert answer == b""
    assert server.open_connections == 0
    assert "connection closed: no complete request headers in time" in caplog.messages


@pytest.mark.both_event_loops
async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(
    serve: Callable[..., Awaitable[GatewayServer]], caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(header_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    with caplog.at_level(logging.DEBUG, logger="imaginex_context_plugin"):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = parse_answer(await read_until_closed(reader))
    writer.close()
    assert status == 200
    # routine (every agent's reply connection goes this way): closed cleanly, DEBUG only
    closes = [(r.levelno, r.getMessage()) for r in caplog.records if "closed" in r.getMessage()]
    assert closes == [(logging.DEBUG, "idle connection closed")]


@pytest.mark.both_event_loops
async def test_a_body_that_does_not_arrive_is_a_408_and_the_connection_closes(
    serve: Callable[..., Awaitable[GatewayServer]],
) -> None:
    server = await serve(app_options={"body_timeout": 0.3}, header_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(speak_head(SECRET.encode(), b"x" * 100) + b"\r\n" + b'{"message": ')
    status, headers, answer = parse_answer(await read_until_closed(reader))
    writer.close()
    assert status == 408
    assert answer["error"] == "REQUEST_TIMEOUT"
    assert headers["connection"] == "close"


@pytest.mark.both_event_loops
async def test_connections_over_the_limit_are_refused_with_503(
    serve: Callable[..., Awaitable[GatewayServer]],
) -> None:
    server = await serve(max_connections=2, header_timeout=30)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    await wait_until(lambda: server.open_connections == 2)

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    status, headers, answer = parse_answer(await read_until_closed(reader))
    writer.close()
    assert status == 503
    assert answer == {
        "success": False,
        "error": "TOO_MANY_CONNECTIONS",
        "message": "The gateway has too many open connections; retry after Retry-After seconds.",
    }
    assert headers["retry-after"] == "1"
    assert server.refused_connections == 1

    # a freed slot serves again
    held[0][1].close()
    await wait_until(lambda: server.open_connections == 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, _, _ = parse_answer(await read_until_closed(reader))
    writer.close()
    held[1][1].close()
    assert status == 200


@pytest.mark.parametrize(
    "options",
    [{"header_timeout": 0}, {"header_timeout": float("nan")}, {"max_connections": 0}],
)
async def test_bad_server_limits_are_refused(fleet: Fleet, options: dict[str, Any]) -> None:
    app = create_app(fleet.backend(), ApiSecrets(secret=SECRET))
    with pytest.raises(ValueError, match="must be"):
        await start_gateway_server(app, host="127.0.0.1", port=0, **options)


@pytest.mark.parametrize("body_timeout", [0, -1, float("nan"), float("inf")])
def test_bad_body_timeouts_are_refused(fleet: Fleet, body_timeout: float) -> None:
    with pytest.raises(ValueError, match="body_timeout must be"):
        create_app(fleet.backend(), ApiSecrets(secret=SECRET), body_timeout=body_timeout)


def test_an_answer_too_large_to_keep_is_not_kept() -> None:
    from aiohttp import web

    from imaginex_context_plugin.gateway.http.idempotency import MAX_KEPT_ANSWER_BYTES, to_store

    fits = web.Response(body=b"x" * MAX_KEPT_ANSWER_BYTES, headers={"Retry-After": "3"})
    over = web.Response(body=b"x" * (MAX_KEPT_ANSWER_BYTES + 1))
    kept = to_store(fits)
    assert kept is not None
    assert kept.headers == {"Retry-After": "3"}
    # its repeats deliver again instead, and the agents answer them as duplicates
    assert to_store(over) is None


# ---------------------------------------------------------------------------------------------
# a body whose Content-Encoding does not decode: a client error on every route, never a 500

COMPRESSED_SECRET = "compressed-bodies-signing-secret-0123456789"


def _corrupted(data: bytes) -> bytes:
    return data[:12] + b"\x00" * 8 + data[20:]


BROKEN_BODIES = [
    pytest.param("gzip", b"this is not gzip at all", id="gzip-garbage"),
    # a real gzip stream with its middle overwritten: the CRC check fails at the end
    pytest.param("gzip", _corrupted(gzip.compress(b'{"message": "' + b"a" * 80 + b'"}')),
                 id="gzip-corrupt"),
    pytest.param("deflate", b"\x78\x9c this is not deflate", id="deflate-garbage"),
    pytest.param("deflate", b"\xff\xff\xff\xff\xff\xff", id="deflate-raw-garbage"),
]


def _every_route() -> list[tuple[str, str, dict[str, str], set[int]]]:
    """(method, path, headers, acceptable statuses) for every route the full gateway serves."""
    api_routes = [f"/v1/agent/{CODE}/{name}" for name in ("speak", "add-context")]
    api_routes += [f"/v1/agent/{CODE}/{endpoint}" for endpoint in CONTROL_BODIES.values()]
    routes = [("POST", path, HEADERS, {400}) for path in api_routes]
    routes += [
        # reachable by anyone with a non-empty Authorization header
        ("POST", WEBHOOK_PATH, {"Authorization": "x"}, {401}),
        # routes that read no body answer as they would without one
        ("GET", f"/v1/agent/{CODE}/events?room_id=nowhere", HEADERS, {404}),
        ("GET", "/healthz", {}, {200}),
        ("GET", "/openapi.json", {}, {200}),
    ]
    return routes


@pytest.fixture
async def full_gateway(fleet: Fleet, make_gateway: GatewayFactory) -> Client:
    """The gateway with every route: the agent directory (the webhook route) and a room holder
    (the events route)."""
    backend = fleet.backend(agent_directory=MemoryAgentDirectory())
    client: Client = await make_gateway(backend=backend, signing_secret=COMPRESSED_SECRET)
    return client


@pytest.mark.parametrize(("encoding", "body"), BROKEN_BODIES)
async def test_a_body_that_does_not_decompress_is_a_client_error_on_every_route(
    full_gateway: Client, caplog: pytest.LogCaptureFixture, encoding: str, body: bytes
) -> None:
    routes = _every_route()
    served = {
        (route.method, route.resource.canonical)
        for route in full_gateway.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    tried = {
        (method, path.split("?")[0].replace(CODE, "{agent_code}")) for method, path, *_ in routes
    }
    assert served == tried  # the table covers every route

    for method, path, headers, statuses in routes:
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            response = await full_gateway.request(
                method,
                path,
                data=body,
                headers={
                    **headers,
                    "Content-Type": "application/json",
                    "Content-Encoding": encoding,
                },
            )
            answer = await response.json()
        assert response.status in statuses, (path, response.status, answer)
        unreadable = f"Request body is not valid {encoding} data (Content-Encoding)."
        if response.status == 400:
            assert answer == {"success": False, "error": "VALIDATION_ERROR", "message": unreadable}
        if response.status == 401 and method == "POST":
            assert answer == {"success": False, "error": "UNAUTHORIZED", "message": unreadable}
        # aiohttp's parser stops at the broken body: nothing more can be read on this connection
        assert response.headers.get("Connection", "").lower() == "close", path
        # one line (the access line, at INFO), nothing at WARNING or above from anyone
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        ours = [r for r in caplog.records if r.name.startswith("imaginex_context_plugin")]
        info = [r for r in ours if r.levelno >= logging.INFO]
        assert len(info) == 1, (path, [r.getMessage() for r in ours])
        if response.status >= 400:  # and says why
            line = info[0].__dict__
            assert answer["error"] == line["error"] or answer["message"] == line["reason"], path


async def test_a_body_that_does_decompress_is_read(full_gateway: Client) -> None:
    for encoding, packed in (
        ("gzip", gzip.compress(b'{"message": "Hi"}')),
        ("deflate", zlib.compress(b'{"message": "Hi"}')),
    ):
        response = await full_gateway.post(
            SPEAK,
            data=packed,
            headers={**HEADERS, "Content-Type": "application/json", "Content-Encoding": encoding},
        )
        # read and valid: no agent is live
        assert (response.status, (await response.json())["error"]) == (404, "NO_ACTIVE_ROOMS")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x00", id="gzip-cut-before-its-first-block"),
        pytest.param(gzip.compress(b"")[:6], id="gzip-header-only"),
        pytest.param(gzip.compress(b""), id="gzip-of-nothing"),
    ],
)
async def test_a_compressed_body_that_decodes_to_nothing_is_refused(
    full_gateway: Client, body: bytes
) -> None:
    """Found by the schemathesis fuzz: aiohttp reads a gzip stream cut before its first block
    as an empty body, without an error, and a route whose fields are all optional
    (get-history) took it as ``{}``, 200."""
    message = (
        "Request body is empty once decompressed (gzip); send a JSON object, or send it "
        "without Content-Encoding."
    )
    for path in (f"/v1/agent/{CODE}/get-history", SPEAK):
        response = await full_gateway.post(
            path,
            data=body,
            headers={**HEADERS, "Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        answer = await response.json()
        assert (response.status, answer) == (
            400,
            {"success": False, "error": "VALIDATION_ERROR", "message": message},
        ), path


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # a route that reads no body
        # refused before its body is read
        b"POST " + SPEAK.encode() + b" HTTP/1.1\r\nHost: x\r\napi-secret: wrong\r\n",
    ],
)
async def test_an_unread_body_that_fails_to_decode_after_the_answer_is_not_an_error(
    serve: Callable[..., Awaitable[GatewayServer]],
    caplog: pytest.LogCaptureFixture,
    head: bytes,
) -> None:
    """The body comes after the answer: aiohttp's own read of the rest meets the broken data."""
    server = await serve()
    body = b"this is not gzip at all"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    with caplog.at_level(logging.DEBUG):
        writer.write(
            head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(body)
        await read_until_closed(reader)  # the connection is let go
    writer.close()
    assert answer_head.split(b" ")[1] in (b"200", b"401")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    ours = [r for r in caplog.records if r.name.startswith("imaginex_context_plugin")]
    assert len([r for r in ours if r.levelno >= logging.INFO]) == 1
