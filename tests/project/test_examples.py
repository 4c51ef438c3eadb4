"""The example workers stay importable and keep the one-line drop-in."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from livekit.agents import AgentServer

from imaginex_context_plugin.cli import CLI_IDENTITY

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["basic_agent.py", "offline_agent.py", "avatar_agent.py"])
def test_example_worker_registers_an_entrypoint_that_attaches_the_plugin(name: str) -> None:
    module = runpy.run_path(str(EXAMPLES / name))
    server = module["server"]
    assert isinstance(server, AgentServer)
    assert server._entrypoint_fnc is module["entrypoint"]
    source = (EXAMPLES / name).read_text()
    assert "ContextPlugin(" in source
    assert ".start(session, ctx.room)" in source


def test_the_offline_agent_trusts_the_cli_default_identity() -> None:
    assert f'"{CLI_IDENTITY}"' in (EXAMPLES / "offline_agent.py").read_text()
