"""The README's ways to send a message, run as written on the real server: the command line and
the Python block (its ``curl`` runs in ``tests/project/test_readme.py``). Only the room's name
changes: each test has a fresh one."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from devtools.livekit_server import ROOT, ServerInfo
from imaginex_context_plugin.cli import CLI_IDENTITY
from tests.helpers import wait_until
from tests.integration.live import live_agent, room_name

README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCUMENTED_ROOM = "shop-42"
CLI_TIMEOUT_S = 90.0


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(README.read_text("utf-8")) if lang == language]


async def test_the_cli_line_speaks(livekit: ServerInfo) -> None:
    (block,) = [code for code in blocks("bash") if "imaginex-context speak" in code]
    (line,) = [line for line in block.splitlines() if line.startswith("imaginex-context ")]
    room = room_name("it-readme")
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
        "LIVEKIT_URL": livekit.url,
        "LIVEKIT_API_KEY": livekit.api_key,
        "LIVEKIT_API_SECRET": livekit.api_secret,
        # the README's command is the installed one
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # the agent trusts the identity the README says the command joins as
    async with live_agent(livekit, room=room, allowed_identities=[CLI_IDENTITY]) as agent:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-euc",
            line.replace(f"--room {DOCUMENTED_ROOM}", f"--room {room}"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
        assert process.returncode == 0, (out + err).decode()
        assert out.decode().startswith("ok: Speech triggered successfully")
        await wait_until(lambda: agent.tts.texts == ["Your order has shipped!"])


async def test_the_python_block_adds_context_and_speaks(
    livekit: ServerInfo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = [code for code in blocks("python") if "ContextClient.connect" in code]
    room = room_name("it-readme")
    # "LIVEKIT_* from the environment"
    monkeypatch.setenv("LIVEKIT_URL", livekit.url)
    monkeypatch.setenv("LIVEKIT_API_KEY", livekit.api_key)
    monkeypatch.setenv("LIVEKIT_API_SECRET", livekit.api_secret)
    source = "async def main():\n" + textwrap.indent(
        code.replace(f'"{DOCUMENTED_ROOM}"', f'"{room}"'), "    "
    )
    namespace: dict[str, Any] = {}
    exec(compile(source, str(README), "exec"), namespace)
    # the agent trusts the identity the README's block joins as
    async with live_agent(livekit, room=room, allowed_identities=["backend"]) as agent:
        await asyncio.wait_for(namespace["main"](), CLI_TIMEOUT_S)
        speech_id, outcome = capsys.readouterr().out.split()[:2]
        assert speech_id.startswith("speech_")
        assert outcome == "played"
        assert agent.tts.texts == ["Welcome back, John!"]
        assert [(e.key, e.chars) for e in agent.plugin.context_store.describe()] == [
            ("customer", len("Customer John Smith is a premium member."))
        ]
