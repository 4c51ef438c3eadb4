"""The ``imaginex-context`` command."""

from __future__ import annotations

import asyncio
import logging

import click

from .version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imaginex-context")
def main() -> None:
    """Drive a running LiveKit voice agent from outside: speak and add context."""


@main.command()
@click.option("--pace", default=0.3, show_default=True, help="Seconds between scripted steps.")
@click.option("-v", "--verbose", is_flag=True, help="Show the plugin's log lines too.")
def demo(pace: float, verbose: bool) -> None:
    """Run an agent session with the plugin in-process and feed it a scripted sequence.

    Needs no LiveKit server and no API keys: the messages take the same code path that bytes
    from a room take, and the answers are printed instead of published.
    """
    from .demo import run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    asyncio.run(run_demo(pace_s=pace))
