"""The gateway fuzzed from its own OpenAPI document, with schemathesis, over real sockets.

The document is the one the running gateway serves (``GET /openapi.json``), and every operation
in it is fuzzed against the real aiohttp application on 127.0.0.1: the API calls, the events
stream, the health check, the document itself, LiveKit's webhook and the agents' reply route.
Behind the gateway are real agents (``AgentSession`` + ``ContextPlugin``) in rooms on the relay
network (``tests/gateway_fixtures.py``), so that a well-formed call is delivered and answered.
Two gateways: one delivering over room connections (RPC), one through the server API with the
agents answering over HTTP (``ServerApiBackend``; its ``SendData`` goes onto the relay).

Cases are aimed at the agents (their code, their room, a valid api-secret; the webhook and
reply bodies validly signed half the time) or anything at all, positive and negative, and a
body is sometimes sent gzip- or deflate-compressed, or said to be gzip and not. Each must
get an answer the document allows (schemathesis' default checks): never a 500, a documented
status, content type, headers and body schema, schema-violating input refused, auth enforced;
and the gateway logs nothing at ERROR (a 500 nobody saw is still one). Two defaults are set to
what the document says rather than loosened: 502, 503 and 504 are documented answers (the agent
refused, not ready or LiveKit away, no answer in time), and "every schema-valid body is
accepted" is off, because JSON Schema cannot say "visible text" or "fits one 15 KiB packet".
Where the gateway and the document disagreed, the one that was wrong was fixed; each such case
is also pinned below, by hand. 25 cases per operation keep the module to seconds.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from logging import ERROR
from typing import Any

import aiohttp
import jsonschema_rs
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from livekit import api
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from schemathesis.core.parameters import ParameterLocation

from imaginex_context_plugin._livekit.send_data import DataSender
from imaginex_context_plugin.gateway import (
    ApiSecrets,
    GatewayServer,
    create_app,
    start_gateway_server,
)
from imaginex_context_plugin.gateway.delivery import REPLIES_PATH, ServerApiBackend
from imaginex_context_plugin.gateway.directory import MemoryAgentDirectory
from imaginex_context_plugin.gateway.directory.webhook import WEBHOOK_PATH
from imaginex_context_plugin.replies import (
    REPLY_SIGNATURE_HEADER,
    REPLY_TIMESTAMP_HEADER,
    reply_signature,
)
from tests.fakes import RelayNetwork
from tests.gateway_fixtures import CODE, GATEWAY, ROOM_1, ROOM_2, SECRET, SETTINGS, Fleet

SIGNING = "fuzz-signing-secret-0123456789abcdef"
CASES_PER_OPERATION = 25
"""Generated cases per operation and gateway: enough to find a schema mismatch, and the whole
module stays within seconds."""


class RelayDataSender(DataSender):
    """``RoomService.SendData`` as the server does it, onto the relay network: a packet without
    a participant to the destinations; a room nobody is in is Twirp ``not_found``."""

    def __init__(self, network: RelayNetwork) -> None:
        super().__init__(SETTINGS)
        self._network = network

    async def send(
        self,
        room: str,
        data: bytes,
        *,
        destination_identities: Sequence[str],
        topic: str,
        timeout: float,
    ) -> None:
        if not self._network.rooms(room):
            raise api.TwirpError("not_found", "requested room does not exist", status=404)
        await self._network.send_server_data(
            room, data, topic=topic, destination_identities=destination_identities
        )

    async def aclose(self) -> None:
        return None


@dataclass
class Served:
    base_url: str
    server: GatewayServer
    app: web.Application


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _gateway(fleet: Fleet, delivery: str) -> Served:
    """A gateway on 127.0.0.1 with two agents behind it: ``plain`` (room connections, agents
    found by listing rooms), ``rooms`` (room connections, an agent directory kept from
    LiveKit's webhooks) or ``server-api`` (``SendData`` and replies over HTTP, the directory
    too). Each serves every route it can."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    for room in (ROOM_1, ROOM_2):
        await fleet.agent(
            room,
            permissions={GATEWAY: {"*"}},
            secret=SIGNING,
            reply_urls=[base_url + "/v1/internal/"],
            rate_limit=None,
        )
    backend: Any = fleet.backend(
        agent_directory=None if delivery == "plain" else MemoryAgentDirectory()
    )
    if delivery == "server-api":
        backend = ServerApiBackend(
            backend,
            SETTINGS,
            signing_secret=SIGNING,
            public_url=base_url,
            data_sender=RelayDataSender(fleet.network),
        )
    app = create_app(
        backend,
        ApiSecrets(secret=SECRET),
        signing_secret=SIGNING,
        delivery_timeout=2.0,
        # no throttling: every case should reach the step it was made for
        rate_limit=None,
        auth_failure_limit=None,
    )
    server = await start_gateway_server(app, host="127.0.0.1", port=port)
    return Served(base_url, server, app)


@pytest.fixture
async def make_served(fleet: Fleet) -> AsyncIterator[Callable[[str], Awaitable[Served]]]:
    built: list[Served] = []

    async def build(delivery: str) -> Served:
        built.append(await _gateway(fleet, delivery))
        return built[-1]

    yield build
    for served in built:
        await served.server.aclose()


# ---------------------------------------------------------------------------------------------
# signing what needs a signature, so that the fuzz gets past it


def _webhook_jwt(body: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(SETTINGS.api_key, SETTINGS.api_secret).with_sha256(digest).to_jwt()


def _signatures(path: str, body: bytes) -> dict[str, str]:
    """The headers that sign ``body`` as ``path`` wants it signed (none for the API routes)."""
    if path == WEBHOOK_PATH:
        return {"Authorization": _webhook_jwt(body)}
    if path == REPLIES_PATH:
        stamp = int(time.time())
        return {
            REPLY_TIMESTAMP_HEADER: str(stamp),
            REPLY_SIGNATURE_HEADER: reply_signature(body, stamp, SIGNING),
        }
    return {}


ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "broken": lambda body: body,  # said to be gzip, sent as it is
}
"""How a body may go (``Content-Encoding``, which the document leaves to HTTP): aiohttp
decompresses what it is told is compressed, and data that does not decompress is the
client's error on every route."""


def _sent_body(
    case: schemathesis.Case, *, sign: bool, encoding: str | None
) -> tuple[dict[str, str], bytes] | None:
    """Headers and bytes sending ``case``'s JSON body signed (the webhook and reply routes)
    and or compressed; None to let schemathesis send it as it is."""
    if not (sign or encoding) or isinstance(case.body, NotSet) or case.media_type is None:
        return None
    if isinstance(case.body, bytes):  # a negative case's raw body
        body = case.body
    else:
        try:  # what requests sends for json=
            body = json.dumps(case.body, allow_nan=False).encode()
        except (TypeError, ValueError):
            return None
    headers = {"Content-Type": case.media_type}
    if sign:
        headers.update(_signatures(case.operation.path, body))
    if encoding is not None:
        body = ENCODINGS[encoding](body)
        headers["Content-Encoding"] = "deflate" if encoding == "deflate" else "gzip"
    return headers, body


def _strategy(operation: Any) -> Any:
    """(case, aimed): cases aimed at the agents behind the gateway (its agent code, their
    rooms; sent with a valid api-secret), their negations, and anything at all."""
    aimed: dict[str, Any] = {}
    if any(p.name == "agent_code" for p in operation.path_parameters):
        aimed["path_parameters"] = {"agent_code": CODE}
    if any(p.name == "room_id" for p in operation.query):
        aimed["query"] = {"room_id": ROOM_1}
    return st.one_of(
        st.tuples(operation.as_strategy(**aimed), st.just(True)),
        st.tuples(operation.as_strategy(GenerationMode.NEGATIVE, **aimed), st.just(True)),
        st.tuples(operation.as_strategy(), st.booleans()),
    )


CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # a 5xx the document names is an answer (502 the agent refused, 503 not ready or
            # LiveKit unreachable, 504 no answer in time); 500 never is
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503", "504"]},
            # "any schema-valid body is accepted" cannot hold: text must be visible and valid
            # Unicode, a message must fit one 15 KiB packet; JSON Schema says neither
            "positive_data_acceptance": {"enabled": False},
        }
    }
)


def _order(operation: Any) -> int:
    """What can end the call (speak's end_call_after, end-call) and LiveKit's webhook (which
    may say the rooms finished) go last: the other operations should meet live agents."""
    path: str = operation.path
    last = ("/speak", WEBHOOK_PATH, "/end-call")
    return next((n + 1 for n, end in enumerate(last) if path.endswith(end)), 0)


def _fuzz(base_url: str) -> list[str]:
    """Fuzz every operation of the served document; the failures, one per operation (each
    the smallest case hypothesis found)."""
    session = requests.Session()
    # the document as served; from_url would leave out the route that serves it
    served = session.get(base_url + "/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(served, config=CONFIG)
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=_order)
    failures: list[str] = []
    for operation in operations:
        try:
            _fuzz_operation(operation, base_url, session)
        except Exception as exc:  # the next operations are fuzzed all the same
            failures.append(f"{operation.label}: {exc}")
    return failures


def _fuzz_operation(operation: Any, base_url: str, session: requests.Session) -> None:
    secured = operation.definition.raw.get("security") == [{"apiSecret": []}]
    # a stream that opened is read for half a second: that it opens is what counts
    timeout = 0.5 if operation.path.endswith("/events") else 5.0

    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        generated=_strategy(operation),
        sign=st.booleans(),
        encoding=st.sampled_from([None, None, None, *ENCODINGS]),
    )
    def run(generated: tuple[schemathesis.Case, bool], sign: bool, encoding: str | None) -> None:
        case, aimed = generated
        # a case whose headers were made invalid on purpose keeps them as they are
        negated = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
        headers = {"api-secret": SECRET} if aimed and secured and not negated else {}
        sent = _sent_body(case, sign=sign, encoding=encoding)
        body: dict[str, bytes] = {}
        if sent is not None:
            headers.update(sent[0])
            body["data"] = sent[1]
        response = case.call(base_url, session, headers=headers, timeout=timeout, **body)
        case.validate_response(response, headers=headers)

    run()


@pytest.mark.parametrize("delivery", ["rooms", "server-api"])
async def test_every_operation_answers_as_its_openapi_document_says(
    make_served: Callable[[str], Awaitable[Served]],
    delivery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await make_served(delivery)
    with caplog.at_level(ERROR):
        failures = await asyncio.to_thread(_fuzz, gateway.base_url)
    # a 500 the client never saw (it had gone) is one all the same
    failures += [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= ERROR]
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("delivery", ["plain", "rooms", "server-api"])
async def test_the_document_names_every_route_served_and_nothing_else(
    make_served: Callable[[str], Awaitable[Served]], delivery: str
) -> None:
    gateway = await make_served(delivery)
    async with aiohttp.ClientSession() as http:
        document = await (await http.get(gateway.base_url + "/openapi.json")).json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = {
        (route.method, route.resource.canonical)
        for route in gateway.app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # HEAD: aiohttp's, with GET
    }
    assert documented == served


# ---------------------------------------------------------------------------------------------
# where the fuzz found the document and the gateway disagreeing: both, case by case


def _valid(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> bool:
    return bool(
        jsonschema_rs.validator_for({**schema, "components": document["components"]}).is_valid(
            instance
        )
    )


DISAGREEMENTS: list[tuple[str, str, dict[str, str], Any, int, bool]] = [
    # (case, endpoint, extra headers, body, the gateway's status, the document's verdict)
    ("update-io with no switch", "update-io", {}, {}, 400, False),
    ("update-io with only nulls", "update-io", {}, {"agent_audio": None, "user_audio": None},
     400, False),
    ("update-io with one switch", "update-io", {}, {"transcription": False}, 200, True),
    ("an empty Idempotency-Key", "interrupt", {"Idempotency-Key": ""}, {}, 400, False),
    ("a blank Idempotency-Key", "interrupt", {"Idempotency-Key": "\t"}, {}, 400, False),
    ("a 129-character Idempotency-Key", "interrupt", {"Idempotency-Key": "k" * 129}, {}, 400,
     False),
    ("a 128-character Idempotency-Key", "interrupt", {"Idempotency-Key": "k" * 128}, {}, 200,
     True),
]


@pytest.mark.parametrize(
    ("endpoint", "headers", "body", "status", "documented"),
    [case[1:] for case in DISAGREEMENTS],
    ids=[case[0] for case in DISAGREEMENTS],
)
async def test_the_document_refuses_what_the_gateway_refuses(
    make_served: Callable[[str], Awaitable[Served]],
    endpoint: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    documented: bool,
) -> None:
    gateway = await make_served("plain")
    path = f"/v1/agent/{{agent_code}}/{endpoint}"
    async with aiohttp.ClientSession() as http:
        document = await (await http.get(gateway.base_url + "/openapi.json")).json()
        response = await http.post(
            gateway.base_url + path.format(agent_code=CODE),
            json=body,
            headers={"api-secret": SECRET, **headers},
        )
        assert response.status == status, await response.text()
    operation = document["paths"][path]["post"]
    verdicts = [_valid(document, operation["requestBody"]["content"]["application/json"]["schema"],
                       body)]
    for parameter in operation["parameters"]:
        if parameter["in"] == "header" and parameter["name"] in headers:
            verdicts.append(_valid(document, parameter["schema"], headers[parameter["name"]]))
    assert all(verdicts) is documented


@pytest.mark.parametrize(
    "event",
    [
        {"event": "participant_joined", "room": {"name": None}, "participant": {"kind": 4}},
        {"event": "room_finished", "room": {"name": "r", "sid": None}, "participant": None},
        {"event": "something_new", "id": None, "participant": {"attributes": None}},
    ],
    ids=["null name, kind by number", "null sid and participant", "unknown event, null map"],
)
async def test_the_document_accepts_what_the_webhook_accepts(
    make_served: Callable[[str], Awaitable[Served]], event: dict[str, Any]
) -> None:
    """protobuf's JSON form reads null as a field's default and an enum by its number; the
    document said neither, and the fuzz sent both."""
    gateway = await make_served("rooms")
    body = json.dumps(event).encode()
    async with aiohttp.ClientSession() as http:
        document = await (await http.get(gateway.base_url + "/openapi.json")).json()
        signed = {"Authorization": _webhook_jwt(body), "Content-Type": "application/webhook+json"}
        response = await http.post(gateway.base_url + WEBHOOK_PATH, data=body, headers=signed)
        assert response.status == 200, await response.text()
    operation = document["paths"][WEBHOOK_PATH]["post"]
    schema = operation["requestBody"]["content"]["application/webhook+json"]["schema"]
    assert _valid(document, schema, event)
