"""The bare HTTP hop, for the floor ``RPC_HTTP_SAY``: the least an HTTP gateway in front of
``RoomService.PerformRpc`` does.

A process of its own, as the gateway is, on the same event loop the gateway picks (uvloop when
installed), with one aiohttp route: ``POST /relay`` sends its body as is, with one
``PerformRpc`` per room (the same HTTP/1.1 client the gateway uses), to every agent's bare
echo at once, and answers how many rooms answered. Nothing else: no authentication, no
validation, no signing, no directory (the rooms are given at start), no log line. The gap
between it and the gateway is what the gateway's own work costs; the gap between it and the
``RPC_SAY`` floor is what the HTTP hop itself costs.

Run as ``bench_fanout.py --relay``, with one JSON line on standard input (``url``,
``api_key``, ``api_secret``, ``rooms``); it prints its port once it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from livekit import api

from devtools.livekit_cluster import ClusterNode
from devtools.livekit_server import ROOT
from devtools.processes import stop_async_process
from imaginex_context_plugin._livekit.server_rpc import ServerRpc
from imaginex_context_plugin.gateway import LiveKitSettings
from imaginex_context_plugin.gateway.event_loop import resolve_event_loop, run_on

from .settings import AGENT_IDENTITY, BENCH_FILE, DELIVERY_TIMEOUT_S, ECHO_METHOD

READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RelayProcess:
    process: asyncio.subprocess.Process
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def relay_worker() -> None:
    """The relay process's main (``bench_fanout.py --relay``)."""
    config: dict[str, Any] = json.loads(sys.stdin.readline())
    run_on(resolve_event_loop("auto"), _serve(config))


async def _serve(config: dict[str, Any]) -> None:
    settings = LiveKitSettings(
        url=config["url"], api_key=config["api_key"], api_secret=config["api_secret"]
    )
    rooms: list[str] = config["rooms"]
    rpc = ServerRpc(settings)

    async def call(room: str, payload: str) -> bool:
        with contextlib.suppress(api.TwirpError, OSError, asyncio.TimeoutError):
            await rpc.perform(
                room, AGENT_IDENTITY, ECHO_METHOD, payload, timeout=DELIVERY_TIMEOUT_S
            )
            return True
        return False

    async def relay(request: web.Request) -> web.Response:
        payload = await request.text()
        answered = await asyncio.gather(*(call(room, payload) for room in rooms))
        return web.Response(text=str(answered.count(True)))

    app = web.Application()
    app.router.add_post("/relay", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port: printed for the bench
    await web.SockSite(runner, sock).start()
    print(sock.getsockname()[1], flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await rpc.aclose()


@contextlib.asynccontextmanager
async def relay(node: ClusterNode, rooms: Sequence[str]) -> AsyncIterator[RelayProcess]:
    """A relay process to ``rooms`` through ``node``, stopped on exit."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, BENCH_FILE, "--relay"),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        info = node.info
        config = {
            "url": info.url,
            "api_key": info.api_key,
            "api_secret": info.api_secret,
            "rooms": list(rooms),
        }
        process.stdin.write(json.dumps(config).encode() + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
        if not line.strip():
            raise RuntimeError("the relay process stopped before it served")
        yield RelayProcess(process, f"http://127.0.0.1:{int(line)}/relay")
    finally:
        await stop_async_process(process, timeout=10, kill_group=True)
