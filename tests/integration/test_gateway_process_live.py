"""The ``imaginex-context gateway`` process against a real ``livekit-server``, three rooms with the
same agent code, and the platform's documentation run against it.

Every example of ``/work/shared/reference/agent-context-api.md`` (the platform's public Agent
Context API page) that can run runs here, unchanged but for the base URL, the secret, the agent
code and the room names (mapped onto our three rooms):

- its request bodies, sent with ``curl`` and the documented headers to the documented endpoint,
  get the documented response (same fields and values, timestamps aside);
- its Python examples run with this interpreter (``requests``); examples that only define
  functions get a line calling them;
- its JavaScript examples run with Node's ``fetch`` (skipped without ``node``);
- its error responses are what the gateway answers.

The examples of the "Integration Patterns" section need Flask, a CRM client and an analytics
client that are not ours, so they are not run. What the agents said and hold is checked in the
real ``AgentSession`` of each room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.gateway_process import gateway_env, start_gateway, until_serving
from devtools.livekit_server import ServerInfo, free_tcp_port
from devtools.processes import stop_process
from imaginex_context_plugin.gateway import DEFAULT_GATEWAY_IDENTITY
from tests.helpers import wait_until
from tests.integration.live import LiveAgent, live_agent

REFERENCE = Path("/work/shared/reference/agent-context-api.md")
SECRET = "live-gateway-process-secret-5d1e"
BLOCK = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENDPOINT = re.compile(r"^POST (/v1/agent/\{agent_code\}/[\w-]+)$", re.MULTILINE)
STOP_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 60.0
ROOMS = 3
# the documentation's room names, mapped onto our three rooms (by index)
DOC_ROOMS = {
    "room_123": 0,
    "room_456": 1,
    "customer_session_1": 0,
    "order_confirmation_room": 1,
    "vip_customer_session": 2,
    "support_session_1": 0,
    "room_1": 0,
    "room_2": 1,
    "room_3": 2,
}
DOC_AGENT_CODES = ("A12345678", "SUPPORT_AGENT")

pytestmark = pytest.mark.skipif(not REFERENCE.exists(), reason=f"{REFERENCE} is not here")


# --------------------------------------------------------------------------- the documentation


def blocks() -> list[tuple[str, str]]:
    """Every fenced block of the reference, as (language, code), in order."""
    return BLOCK.findall(REFERENCE.read_text(encoding="utf-8"))


def strip_comments(code: str) -> str:
    return re.sub(r"\s*//[^\n]*", "", code)


def json_objects(code: str) -> list[dict[str, Any]]:
    """The JSON objects of a block (the doc's bodies carry ``//`` comments, some blocks hold
    several objects)."""
    decoder, text, found = json.JSONDecoder(), strip_comments(code), []
    at = text.find("{")
    while at != -1:
        value, end = decoder.raw_decode(text, at)
        found.append(value)
        at = text.find("{", end)
    return found


@dataclass
class Exchange:
    """A documented request: its endpoint and body, and the documented response if any."""

    endpoint: str
    body: dict[str, Any]
    response: dict[str, Any] | None = None


def documented_headers() -> list[str]:
    (headers,) = {code for lang, code in blocks() if lang == "http" and "api-secret:" in code}
    return [line.strip() for line in headers.splitlines() if line.strip()]


def exchanges() -> list[Exchange]:
    """The request/response pairs of the "API Endpoints" section, as the doc lays them out: a
    ``POST`` line, request bodies, and after a request the response it gets."""
    found: list[Exchange] = []
    endpoint: str | None = None
    for language, code in blocks():
        if language == "http" and (match := ENDPOINT.search(code)):
            endpoint = match.group(1)
        elif language == "javascript" and endpoint is not None and code.lstrip().startswith("{"):
            (body,) = json_objects(code)
            if "success" in body:
                found[-1].response = body
            else:
                found.append(Exchange(endpoint, body))
    return found


def error_responses() -> dict[str, dict[str, Any]]:
    for language, code in blocks():
        if language == "javascript" and "NO_ACTIVE_ROOMS" in code:
            return {body["error"]: body for body in json_objects(code)}
    raise AssertionError("the reference has no error responses block")


def example(language: str, marker: str) -> str:
    """The one block of ``language`` containing ``marker``."""
    (code,) = [code for lang, code in blocks() if lang == language and marker in code]
    return code


# --------------------------------------------------------------------------- rooms and gateway


@dataclass
class Fleet:
    code: str
    agents: list[LiveAgent]

    @property
    def rooms(self) -> list[str]:
        return [agent.room_name for agent in self.agents]

    def adapt(self, code: str, base_url: str) -> str:
        """The doc's example pointed at our gateway, agent code and rooms."""
        code = code.replace("https://api.example.com", base_url)
        code = re.sub(r"(fetch\(|requests\.post\(\s*f?)(['\"`])/v1/", rf"\1\2{base_url}/v1/", code)
        code = code.replace("'your_secret'", repr(SECRET))
        for doc_code in DOC_AGENT_CODES:
            code = code.replace(doc_code, self.code)
        for doc_room, index in DOC_ROOMS.items():
            code = re.sub(rf"(['\"]){doc_room}\1", rf"\g<1>{self.rooms[index]}\1", code)
        return code


def context_of(agent: LiveAgent) -> list[str]:
    return [entry.text for entry in agent.plugin.context_store.entries()]


@pytest.fixture
async def fleet(livekit: ServerInfo) -> AsyncIterator[Fleet]:
    code = f"GW{uuid.uuid4().hex[:8].upper()}"
    async with contextlib.AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(
                live_agent(livekit, agent_code=code, allowed_identities=[DEFAULT_GATEWAY_IDENTITY])
            )
            for _ in range(ROOMS)
        ]
        for agent in agents:
            await wait_until(agent.code_listed, "the agent's code to reach RoomService")
        yield Fleet(code, agents)


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]


@contextlib.contextmanager
def gateway_process(
    lk: ServerInfo, tmp_path: Path, *args: str, api_secret: str | None = None
) -> Iterator[Gateway]:
    port = free_tcp_port()
    env = gateway_env(lk)
    if not args or api_secret is not None:
        env["IMAGINEX_API_SECRET"] = api_secret or SECRET
    log_path = tmp_path / f"gateway-{port}.log"
    process = start_gateway(port, log_path, env, *args)
    gateway = Gateway(process, f"http://127.0.0.1:{port}", log_path)
    try:
        yield gateway
    finally:
        stop_process(process, timeout=STOP_TIMEOUT_S)


async def wait_until_serving(running: Gateway) -> None:
    await until_serving(running.base_url, lambda: running.process.poll() is not None, running.log)


@pytest.fixture
async def gateway(livekit: ServerInfo, tmp_path: Path) -> AsyncIterator[Gateway]:
    with gateway_process(livekit, tmp_path) as running:
        await wait_until_serving(running)
        yield running


async def run(args: list[str], gateway: Gateway) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    process = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    output = out.decode("utf-8", errors="replace")
    assert process.returncode == 0, f"{output}\ngateway log:\n{gateway.log()}"
    return output


def assert_documented(got: dict[str, Any], documented: dict[str, Any]) -> None:
    """``got`` has every documented field with the documented value (timestamps aside)."""
    for key, value in documented.items():
        assert key in got, (key, got)
        if key == "timestamp":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", got[key]), got
        elif isinstance(value, dict):
            assert_documented(got[key], value)
        else:
            assert got[key] == value, (key, got)


# --------------------------------------------------------------------------- curl


async def test_the_documented_requests_get_the_documented_responses_over_curl(
    fleet: Fleet, gateway: Gateway
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    documented = exchanges()
    assert [(e.endpoint.rsplit("/", 1)[1], e.body.get("type")) for e in documented] == [
        ("speak", None),
        ("add-context", "add_context"),
        ("add-context", "speak"),
        ("add-context", "add_context"),
    ]
    headers = [h.replace("your_api_secret_here", SECRET) for h in documented_headers()]
    assert f"api-secret: {SECRET}" in headers
    for exchange in documented:
        body = dict(exchange.body)
        body["room_id"] = fleet.rooms[DOC_ROOMS[body["room_id"]]]
        url = gateway.base_url + exchange.endpoint.replace("{agent_code}", fleet.code)
        args = [curl, "-sS", "-X", "POST", url, "-d", json.dumps(body), "-w", "\n%{http_code}"]
        for header in headers:
            args += ["-H", header]
        out = await run(args, gateway)
        text, status = out.rsplit("\n", 1)
        answer = json.loads(text)
        assert status == "200", answer
        expected = exchange.response or {"success": True, "data": {"delivered_to_rooms": 1}}
        expected = json.loads(json.dumps(expected).replace("A12345678", fleet.code))
        assert_documented(answer, expected)
        assert answer["data"]["rooms"][0]["room"] == body["room_id"]

    first, second = fleet.agents[0], fleet.agents[1]
    await wait_until(
        lambda: (
            first.said()
            == [
                "Hello! I have an important update for you.",
                "Thank you for your patience. Your issue has been resolved!",
            ]
        ),
        "room 1 to say the documented speeches",
    )
    assert context_of(first) == ["Customer reported billing issue #12345 on January 10th"]
    assert context_of(second) == [
        "User John Smith is a premium customer who prefers email communication and has been "
        "with us for 3 years."
    ]
    assert fleet.agents[2].said() == []
    assert context_of(fleet.agents[2]) == []


async def test_the_documented_errors_come_from_the_gateway_process(
    livekit: ServerInfo, fleet: Fleet, gateway: Gateway, tmp_path: Path
) -> None:
    documented = error_responses()
    speak = f"{gateway.base_url}/v1/agent/{fleet.code}/speak"
    nobody = f"{gateway.base_url}/v1/agent/NOBODY{uuid.uuid4().hex[:6].upper()}/speak"
    add_context = f"{gateway.base_url}/v1/agent/{fleet.code}/add-context"
    headers = {"api-secret": SECRET}
    async with aiohttp.ClientSession() as http:
        async with http.post(nobody, json={"message": "Hi"}, headers=headers) as response:
            assert response.status == 404
            assert await response.json() == documented["NO_ACTIVE_ROOMS"]
        async with http.post(
            speak, json={"message": "Hi"}, headers={"api-secret": "wrong"}
        ) as response:
            assert response.status == 401
            assert await response.json() == documented["UNAUTHORIZED"]
        async with http.post(
            add_context, json={"context": "Hi", "type": "shout"}, headers=headers
        ) as response:
            assert response.status == 400
            assert_documented(await response.json(), documented["VALIDATION_ERROR"])

    # with a secrets file of tenants, an api-secret addresses its own agent codes only
    secrets = tmp_path / "tenants.txt"
    secrets.write_text(f"{fleet.code}={SECRET}\n")
    with gateway_process(livekit, tmp_path, "--secrets-file", str(secrets)) as tenants:
        await wait_until_serving(tenants)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{tenants.base_url}/v1/agent/A12345678/speak",
                json={"message": "Hi"},
                headers=headers,
            ) as response,
        ):
            assert response.status == 404
            assert await response.json() == documented["AGENT_NOT_FOUND"]
    await asyncio.sleep(0.3)
    for agent in fleet.agents:
        assert agent.said() == []
        assert context_of(agent) == []


# --------------------------------------------------------------------------- Python


async def test_the_documented_python_examples_run_against_the_gateway_process(
    fleet: Fleet, gateway: Gateway, tmp_path: Path
) -> None:
    pytest.importorskip("requests")
    code = fleet.code
    prelude = (
        "import requests\nfrom datetime import datetime\n"
        f"API_SECRET = {SECRET!r}\nAGENT_CODE = {code!r}\nACTIVE_AGENTS = [{code!r}]\n"
    )
    safe_speak = example("python", "def safe_agent_speak")
    runs = [
        # (the doc's example, what the test adds to run it)
        (example("python", "announce a promotion"), ""),
        (example("python", "# Add customer context to imaginex platform agent"), ""),
        (example("python", "Send different messages to different rooms"), ""),
        (
            safe_speak,
            f"print('answer:', safe_agent_speak({code!r}, 'System check message'))\n"
            "print('nobody:', safe_agent_speak('NOBODY_HERE', 'System check message'))\n",
        ),
        (
            safe_speak + example("python", "def track_delivery_success"),
            "print(track_delivery_success())\n",
        ),
        (example("python", "def notify_maintenance"), "notify_maintenance()\nannounce_sale()\n"),
        (
            example("python", "def setup_customer_context"),
            "setup_customer_context(AGENT_CODE, {'name': 'Ann', 'tier': 'gold', "
            "'last_order': '#77', 'contact_method': 'email', 'support_history': 'none'}, "
            f"{fleet.rooms[2]!r})\nproactive_support_followup(AGENT_CODE, 4321)\n",
        ),
        (
            example("python", "def update_product_knowledge"),
            "update_product_knowledge(AGENT_CODE, [{'product': 'Pro', 'new_features': 'SSO', "
            "'price': 49}])\nbroadcast_event_update(AGENT_CODE, {'title': 'Launch', "
            "'time_remaining': '5 minutes', 'location': 'the main stage'})\n",
        ),
        (
            example("python", "def batch_context_update"),
            "batch_context_update([AGENT_CODE], 'Holiday hours: closed on Monday')\n",
        ),
    ]
    outputs = []
    for n, (doc, call) in enumerate(runs):
        script = tmp_path / f"example_{n}.py"
        script.write_text(prelude + fleet.adapt(doc, gateway.base_url) + "\n" + call)
        outputs.append(await run([sys.executable, str(script)], gateway))

    assert "Imaginex agent spoke successfully!" in outputs[0]
    assert "Context added to imaginex agent: {'success': True" in outputs[1]
    assert "'delivered_to_rooms': 1" in outputs[1]
    answer = outputs[3]
    assert "answer: {'success': True" in answer
    assert "'delivered_to_rooms': 3" in answer
    assert "Agent NOBODY_HERE not found or no active sessions" in answer
    assert "nobody: None" in answer

    everywhere = [
        "System check message",  # safe_agent_speak
        "System check message",  # track_delivery_success
        "We will have scheduled maintenance tonight from 2-4 AM EST. Your service may be "
        "briefly interrupted.",
        "I see you had issue #4321 last week. Is everything working well now? I'm here if you "
        "need any help!",
        "Event Update: Launch starts in 5 minutes. Join us at the main stage!",
    ]
    expected_said = [
        ["Great news! We have a 20% discount available today!", "VIP customer message"],
        ["Standard message"],
        ["Trial user message"],
    ]
    for agent, said in zip(fleet.agents, expected_said, strict=True):
        await wait_until(
            lambda agent=agent, said=said: sorted(agent.said()) == sorted(said + everywhere),
            f"{agent.room_name} to say what the examples sent it",
        )
        assert sorted(agent.said()) == sorted(said + everywhere)
    everywhere_context = [
        "Product Update: Pro now has SSO. Price updated to $49",
        "Holiday hours: closed on Monday",
    ]
    customer = context_of(fleet.agents[2])
    assert customer[0] == "Customer has VIP status and prefers technical explanations"
    assert "Customer: Ann" in customer[1]
    assert "Account Type: gold" in customer[1]
    assert customer[2:] == everywhere_context
    for agent in fleet.agents[:2]:
        assert context_of(agent) == everywhere_context


# --------------------------------------------------------------------------- JavaScript


async def test_the_documented_javascript_examples_run_against_the_gateway_process(
    fleet: Fleet, gateway: Gateway, tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    speak = example("javascript", "fetch('/v1/agent/A12345678/speak'")
    add_context = example("javascript", "fetch('/v1/agent/A12345678/add-context'")
    runs = [
        (speak, ""),
        # the doc's example ends at the fetch: print the answer it got
        (add_context, "console.log('answer:', JSON.stringify(await response.json()));\n"),
    ]
    outputs = []
    for n, (doc, epilogue) in enumerate(runs):
        script = tmp_path / f"example_{n}.mjs"  # .mjs: the examples use top-level await
        script.write_text(fleet.adapt(doc, gateway.base_url) + "\n" + epilogue)
        outputs.append(await run([node, str(script)], gateway))

    assert "Imaginex agent speech result:" in outputs[0]
    assert "success: true" in outputs[0]
    assert "delivered_to_rooms: 1" in outputs[0]
    answer = json.loads(outputs[1].split("answer:", 1)[1])
    assert answer["success"] is True
    assert answer["data"]["delivered_to_rooms"] == ROOMS
    assert sorted(room["room"] for room in answer["data"]["rooms"]) == sorted(fleet.rooms)

    await wait_until(
        lambda: (
            fleet.agents[1].said() == ["Your order has been confirmed and will arrive tomorrow!"]
        ),
        "room 2 to say the order confirmation",
    )
    for agent in fleet.agents:
        assert context_of(agent) == [
            "User is interested in enterprise features and has a team of 50+ people"
        ]
    assert fleet.agents[0].said() == []
    assert fleet.agents[2].said() == []


# --------------------------------------------------------------------------- Idempotency-Key


async def test_a_retry_with_the_same_idempotency_key_is_spoken_once_in_each_room(
    fleet: Fleet, gateway: Gateway
) -> None:
    url = f"{gateway.base_url}/v1/agent/{fleet.code}/speak"
    headers = {"api-secret": SECRET, "Idempotency-Key": str(uuid.uuid4())}
    answers = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(url, json={"message": "Said once."}, headers=headers) as reply:
                assert reply.status == 200, await reply.text()
                answers.append(await reply.json())
        with_room = {"message": "Only in room 2.", "room_id": fleet.rooms[1]}
        async with http.post(url, json=with_room, headers={"api-secret": SECRET}) as reply:
            assert reply.status == 200
            targeted = await reply.json()

    # the retries get the first answer again (the gateway kept it); nothing is sent twice
    assert answers[1] == answers[2] == answers[0]
    answer = answers[0]
    assert answer["data"]["delivered_to_rooms"] == ROOMS
    assert answer["data"]["request_id"] == headers["Idempotency-Key"]
    assert sorted(room["room"] for room in answer["data"]["rooms"]) == sorted(fleet.rooms)
    assert {room["duplicate"] for room in answer["data"]["rooms"]} == {False}
    assert targeted["data"]["delivered_to_rooms"] == 1
    assert [room["room"] for room in targeted["data"]["rooms"]] == [fleet.rooms[1]]

    expected = [["Said once."], ["Said once.", "Only in room 2."], ["Said once."]]
    for agent, said in zip(fleet.agents, expected, strict=True):
        await wait_until(lambda agent=agent, said=said: agent.said() == said, "the speeches")
    await asyncio.sleep(0.5)  # a second copy would have played by now
    assert [agent.tts.texts for agent in fleet.agents] == expected


async def test_the_pool_cap_holds_one_room_at_a_time_and_still_reaches_every_room(
    fleet: Fleet, livekit: ServerInfo, tmp_path: Path
) -> None:
    # --max-rooms 1: the fan-out takes the rooms one after another (each connection closed,
    # least recently used, before the next room is joined), within the request's deadline
    from livekit import api

    # the room connections' pool: --delivery room (server-rpc, the default, joins no room)
    with gateway_process(
        livekit, tmp_path, "--delivery", "room", "--max-rooms", "1", "--max-concurrent-joins",
        "1", "--timeout", "15", api_secret=SECRET,
    ) as running:
        await wait_until_serving(running)
        async with aiohttp.ClientSession() as http, http.post(
            f"{running.base_url}/v1/agent/{fleet.code}/add-context",
            json={"context": "Held one at a time."},
            headers={"api-secret": SECRET},
        ) as reply:
            assert reply.status == 200, await reply.text()
            answer = await reply.json()
        assert answer["data"]["delivered_to_rooms"] == ROOMS
        async with api.LiveKitAPI(livekit.url, livekit.api_key, livekit.api_secret) as lkapi:

            async def holds_one_room() -> bool:
                held = 0
                for room in fleet.rooms:
                    request = api.ListParticipantsRequest(room=room)
                    listed = await lkapi.room.list_participants(request)
                    held += sum(p.identity == DEFAULT_GATEWAY_IDENTITY for p in listed.participants)
                return held == 1  # without the cap: one connection per room, 3

            await wait_until(holds_one_room, "the gateway to hold only its last room")
    for agent in fleet.agents:
        assert context_of(agent) == ["Held one at a time."]
