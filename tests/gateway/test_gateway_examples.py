"""``docs/gateway/examples.md`` runs: the platform's Python and JavaScript examples, unchanged but
for the base URL, against a gateway on a real loopback port in front of real agent sessions.

Every ``python`` block runs with this interpreter (they use ``requests``), every ``javascript``
block with Node's ``fetch`` (skipped without ``node``): the page holds runnable examples only.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from imaginex_context_plugin.gateway import ApiSecrets, create_app
from tests.gateway_fixtures import GATEWAY, SECRET, Fleet, LiveAgent
from tests.helpers import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "gateway" / "examples.md"
BLOCK = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
RUN_TIMEOUT_S = 60.0
ROOMS = (
    "customer_session_1",
    "order_confirmation_room",
    "vip_customer_session",
    "support_session_1",
    "room_1",
    "room_2",
    "room_3",
    "support_call_7",
    "goodbye_room",
    "ended_room",
)


def blocks(language: str) -> list[str]:
    text = EXAMPLES.read_text(encoding="utf-8")
    return [code for lang, code in BLOCK.findall(text) if lang == language]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, LiveAgent]]]:
    fleet = Fleet()
    # the call-control examples need the sensitive types too
    agents = {room: await fleet.agent(room, permissions={GATEWAY: {"*"}}) for room in ROOMS}
    # the live-events example's agent, another code (not in the broadcast counts): the gateway
    # (its one trusted sender) may subscribe there
    await fleet.agent("watched_room", code="A87654321", permissions={"*": {"*"}})
    server = TestServer(create_app(fleet.backend(), ApiSecrets(secret=SECRET)), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), agents
    finally:
        await server.close()
        await fleet.aclose()


async def run(args: list[str], base_url: str) -> str:
    env = {**os.environ, "GATEWAY_URL": base_url, "IMAGINEX_API_SECRET": SECRET}
    env.pop("PYTHONWARNINGS", None)
    process = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    output = out.decode("utf-8", errors="replace")
    assert process.returncode == 0, output
    return output


def test_the_examples_page_has_python_and_javascript_blocks_only() -> None:
    assert len(blocks("python")) == 12
    assert len(blocks("javascript")) == 4
    # a block in another language (or tagged otherwise) would silently not run
    assert {lang for lang, _ in BLOCK.findall(EXAMPLES.read_text(encoding="utf-8"))} == {
        "python",
        "javascript",
    }
    for code in blocks("python") + blocks("javascript"):
        assert "/v1/agent/" in code


async def test_the_python_examples_run_against_the_gateway(
    served: tuple[str, dict[str, LiveAgent]], tmp_path: Path
) -> None:
    pytest.importorskip("requests")
    base_url, agents = served
    outputs = []
    for n, code in enumerate(blocks("python")):
        script = tmp_path / f"example_{n}.py"
        script.write_text(code, encoding="utf-8")
        outputs.append(await run([sys.executable, str(script)], base_url))

    assert "Imaginex agent spoke successfully!" in outputs[0]
    assert "Agent NO_SUCH_AGENT not found or no active sessions" in "".join(outputs)
    assert "duplicate: [False]" in "".join(outputs)
    assert "agent is speaking" in "".join(outputs)  # the live-events example
    assert "agent said: Your table is booked for 8 pm." in "".join(outputs)

    customer = agents["customer_session_1"]
    await wait_until(
        lambda: (
            customer.said()
            == [
                "Great news! We have a 20% discount available today!",
                "System check message",
                "Your refund was issued today.",
            ]
        )
    )
    assert agents["vip_customer_session"].context() == [
        "Customer has VIP status and prefers technical explanations"
    ]
    support = agents["support_session_1"]
    assert support.context() == ["Customer reported billing issue #12345 on January 10th"]
    await wait_until(
        lambda: "Thank you for your patience. Your issue has been resolved!" in support.said()
    )
    for room, message in zip(
        ("room_1", "room_2", "room_3"),
        ("VIP customer message", "Standard message", "Trial user message"),
        strict=True,
    ):
        await wait_until(lambda room=room, message=message: message in agents[room].said())  # type: ignore[misc]
    await the_call_control_examples_were_applied("".join(outputs), agents)


async def the_call_control_examples_were_applied(
    output: str, agents: dict[str, LiveAgent]
) -> None:
    on = "{'agent_audio': True, 'user_audio': True, 'transcription': True}"
    assert "while looking up: {'agent_audio': True, 'user_audio': False," in output
    assert f"after: {on}" in output
    assert "update-instructions 200 Instructions updated" in output
    assert "reset-instructions 200 Instructions reset" in output
    assert "reply speech: " in output
    assert "user: My new delivery address is 5 Main Street." in output
    assert "cancel: " in output
    assert "interrupt: 200" in output
    assert "goodbye: Speech triggered successfully" in output
    assert "after the end: 503 NOT_READY" in output
    call = agents["support_call_7"]
    assert "My new delivery address is 5 Main Street." in [
        m.text_content for m in call.session.history.messages() if m.role == "user"
    ]
    goodbye = agents["goodbye_room"]
    await wait_until(lambda: "Thank you for calling. Goodbye!" in goodbye.said())
    assert "Are you still there?" not in agents["ended_room"].tts.texts


async def test_the_javascript_examples_run_against_the_gateway(
    served: tuple[str, dict[str, LiveAgent]], tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    base_url, agents = served
    outputs = []
    for n, code in enumerate(blocks("javascript")):
        script = tmp_path / f"example_{n}.mjs"  # .mjs: the examples use top-level await
        script.write_text(code, encoding="utf-8")
        outputs.append(await run([node, str(script)], base_url))

    assert "Imaginex agent speech result:" in outputs[0]
    assert f"Delivered to {len(ROOMS)} rooms" in outputs[1]
    await wait_until(
        lambda: (
            agents["order_confirmation_room"].said()
            == ["Your order has been confirmed and will arrive tomorrow!"]
        )
    )
    for agent in agents.values():
        assert agent.context() == [
            "User is interested in enterprise features and has a team of 50+ people"
        ]
    await the_javascript_call_control_examples_were_applied(outputs[2], outputs[3], agents)


async def the_javascript_call_control_examples_were_applied(
    control: str, watch: str, agents: dict[str, LiveAgent]
) -> None:
    assert "while looking up: { agent_audio: true, user_audio: false, transcription: true }" in (
        control
    )
    assert "after: { agent_audio: true, user_audio: true, transcription: true }" in control
    assert "reply speech: " in control
    assert "user: Please send the invoice by email." in control
    assert "interrupted: " in control
    call = agents["support_call_7"]
    assert "Please send the invoice by email." in [
        m.text_content for m in call.session.history.messages() if m.role == "user"
    ]
    assert "agent said: Your table is booked for 8 pm." in watch
    assert "call ended: " in watch
