"""The README is the front door, and true: its two commands first (the test command is what CI
runs), short, every link leading somewhere, and its ``curl`` reaching an agent through a real
gateway. Its CLI line and Python block run on a real server in
``tests/integration/test_readme_live.py``; the docs site is ``tests/project/test_docs.py``'s.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from imaginex_context_plugin.gateway import ApiSecrets, create_app
from tests.gateway_fixtures import SECRET, Fleet, LiveAgent
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
BLOCK = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAX_LINES = 200
DEMO_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && '
    ".venv/bin/imaginex-context demo"
)
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/python -m pytest'
)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(readme()) if lang == language]


def test_the_two_commands_come_first_and_ci_runs_the_test_command_verbatim() -> None:
    first, second = BLOCK.findall(readme())[:2]
    assert first == ("bash", DEMO_COMMAND + "\n")
    assert second == ("bash", TEST_COMMAND + "\n")
    assert TEST_COMMAND in CI.read_text(encoding="utf-8").splitlines()


def test_it_stays_a_front_door() -> None:
    assert len(readme().splitlines()) <= MAX_LINES


def test_every_link_leads_somewhere() -> None:
    links = LINK.findall(readme())
    assert len(links) >= 10
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target = (ROOT / link.split("#")[0]).resolve()
        assert target.is_file(), link
        assert ROOT in target.parents


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, LiveAgent]]:
    fleet = Fleet()
    agent = await fleet.agent("shop-42")
    server = TestServer(create_app(fleet.backend(), ApiSecrets(secret=SECRET)), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), agent
    finally:
        await server.close()
        await fleet.aclose()


async def test_the_curl_example_reaches_the_agent_through_the_gateway(
    gateway: tuple[str, LiveAgent],
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    base_url, agent = gateway
    (command,) = [code for code in blocks("bash") if code.startswith("curl ")]
    assert "http://127.0.0.1:8089/" in command
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euc",
        command.replace("http://127.0.0.1:8089", base_url).replace("curl ", f"{curl} -sS ", 1),
        env={**os.environ, "IMAGINEX_API_SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert b'"success":true' in out.replace(b" ", b""), out
    assert b"Speech triggered successfully" in out
    await wait_until(lambda: agent.said() == ["Your order has shipped!"])
