"""The ``imaginex-context gateway`` command as the tests and the benchmarks start it: on loopback,
with none of this process's own LiveKit or gateway settings leaking into its environment, and
waited for until ``/healthz`` answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import aiohttp

from devtools.livekit_server import ROOT, ServerInfo

GATEWAY_CLI: Final = Path(sys.executable).parent / "imaginex-context"
START_TIMEOUT_S: Final = 30.0
LEAKING_PREFIXES: Final = ("LIVEKIT_", "IMAGINEX_")
"""Settings of this process that would configure the gateway behind the caller's back."""


class GatewayStartError(RuntimeError):
    """The gateway exited, or did not answer ``/healthz`` in time."""


def gateway_env(lk: ServerInfo | None = None, **settings: str) -> dict[str, str]:
    """This process's environment without its LiveKit and gateway settings (and without
    ``PYTHONWARNINGS``, which pytest may set to errors), pointed at ``lk``'s server when given,
    with ``settings`` (``IMAGINEX_API_SECRET=...``) on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(LEAKING_PREFIXES) and k != "PYTHONWARNINGS"
    }
    if lk is not None:
        env.update(LIVEKIT_URL=lk.url, LIVEKIT_API_KEY=lk.api_key, LIVEKIT_API_SECRET=lk.api_secret)
    env.update(settings)
    return env


def gateway_command(port: int, *options: str) -> list[str]:
    """``imaginex-context gateway`` serving on ``127.0.0.1:port``, then ``options``."""
    return [str(GATEWAY_CLI), "gateway", "--host", "127.0.0.1", "--port", str(port), *options]


def start_gateway(
    port: int, log_path: Path, env: Mapping[str, str], *options: str
) -> subprocess.Popen[bytes]:
    """:func:`gateway_command` started from the repository in its own session (stop it with
    ``devtools.processes``), its output written to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            gateway_command(port, *options),
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def until_serving(
    base_url: str,
    exited: Callable[[], bool],
    log: Callable[[], str],
    *,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Wait until the gateway at ``base_url`` answers ``/healthz``; raise
    :class:`GatewayStartError` with its ``log()`` once it ``exited()`` or the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            if exited():
                raise GatewayStartError(f"the gateway exited early:\n{log()}")
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(base_url + "/healthz") as response:
                    if response.status == 200:
                        return
            if loop.time() > deadline:
                raise GatewayStartError(f"the gateway did not start:\n{log()}")
            await asyncio.sleep(0.05)
