"""The operator console's server side (``/console``): its page and files, sign-in and sessions,
CSRF and origin checks, the security headers, the calls list, take-over tokens, the REST API's
routes admitted by session, and tenant isolation, on the gateway's real backend in front of
real agents (``tests/gateway_fixtures.py``).

What a browser does with it is proven in Chromium by ``tests/integration/test_console_live.py``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import time
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from livekit import rtc

from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE
from imaginex_context_plugin.gateway import ApiSecrets, ParticipantSummary
from imaginex_context_plugin.gateway.http.console import (
    CSRF_HEADER,
    OPERATOR_ATTRIBUTE,
    OPERATOR_IDENTITY_PREFIX,
    SESSION_COOKIE,
    ConsoleOptions,
    MemorySessions,
)
from imaginex_context_plugin.gateway.http.console.assets import ConsoleAssets
from imaginex_context_plugin.gateway.http.console.live_calls import calls_in
from imaginex_context_plugin.gateway.http.console.sessions import ConsoleSession, session_key
from imaginex_context_plugin.security import RateLimit
from tests.gateway_fixtures import (
    CODE,
    GATEWAY,
    ROOM_1,
    ROOM_2,
    SECRET,
    SETTINGS,
    Fleet,
    GatewayFactory,
)
from tests.helpers import wait_until

Client = TestClient[web.Request, web.Application]
OTHER_CODE = "B87654321"
TENANT_A = "tenant-a-secret-0123456789"
TENANT_B = "tenant-b-secret-9876543210"
EVERYTHING = {GATEWAY: {"*"}}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_console(fleet: Fleet, make_gateway: GatewayFactory) -> Callable[..., Any]:
    """A gateway serving the console, on a test server; keywords go to ``create_app`` (and
    ``console_options`` to ``ConsoleOptions``)."""

    async def build(
        *, console_options: dict[str, Any] | None = None, **options: Any
    ) -> Client:
        console = ConsoleOptions(
            livekit=SETTINGS, rooms=fleet.directory, **(console_options or {})
        )
        client: Client = await make_gateway(console=console, **options)
        return client

    return build


async def sign_in(client: Client, secret: str = SECRET) -> dict[str, Any]:
    response = await client.post("/console/api/login", json={"api_secret": secret})
    assert response.status == 200, await response.text()
    info: dict[str, Any] = await response.json()
    return info


def two_tenants() -> ApiSecrets:
    return ApiSecrets(per_agent={CODE: TENANT_A, OTHER_CODE: TENANT_B})


# ---------------------------------------------------------------------------------------------
# the page and its files


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: list[tuple[str, str]] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.data.append((self._open[-1], data))


async def test_the_page_has_no_inline_script_or_style_and_a_strict_csp(make_console: Any) -> None:
    client: Client = await make_console()
    response = await client.get("/console")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    policy = response.headers["Content-Security-Policy"]
    csp = dict(part.split(" ", 1) for part in policy.split("; "))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["base-uri"] == "'none'"
    # the gateway and the LiveKit server (take-over), nothing else
    assert csp["connect-src"] == "'self' ws://127.0.0.1:1 http://127.0.0.1:1"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"

    page = _Tags()
    page.feed(await response.text())
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{"type": "module", "src": "console/assets/console.js"}]
    assert not [tag for tag, _ in page.data if tag in ("script", "style")]
    for _, attrs in page.tags:  # no style attribute, no inline event handler
        assert not [name for name in attrs if name == "style" or name.startswith("on")]


async def test_every_file_is_served_with_its_type_gzip_and_etag(make_console: Any) -> None:
    client: Client = await make_console()
    names = ConsoleAssets({}).names
    assert {"index.html", "console.js", "console.css", "favicon.svg"} <= set(names)
    assert any(name.startswith("livekit-client") for name in names)
    response = await client.get("/console/assets/console.js", headers={"Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    body = await response.read()  # aiohttp's client decodes it
    assert b"console/api/" in body
    again = await client.get(
        "/console/assets/console.js", headers={"If-None-Match": response.headers["ETag"]}
    )
    assert again.status == 304
    css = await client.get("/console/assets/console.css")
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    for missing in ("nope.js", "index.html", "..%2F__init__.py", "%2e%2e%2fsessions.py"):
        assert (await client.get(f"/console/assets/{missing}")).status == 404


async def test_console_slash_redirects_to_the_page(make_console: Any) -> None:
    client: Client = await make_console()
    response = await client.get("/console/", allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"] == "/console"


async def test_no_console_unless_asked(make_gateway: Any) -> None:
    client = await make_gateway()
    assert (await client.get("/console")).status == 404
    assert (await client.post("/console/api/login", json={"api_secret": SECRET})).status == 404


# ---------------------------------------------------------------------------------------------
# signing in, sessions


async def test_sign_in_sets_an_httponly_strict_cookie_and_answers_the_csrf_token(
    make_console: Any,
) -> None:
    client: Client = await make_console()
    response = await client.post("/console/api/login", json={"api_secret": SECRET})
    assert response.status == 200
    info = await response.json()
    assert set(info) == {"tenant", "agent_codes", "csrf_token", "expires_at", "idle_timeout_s"}
    assert info["tenant"] == "default"
    assert info["agent_codes"] is None
    assert len(info["csrf_token"]) >= 40
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert "secure" not in attributes  # plain HTTP: a Secure cookie would never come back
    assert SECRET not in cookie
    assert SECRET not in await response.text()
    assert response.headers["Cache-Control"] == "no-store"

    session = await client.get("/console/api/session")
    assert session.status == 200
    assert (await session.json())["csrf_token"] == info["csrf_token"]


async def test_secure_cookies_when_asked(make_console: Any) -> None:
    client: Client = await make_console(console_options={"secure_cookies": True})
    response = await client.post("/console/api/login", json={"api_secret": SECRET})
    assert "Secure" in response.headers["Set-Cookie"]


async def test_a_wrong_secret_is_401_and_failures_are_throttled_with_the_apis(
    make_console: Any,
) -> None:
    client: Client = await make_console(auth_failure_limit=RateLimit(per_second=0.01, burst=3))
    for _ in range(2):
        response = await client.post("/console/api/login", json={"api_secret": "wrong"})
        assert response.status == 401
        assert (await response.json())["error"] == "UNAUTHORIZED"
    # the API's failures and the console's share one budget per address
    api = await client.post(
        f"/v1/agent/{CODE}/interrupt", json={}, headers={"api-secret": "wrong again"}
    )
    assert api.status == 401
    throttled = await client.post("/console/api/login", json={"api_secret": SECRET})
    assert throttled.status == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    assert SESSION_COOKIE not in throttled.headers.get("Set-Cookie", "")


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"api_secret": ""}', b'{"api_secret": 5}', b"[]", b"not json"],
)
async def test_a_malformed_sign_in_is_400(make_console: Any, body: bytes) -> None:
    client: Client = await make_console()
    response = await client.post(
        "/console/api/login", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "VALIDATION_ERROR"


async def test_a_long_wrong_secret_is_never_echoed(make_console: Any) -> None:
    client: Client = await make_console()
    secret = "x" * 5000
    response = await client.post("/console/api/login", json={"api_secret": secret})
    assert response.status == 400
    assert "xxxxxxxx" not in await response.text()


async def test_without_a_session_everything_but_the_page_is_401(make_console: Any) -> None:
    client: Client = await make_console()
    for method, path in [
        ("GET", "/console/api/session"),
        ("GET", "/console/api/calls"),
        ("POST", "/console/api/logout"),
        ("POST", "/console/api/takeover"),
        ("POST", f"/console/api/v1/agent/{CODE}/speak"),
        ("GET", f"/console/api/v1/agent/{CODE}/events?room_id={ROOM_1}"),
    ]:
        response = await client.request(method, path, json={})
        assert response.status == 401, (method, path)
        assert (await response.json())["error"] == "UNAUTHORIZED"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]


async def test_sign_out_ends_the_session(make_console: Any) -> None:
    client: Client = await make_console()
    info = await sign_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/api/"))[
        SESSION_COOKIE
    ].value
    response = await client.post("/console/api/logout", headers={CSRF_HEADER: info["csrf_token"]})
    assert response.status == 200
    assert (await client.get("/console/api/session")).status == 401
    # the old cookie, replayed by someone who kept it, is dead too
    replayed = await client.get(
        "/console/api/session", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
    )
    assert replayed.status == 401


async def test_sessions_end_when_idle_and_after_their_lifetime(make_console: Any) -> None:
    clock = Clock()
    store = MemorySessions(clock=clock)
    client: Client = await make_console(
        console_options={"sessions": store, "session_idle_s": 60.0, "session_max_s": 150.0}
    )
    await sign_in(client)
    clock.now += 50
    assert (await client.get("/console/api/session")).status == 200  # used: idle time restarts
    clock.now += 50
    assert (await client.get("/console/api/session")).status == 200
    clock.now += 61
    assert (await client.get("/console/api/session")).status == 401  # idle too long
    await sign_in(client)
    for _ in range(4):
        clock.now += 40
        status = (await client.get("/console/api/session")).status
    assert status == 401  # used all along, but past its lifetime (150 s)


async def test_the_store_keeps_a_hash_of_the_session_id_not_the_id() -> None:
    store = MemorySessions()
    session = ConsoleSession("default", "csrf", time.time(), time.time() + 60)
    await store.create(session_key("the-cookie-value"), session, idle_s=60)
    assert "the-cookie-value" not in repr(store._sessions)
    assert await store.touch(session_key("the-cookie-value"), idle_s=60) == session


async def test_a_full_memory_store_ends_the_least_recently_used_session() -> None:
    store = MemorySessions(max_sessions=2)
    session = ConsoleSession("default", "csrf", time.time(), time.time() + 60)
    for key in ("a", "b"):
        await store.create(key, session, idle_s=60)
    await store.touch("a", idle_s=60)
    await store.create("c", session, idle_s=60)
    assert len(store) == 2
    assert await store.touch("b", idle_s=60) is None
    assert await store.touch("a", idle_s=60) is not None


async def test_one_tenant_signing_in_over_and_over_ends_only_its_own_sessions() -> None:
    store = MemorySessions(max_sessions=10, max_per_tenant=3)
    now = time.time()
    other = ConsoleSession("tenant-2", "csrf", now, now + 60)
    await store.create("theirs", other, idle_s=60)
    for n in range(8):
        await store.create(f"mine-{n}", ConsoleSession("tenant-1", "c", now, now + 60), idle_s=60)
    assert await store.touch("theirs", idle_s=60) == other
    alive = [n for n in range(8) if await store.touch(f"mine-{n}", idle_s=60) is not None]
    assert alive == [5, 6, 7]


async def test_signing_in_counts_against_the_tenants_rate_limit(make_console: Any) -> None:
    client: Client = await make_console(rate_limit=RateLimit(per_second=0.01, burst=2))
    statuses = [
        (await client.post("/console/api/login", json={"api_secret": SECRET})).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


# ---------------------------------------------------------------------------------------------
# CSRF and origins


async def test_a_state_changing_request_needs_the_csrf_token(
    fleet: Fleet, make_console: Any
) -> None:
    agent = await fleet.agent(ROOM_1)
    client: Client = await make_console()
    info = await sign_in(client)
    path = f"/console/api/v1/agent/{CODE}/speak"
    body = {"message": "Hello from the console.", "room_id": ROOM_1}
    for headers in (
        {},
        {CSRF_HEADER: "wrong"},
        {CSRF_HEADER: info["csrf_token"], "Origin": "http://evil.example"},
        {CSRF_HEADER: info["csrf_token"], "Origin": "null"},
        {CSRF_HEADER: info["csrf_token"], "Sec-Fetch-Site": "cross-site"},
        {CSRF_HEADER: info["csrf_token"], "Sec-Fetch-Site": "same-site"},
    ):
        response = await client.post(path, json=body, headers=headers)
        assert response.status == 403, headers
        assert (await response.json())["error"] == "FORBIDDEN"
    await asyncio.sleep(0.05)
    assert agent.tts.texts == []  # nothing was said

    origin = str(client.make_url("")).rstrip("/")
    response = await client.post(
        path,
        json=body,
        headers={
            CSRF_HEADER: info["csrf_token"], "Origin": origin, "Sec-Fetch-Site": "same-origin"
        },
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["data"]["delivered_to_rooms"] == 1
    await agent.idle()
    assert agent.said() == ["Hello from the console."]


async def test_sign_in_from_another_origin_is_refused(make_console: Any) -> None:
    client: Client = await make_console()
    response = await client.post(
        "/console/api/login",
        json={"api_secret": SECRET},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert response.status == 403
    assert "Set-Cookie" not in response.headers


async def test_the_cookie_is_no_credential_for_the_rest_api(
    fleet: Fleet, make_console: Any
) -> None:
    await fleet.agent(ROOM_1)
    client: Client = await make_console()
    info = await sign_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/api/"))[
        SESSION_COOKIE
    ].value
    response = await client.post(
        f"/v1/agent/{CODE}/speak",
        json={"message": "hi"},
        headers={"Cookie": f"{SESSION_COOKIE}={cookie}", CSRF_HEADER: info["csrf_token"]},
    )
    assert response.status == 401


# ---------------------------------------------------------------------------------------------
# the REST API's routes, by session


async def test_every_control_goes_through_the_session_and_reaches_the_agent(
    fleet: Fleet, make_console: Any
) -> None:
    agent = await fleet.agent(ROOM_1, permissions=EVERYTHING)
    client: Client = await make_console()
    csrf = {CSRF_HEADER: (await sign_in(client))["csrf_token"]}
    base = f"/console/api/v1/agent/{CODE}"

    async def post(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(
            f"{base}/{endpoint}", json={**body, "room_id": ROOM_1}, headers=csrf
        )
        assert response.status == 200, (endpoint, await response.text())
        answer: dict[str, Any] = await response.json()
        return answer

    await post("add-context", {"context": "Order 42 shipped today.", "key": "order"})
    assert agent.context() == ["Order 42 shipped today."]
    state = (await post("get-state", {}))["data"]["rooms"][0]["result"]["state"]
    assert [e["key"] for e in state["context_entries"]] == ["order"]
    await post("remove-context", {"key": "order"})
    assert agent.context() == []
    io = (await post("update-io", {"agent_audio": False, "user_audio": False}))
    assert io["data"]["rooms"][0]["result"]["io"]["agent_audio"] is False
    await post("update-io", {"agent_audio": True, "user_audio": True})
    await post("update-instructions", {"instructions": "Be brief.", "mode": "append"})
    await post("reset-instructions", {})
    await post("speak", {"message": "One moment please.", "mode": "interrupt"})
    await agent.idle()
    assert "One moment please." in agent.said()


async def test_the_events_stream_by_session_and_sign_out_ends_it(
    fleet: Fleet, make_console: Any
) -> None:
    agent = await fleet.agent(ROOM_1, permissions=EVERYTHING)
    client: Client = await make_console()
    csrf = {CSRF_HEADER: (await sign_in(client))["csrf_token"]}
    stream = await client.get(
        f"/console/api/v1/agent/{CODE}/events",
        params={"room_id": ROOM_1, "playout": "true", "events": "agent_transcript"},
    )
    assert stream.status == 200
    assert stream.headers["Content-Type"] == "text/event-stream"
    await wait_until(lambda: agent.plugin.subscribers == [GATEWAY])
    speak = await client.post(
        f"/console/api/v1/agent/{CODE}/speak",
        json={"message": "Still there?", "room_id": ROOM_1},
        headers={**csrf, "Idempotency-Key": "console-1"},
    )
    assert speak.status == 200
    names: list[str] = []
    async for raw in stream.content:
        line = raw.decode().strip()
        if line.startswith("event: "):
            names.append(line[7:])
        if names[-1:] == ["agent_transcript"]:
            break
    assert names == ["speech_started", "speech_finished", "agent_transcript"] or names == [
        "speech_started", "agent_transcript"
    ]

    await client.post("/console/api/logout", headers=csrf)
    # the stream is cut at once (not ended as after a call: no call_ended comes)
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(stream.content.read(), 5)
    await wait_until(lambda: agent.plugin.subscribers == [])


async def test_an_events_stream_ends_once_its_session_has_ended(
    fleet: Fleet, make_console: Any
) -> None:
    agent = await fleet.agent(ROOM_1, permissions=EVERYTHING)
    clock = Clock()
    client: Client = await make_console(
        console_options={
            "sessions": MemorySessions(clock=clock),
            "session_idle_s": 60.0,
            "stream_check_s": 0.05,
        }
    )
    await sign_in(client)
    stream = await client.get(
        f"/console/api/v1/agent/{CODE}/events", params={"room_id": ROOM_1}
    )
    assert stream.status == 200
    await wait_until(lambda: agent.plugin.subscribers == [GATEWAY])
    await asyncio.sleep(0.2)  # checked a few times: the session is alive, the stream stays
    assert not stream.content.at_eof()
    clock.now += 61  # the session has been idle too long
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(stream.content.read(), 5)
    await wait_until(lambda: agent.plugin.subscribers == [])


async def test_console_requests_count_against_the_tenants_rate_limit(
    fleet: Fleet, make_console: Any
) -> None:
    await fleet.agent(ROOM_1)
    # the sign-in is one request of the three the burst allows
    client: Client = await make_console(rate_limit=RateLimit(per_second=0.01, burst=3))
    csrf = {CSRF_HEADER: (await sign_in(client))["csrf_token"]}
    statuses = [
        (
            await client.post(
                f"/console/api/v1/agent/{CODE}/interrupt", json={"room_id": ROOM_1}, headers=csrf
            )
        ).status
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


# ---------------------------------------------------------------------------------------------
# the calls list


def test_calls_in_a_room_leave_out_senders_and_count_operators() -> None:
    agent = ParticipantSummary(
        "agent-1",
        {AGENT_CODE_ATTRIBUTE: CODE, "lk.agent.state": "speaking"},
        rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        joined_at=1700000000.0,
    )
    gateway = ParticipantSummary(GATEWAY, {"imaginex.sender": "1"})
    caller = ParticipantSummary("caller-7", {})
    operator = ParticipantSummary(OPERATOR_IDENTITY_PREFIX + "abc", {OPERATOR_ATTRIBUTE: "t"})
    [call] = calls_in("room-9", [gateway, agent, caller, operator])
    assert call.to_json() == {
        "room": "room-9",
        "agent_code": CODE,
        "agent_identity": "agent-1",
        "agent_state": "speaking",
        "started_at": 1700000000.0,
        "users": ["caller-7"],
        "operators": 1,
    }
    assert calls_in("room-9", [gateway, caller]) == []


async def test_the_calls_list_shows_each_tenant_its_own_agents_only(
    fleet: Fleet, make_console: Any
) -> None:
    await fleet.agent(ROOM_1)
    await fleet.agent(ROOM_2, code=OTHER_CODE)
    fleet.human(ROOM_1, "caller-1")
    client: Client = await make_console(secrets=two_tenants())

    await sign_in(client, TENANT_A)
    calls = (await (await client.get("/console/api/calls")).json())["calls"]
    assert [(c["room"], c["agent_code"], c["users"]) for c in calls] == [
        (ROOM_1, CODE, ["caller-1"])
    ]
    assert calls[0]["agent_state"] == "unknown"  # these agents have no RoomIO publishing it

    other = await make_console(secrets=two_tenants())
    await sign_in(other, TENANT_B)
    calls = (await (await other.get("/console/api/calls")).json())["calls"]
    assert [(c["room"], c["agent_code"]) for c in calls] == [(ROOM_2, OTHER_CODE)]


async def test_one_tenant_cannot_reach_anothers_calls(fleet: Fleet, make_console: Any) -> None:
    agent = await fleet.agent(ROOM_1, permissions=EVERYTHING)
    client: Client = await make_console(secrets=two_tenants())
    csrf = {CSRF_HEADER: (await sign_in(client, TENANT_B))["csrf_token"]}
    base = f"/console/api/v1/agent/{CODE}"
    for method, path, body in [
        ("POST", f"{base}/speak", {"message": "hi", "room_id": ROOM_1}),
        ("POST", f"{base}/get-state", {"room_id": ROOM_1}),
        ("POST", f"{base}/end-call", {"room_id": ROOM_1}),
        ("GET", f"{base}/events?room_id={ROOM_1}", None),
        ("POST", "/console/api/takeover", {"agent_code": CODE, "room_id": ROOM_1}),
    ]:
        response = await client.request(method, path, json=body, headers=csrf)
        assert response.status == 404, path
        assert (await response.json())["error"] == "AGENT_NOT_FOUND"
    assert agent.plugin.subscribers == []
    assert agent.said() == []


# ---------------------------------------------------------------------------------------------
# take-over tokens


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


async def test_a_takeover_token_is_for_that_room_a_microphone_and_no_data(
    fleet: Fleet, make_console: Any
) -> None:
    await fleet.agent(ROOM_1)
    client: Client = await make_console(
        console_options={"public_livekit_url": "wss://livekit.example.com"}
    )
    csrf = {CSRF_HEADER: (await sign_in(client))["csrf_token"]}
    response = await client.post(
        "/console/api/takeover", json={"agent_code": CODE, "room_id": ROOM_1}, headers=csrf
    )
    assert response.status == 200, await response.text()
    token = await response.json()
    assert token["url"] == "wss://livekit.example.com"
    assert token["room"] == ROOM_1
    assert re.fullmatch(OPERATOR_IDENTITY_PREFIX + "[0-9a-f]{12}", token["identity"])
    claims = _claims(token["token"])
    assert claims["sub"] == token["identity"]
    assert claims["attributes"] == {OPERATOR_ATTRIBUTE: "default"}
    assert claims["exp"] - claims["nbf"] <= 600
    video = claims["video"]
    assert video["room"] == ROOM_1
    assert video["roomJoin"] is True
    assert video["canPublish"] is True
    assert video["canPublishSources"] == ["microphone"]
    assert video["canPublishData"] is False
    assert video["canSubscribe"] is True
    assert video.get("canUpdateOwnMetadata", False) is False
    assert not {"roomAdmin", "roomCreate", "roomList", "roomRecord", "agent"} & {
        k for k, v in video.items() if v
    }
    assert "Content-Security-Policy" in response.headers
    assert "wss://livekit.example.com" in response.headers["Content-Security-Policy"]

    # two take-overs, two identities: no agent can have one in its allowed_identities
    again = await client.post(
        "/console/api/takeover", json={"agent_code": CODE, "room_id": ROOM_1}, headers=csrf
    )
    assert (await again.json())["identity"] != token["identity"]


async def test_no_takeover_token_for_a_room_without_the_agent_or_without_csrf(
    fleet: Fleet, make_console: Any
) -> None:
    await fleet.agent(ROOM_1)
    fleet.human(ROOM_2)
    client: Client = await make_console()
    csrf = {CSRF_HEADER: (await sign_in(client))["csrf_token"]}
    response = await client.post(
        "/console/api/takeover", json={"agent_code": CODE, "room_id": ROOM_2}, headers=csrf
    )
    assert response.status == 404
    no_csrf = await client.post(
        "/console/api/takeover", json={"agent_code": CODE, "room_id": ROOM_1}
    )
    assert no_csrf.status == 403


def test_the_committed_build_is_small_and_gzips(make_console: Any) -> None:
    # the figure is printed; the budget itself is checked against a fresh build in
    # tests/test_console_assets.py
    assets = ConsoleAssets({})
    loaded = assets._load()
    own = sum(
        len(gzip.compress(loaded[name].body, 9)) for name in ("console.js", "console.css")
    )
    print(f"console's own JS + CSS: {own} bytes gzip")
    assert own <= 60 * 1024
