"""The README is the front door, and true: its two commands first (the test command is what CI
runs), short, every link leading somewhere, and its ``curl`` reaching an agent through a real
gateway. Its CLI line and Python block run on a real server in
``tests/integration/test_readme_live.py``; the docs site builds in ``.ci/run``
(``mkdocs build --strict``) and here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from imaginex_context_plugin.gateway import ApiSecrets, create_app
from tests.gateway_fixtures import SECRET, Fleet, LiveAgent
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
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


def test_the_docs_build_with_every_page_linked_and_every_link_whole(tmp_path: Path) -> None:
    """The site's own check (``mkdocs build --strict``: links, anchors, snippets, the nav)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "index.html").is_file()
    assert "Keep a Changelog" in (tmp_path / "changelog" / "index.html").read_text("utf-8")


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
