"""The gateway under test: a fresh ``imaginex-context gateway`` process per phase (or one built
here with another ``max_concurrent_joins``: ``bench_fanout.py --gateway``), its RSS and
sockets, the RoomService calls the nodes log for it, and one ``speak`` request to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from devtools.gateway_process import gateway_command, gateway_env, until_serving
from devtools.livekit_cluster import ClusterNode, LiveKitCluster
from devtools.livekit_server import ROOT, free_tcp_port
from devtools.processes import stop_async_process
from imaginex_context_plugin.gateway import (
    AgentBackend,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.gateway.delivery import ServerRpcBackend
from imaginex_context_plugin.gateway.directory import MemoryAgentDirectory
from imaginex_context_plugin.gateway.directory.agent_directory import entry_ttl_for

from .settings import (
    API_SECRET_HEADER,
    BENCH_FILE,
    DELIVERY_TIMEOUT_S,
    DIRECTORY,
    GATEWAY_IDENTITY,
    RECONCILE_INTERVAL_S,
    ROOM,
    ROOM_SERVICE_LOG,
    SERVER_RPC,
    SPOKEN_PREFIX,
)


async def gateway_worker(port: int, mode: str, joins: int, delivery: str = ROOM) -> None:
    """``--gateway``: the gateway as ``imaginex-context gateway`` builds it (no Redis, rate
    limit off, no signing secret), with ``max_concurrent_joins`` set; serves until SIGTERM."""
    settings = LiveKitSettings(
        url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
    )
    finder = LiveKitBackend(
        settings,
        identity=GATEWAY_IDENTITY,
        max_concurrent_joins=joins,
        agent_directory=(
            MemoryAgentDirectory(entry_ttl=entry_ttl_for(RECONCILE_INTERVAL_S))
            if mode == DIRECTORY
            else None
        ),
        reconcile_interval=RECONCILE_INTERVAL_S,
    )
    backend: AgentBackend = finder
    if delivery == SERVER_RPC:
        backend = ServerRpcBackend(finder, settings)
    app = create_app(
        backend,
        ApiSecrets(secret=API_SECRET_HEADER),
        delivery_timeout=DELIVERY_TIMEOUT_S,
        rate_limit=None,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


@dataclass
class GatewayProcess:
    process: asyncio.subprocess.Process
    base_url: str
    log_path: Path

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def sockets(self) -> int:
        fds = Path(f"/proc/{self.process.pid}/fd")
        count = 0
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith("socket:"):
                    count += 1
        return count


@contextlib.asynccontextmanager
async def gateway(
    node: ClusterNode,
    workdir: Path,
    mode: str,
    joins: int | None,
    delivery: str = ROOM,
    port: int | None = None,
) -> AsyncIterator[GatewayProcess]:
    """A fresh gateway process on ``port`` (default: a free one)."""
    port = port if port is not None else free_tcp_port()
    env = gateway_env(node.info, IMAGINEX_API_SECRET=API_SECRET_HEADER)
    log_path = workdir / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        command = gateway_command(
            port,
            *("--identity", GATEWAY_IDENTITY, "--rate-limit", "0"),
            *("--timeout", str(DELIVERY_TIMEOUT_S), "--delivery", delivery),
            # the directory's first reconciliation finds the agents (they joined before it
            # started); the periodic ones (1 + N calls every 30 s, bench_directory.py) are
            # pushed out of the phase, so that the calls counted are the requests' own
            *(
                ["--agent-directory", "--reconcile-interval", str(RECONCILE_INTERVAL_S)]
                if mode == DIRECTORY
                else []
            ),
        )
        if joins is not None:  # built here as the command builds it, with that join bound
            command = [
                *(sys.executable, BENCH_FILE, "--gateway"),
                *(str(port), mode, str(joins), delivery),
            ]
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    running = GatewayProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        await until_serving(
            running.base_url,
            lambda: process.returncode is not None,
            lambda: log_path.read_text(errors="replace")[-3000:],
        )
        yield running
    finally:
        await stop_async_process(process, timeout=20, kill_group=True)


class RoomServiceCalls:
    """RoomService calls the nodes have logged (each node logs every API call at INFO)."""

    def __init__(self, cluster: LiveKitCluster) -> None:
        self._logs = [n.info.log_path for n in cluster.nodes if n.info.log_path is not None]

    async def settled(self, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Wait until no call was logged for ``quiet_s``: the directory's first reconciliation
        (1 + N calls, started with the gateway) is its start-up, not the requests' cost."""
        deadline = time.monotonic() + timeout_s
        last = self.count()
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet_s)
            now = self.count()
            if now == last:
                return
            last = now

    def count(self, what: str = ROOM_SERVICE_LOG) -> int:
        return sum(self.per_node(what))

    def per_node(self, what: str = ROOM_SERVICE_LOG) -> list[int]:
        return [path.read_text(errors="replace").count(what) for path in self._logs]


async def speak(
    http: aiohttp.ClientSession, base: str, code: str, n: int
) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    async with http.post(
        f"{base}/v1/agent/{code}/speak",
        json={"message": f"{SPOKEN_PREFIX} {n}."},
        headers={"api-secret": API_SECRET_HEADER},
    ) as response:
        body: dict[str, Any] = await response.json()
        elapsed = time.perf_counter() - start
    # a failed fan-out is a result (each room says what happened), not a crash; an answer
    # without rooms (no agent found, ...) counts as reaching none
    data: dict[str, Any] = body.get("data") or {}
    if "rooms" not in data:
        data = {"rooms": [], "delivered_to_rooms": 0}
    data["status"] = response.status
    data["error"] = body.get("error")
    return elapsed, data
