"""The ``imaginex-context`` command: one module per command group.

``sender`` (``speak``, ``add-context``, and what every sender command shares: options, the
client factory seam, the answers and exit statuses), ``control`` (the call-control commands),
``watch`` (``subscribe``, ``unsubscribe``), ``gateway`` (the REST gateway), ``demo`` (the plugin
at work offline); ``parameters`` holds what their parameters share. :func:`run` is the console
script.
"""

from __future__ import annotations

import os
import sys

import click

from ..version import __version__
from .control import (
    cancel,
    end_call,
    get_history,
    interrupt,
    reset_instructions,
    update_instructions,
    update_io,
    user_message,
)
from .demo import demo_command
from .gateway import gateway_command
from .sender import (
    CLI_IDENTITY,
    CLIENT_FACTORY_KEY,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ClientFactory,
    SenderSettings,
    add_context,
    connect_client,
    exit_code_for,
    speak,
)
from .watch import subscribe, unsubscribe

__all__ = [
    "CLIENT_FACTORY_KEY",
    "CLI_IDENTITY",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "ClientFactory",
    "SenderSettings",
    "connect_client",
    "exit_code_for",
    "main",
    "run",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imaginex-context")
def main() -> None:
    """Drive a running LiveKit voice agent from outside: speak, add context, control the call."""


for _command in (
    demo_command,
    gateway_command,
    speak,
    add_context,
    end_call,
    interrupt,
    cancel,
    update_io,
    update_instructions,
    reset_instructions,
    user_message,
    get_history,
    subscribe,
    unsubscribe,
):
    main.add_command(_command)


def run() -> None:
    """The ``imaginex-context`` process: :func:`main`, then exit without native teardown.

    LiveKit's native library can abort the process while the interpreter tears it down (seen
    on a real server, about one run in five: a Rust panic after the ack was printed, and a
    non-zero exit status instead of 0). By the time ``main`` returns every room is closed and
    every result printed, so the process leaves at once and its exit status stays true.
    """
    code: int = 0
    try:
        main()
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
            code = 1
        else:
            code = done.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
