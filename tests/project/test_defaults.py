"""Every default the command line shows is the constant the library uses, and the docs pages say
that same value: a default is changed in one place, and the tests say which page to follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest

from imaginex_context_plugin.cli import main
from imaginex_context_plugin.cli.demo import DEFAULT_PACE_S
from imaginex_context_plugin.cli.gateway import DELIVERIES
from imaginex_context_plugin.cli.sender import CLI_IDENTITY
from imaginex_context_plugin.gateway.delivery.room_delivery import DEFAULT_GATEWAY_IDENTITY
from imaginex_context_plugin.gateway.delivery.room_pool import (
    DEFAULT_MAX_CONCURRENT_JOINS,
    DEFAULT_MAX_ROOMS,
)
from imaginex_context_plugin.gateway.directory.sync import DEFAULT_RECONCILE_INTERVAL_S
from imaginex_context_plugin.gateway.event_loop import DEFAULT_EVENT_LOOP
from imaginex_context_plugin.gateway.http.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_DELIVERY_TIMEOUT_S,
    DEFAULT_GATEWAY_RATE_LIMIT,
)
from imaginex_context_plugin.gateway.http.messages import DEFAULT_GATEWAY_SENDER
from imaginex_context_plugin.gateway.http.serving import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
)
from imaginex_context_plugin.gateway.run import DEFAULT_CONSOLE, DEFAULT_HOST, DEFAULT_PORT
from imaginex_context_plugin.protocol import DEFAULT_CONTEXT_ROLE, DEFAULT_HISTORY_LIMIT
from imaginex_context_plugin.sender import (
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_PLAYOUT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VIA,
)

ROOT = Path(__file__).resolve().parents[2]
RATE = DEFAULT_GATEWAY_RATE_LIMIT

# option -> (the constant the library uses, what the docs row for that option says)
GATEWAY: dict[str, tuple[Any, str]] = {
    "--host": (DEFAULT_HOST, f"(default `{DEFAULT_HOST}:{DEFAULT_PORT}`)"),
    "--port": (DEFAULT_PORT, f"(default `{DEFAULT_HOST}:{DEFAULT_PORT}`)"),
    "--reconcile-interval": (
        DEFAULT_RECONCILE_INTERVAL_S,
        f"(default {DEFAULT_RECONCILE_INTERVAL_S:g})",
    ),
    "--delivery": (DELIVERIES[0], f"`{DELIVERIES[0]}` (default)"),
    "--max-rooms": (DEFAULT_MAX_ROOMS, f"(default {DEFAULT_MAX_ROOMS})"),
    "--max-concurrent-joins": (
        DEFAULT_MAX_CONCURRENT_JOINS,
        f"(default {DEFAULT_MAX_CONCURRENT_JOINS})",
    ),
    "--sender": (DEFAULT_GATEWAY_SENDER, f"(default `{DEFAULT_GATEWAY_SENDER}`)"),
    "--timeout": (DEFAULT_DELIVERY_TIMEOUT_S, f"(default {DEFAULT_DELIVERY_TIMEOUT_S:g})"),
    "--rate-limit": (RATE.per_second, f"(default {RATE.per_second:g}/s, bursts of {RATE.burst}"),
    "--burst": (RATE.burst, f"(default {RATE.per_second:g}/s, bursts of {RATE.burst}"),
    "--header-timeout": (DEFAULT_HEADER_TIMEOUT_S, f"(default {DEFAULT_HEADER_TIMEOUT_S:g})"),
    "--body-timeout": (DEFAULT_BODY_TIMEOUT_S, f"(default {DEFAULT_BODY_TIMEOUT_S:g})"),
    "--max-connections": (DEFAULT_MAX_CONNECTIONS, f"(default {DEFAULT_MAX_CONNECTIONS})"),
    "--console": (DEFAULT_CONSOLE, "(default on)"),
    "--event-loop": (DEFAULT_EVENT_LOOP, f"`{DEFAULT_EVENT_LOOP}` (default)"),
}

SENDER: dict[str, tuple[Any, str]] = {
    "--identity": (CLI_IDENTITY, f"(default `{CLI_IDENTITY}`"),
    "--timeout": (DEFAULT_TIMEOUT_S, f"({DEFAULT_TIMEOUT_S:g}), attempts after the first"),
    "--retries": (DEFAULT_RETRIES, f"attempts after the first ({DEFAULT_RETRIES})"),
    "--agent-wait": (DEFAULT_AGENT_TIMEOUT_S, f"to join the room ({DEFAULT_AGENT_TIMEOUT_S:g})"),
    "--rpc": (DEFAULT_VIA == "rpc", "send over RPC (default)"),
}


def _command(name: str) -> click.Command:
    command = main.commands[name]
    assert isinstance(command, click.Command)
    return command


def _option(command: click.Command, flag: str) -> click.Parameter:
    [found] = [p for p in command.params if flag in p.opts]
    return found


def _row(page: str, flag: str) -> str:
    """The table row of ``page`` that documents ``flag``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and f"`{flag}" in line]
    assert rows, f"{page} has no row for {flag}"
    return rows[0]


@pytest.mark.parametrize("flag", sorted(GATEWAY))
def test_a_gateway_default_is_the_gateways_constant_and_the_docs_say_it(flag: str) -> None:
    constant, said = GATEWAY[flag]
    assert _option(_command("gateway"), flag).default == constant
    assert said in _row("gateway/configuration.md", flag)


def test_every_gateway_option_with_a_default_is_checked() -> None:
    shown = {
        p.opts[0]
        for p in _command("gateway").params
        if isinstance(p, click.Option) and p.show_default
    }
    assert shown == set(GATEWAY)


def test_the_gateway_identity_named_in_help_and_docs_is_the_gateways() -> None:
    help_text = _option(_command("gateway"), "--identity").help or ""
    assert f"default: {DEFAULT_GATEWAY_IDENTITY};" in help_text
    assert f"(default `{DEFAULT_GATEWAY_IDENTITY}`;" in _row(
        "gateway/configuration.md", "--identity"
    )


@pytest.mark.parametrize("flag", sorted(SENDER))
def test_a_sender_default_is_the_clients_constant_and_the_docs_say_it(flag: str) -> None:
    constant, said = SENDER[flag]
    for name in ("speak", "add-context", "end-call", "get-history", "subscribe"):
        assert _option(_command(name), flag).default == constant, name
    assert said in _row("sender/cli.md", flag)


def test_the_other_command_defaults_are_the_librarys() -> None:
    for name in ("speak", "user-message"):
        assert _option(_command(name), "--playout-timeout").default == DEFAULT_PLAYOUT_TIMEOUT_S
    assert f"({DEFAULT_PLAYOUT_TIMEOUT_S:g} s)" in _row("sender/cli.md", "--wait-playout")
    assert _option(_command("add-context"), "--role").default == DEFAULT_CONTEXT_ROLE
    assert _option(_command("get-history"), "--limit").default == DEFAULT_HISTORY_LIMIT
    assert f"default {DEFAULT_HISTORY_LIMIT})" in _row("sender/cli.md", "get-history")
    assert _option(_command("demo"), "--pace").default == DEFAULT_PACE_S
