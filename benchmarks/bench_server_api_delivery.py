"""Two ways for the gateway to deliver, side by side: joining every room (RPC over a pooled
WebRTC connection, the default) and the server API (``RoomService.SendData``, the agent's ack
posted back over HTTP, no room joined: ``--delivery server-api``).

Same run, same machine, one real ``livekit-server`` (loopback-only network namespace when
possible). Per size N (default 1, 20, 50): N rooms with one agent each (a real ``rtc.Room`` +
``ContextPlugin`` + text-only ``AgentSession``, in worker processes, this file run with
``--agents``), allowing both the gateway's identity and its reply URL. For each path a fresh
gateway process (this file run with ``--gateway``; it finds the agents with its agent
directory, as ``--agent-directory``), so that its first request is cold; then:

- cold: HTTP -> response of the first ``POST /v1/agent/{code}/speak`` to all N rooms;
- warm: ``--warm`` sequential requests after it, p50 / p99;
- the gateway's RSS when it starts and after the requests, and how many rooms each request
  reached;
- where the warm time goes: CPU milliseconds per warm request spent by the gateway process,
  the ``livekit-server`` process and the agents' processes (from ``/proc``; on 2 cores a
  request's wall time cannot be shorter than their sum over 2).

Run: ``python benchmarks/bench_server_api_delivery.py [--sizes 1,20,50] [--warm 20]
[--paths room,server-api]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# before anything imports LiveKit: its native threads must start inside the namespace
from devtools.netns import isolate  # noqa: E402

NETWORK = isolate()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Final  # noqa: E402

import aiohttp  # noqa: E402
from _harness import cpu_seconds, ms, percentile  # noqa: E402
from _live import room_token  # noqa: E402
from aiohttp import web  # noqa: E402
from livekit import rtc  # noqa: E402

from devtools.livekit_server import (  # noqa: E402
    ROOT,
    LiveKitServer,
    ServerInfo,
    find_binary,
    free_tcp_port,
)
from devtools.processes import stop_async_process  # noqa: E402
from imaginex_context_plugin import ContextPlugin  # noqa: E402
from imaginex_context_plugin.gateway import (  # noqa: E402
    AgentBackend,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    MemoryAgentDirectory,
    create_app,
)
from imaginex_context_plugin.gateway.delivery import ServerApiBackend  # noqa: E402
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, start_session  # noqa: E402

GATEWAY_IDENTITY: Final = "bench-sa-gateway"
AGENT_IDENTITY: Final = "bench-sa-agent"
API_SECRET_HEADER: Final = "bench-sa-gateway-secret"
SIGNING: Final = "bench-sa-signing-secret"
AGENTS_PER_PROCESS: Final = 25
JOINS_AT_ONCE: Final = 4
JOIN_ATTEMPTS: Final = 3
DELIVERY_TIMEOUT_S: Final = 10.0
READY_TIMEOUT_S: Final = 300.0
THIS_FILE: Final = str(Path(__file__).resolve())
ROOM: Final = "room"
SERVER_API: Final = "server-api"
PATHS: Final = (ROOM, SERVER_API)
UDP_PORTS: Final = 512
"""ICE ports of the server: two per participant; the largest size has N agents and, on the
room path, N gateway connections (the test server's default 16 would make joins time out)."""


@contextlib.contextmanager
def livekit() -> Iterator[tuple[ServerInfo, int]]:
    with tempfile.TemporaryDirectory(prefix="bench-sa-livekit-") as workdir:
        server = LiveKitServer(find_binary(build=True), Path(workdir), udp_ports=UDP_PORTS)
        try:
            info = server.start()
            assert server.process is not None
            yield info, server.process.pid
        finally:
            server.stop()


# --------------------------------------------------------------------------- agent workers


async def agents_worker() -> None:
    """``--agents``: read one JSON spec line, join every room, print ``ready``; leave on
    stdin's end."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    lk = ServerInfo(spec["url"], spec["api_key"], spec["api_secret"], started_here=False)
    joined: list[tuple[rtc.Room, ContextPlugin, Any]] = []
    limit = asyncio.Semaphore(JOINS_AT_ONCE)

    async def join(room_name: str) -> None:
        async with limit:
            session = await start_session(
                llm_model=ScriptedLLM(), tts_model=RecordingTTS(), text_only=True
            )
            room = rtc.Room()
            plugin = ContextPlugin(
                agent_code=spec["code"],
                allowed_identities=[GATEWAY_IDENTITY],
                rate_limit=None,
                server_secret=lk.api_secret,
                secret=SIGNING,
                reply_urls=[spec["reply_prefix"]],
            )
            await plugin.start(session, room)
            for attempt in range(JOIN_ATTEMPTS):
                try:
                    token = room_token(lk, room_name, AGENT_IDENTITY, agent=True)
                    await room.connect(lk.url, token)
                    break
                except rtc.ConnectError:
                    # the agents' start-up is not what is measured: a handshake lost on a
                    # loaded machine is tried again
                    if attempt == JOIN_ATTEMPTS - 1:
                        raise
            joined.append((room, plugin, session))

    await asyncio.gather(*(join(name) for name in spec["rooms"]))
    print("ready", flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):
        pass
    for room, plugin, session in joined:
        await plugin.aclose()
        await session.aclose()
        await room.disconnect()


@contextlib.asynccontextmanager
async def agents(
    lk: ServerInfo, rooms: Sequence[str], code: str, reply_prefix: str
) -> AsyncIterator[list[int]]:
    """The agents of ``rooms`` in worker processes; yields the processes' pids."""
    processes: list[asyncio.subprocess.Process] = []
    try:
        for start in range(0, len(rooms), AGENTS_PER_PROCESS):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                THIS_FILE,
                "--agents",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            processes.append(process)
            assert process.stdin is not None
            spec = {
                "url": lk.url,
                "api_key": lk.api_key,
                "api_secret": lk.api_secret,
                "code": code,
                "reply_prefix": reply_prefix,
                "rooms": list(rooms[start : start + AGENTS_PER_PROCESS]),
            }
            process.stdin.write(json.dumps(spec).encode() + b"\n")
            await process.stdin.drain()
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
            if line.strip() != b"ready":
                raise RuntimeError(f"an agent worker failed to start: {line!r}")
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in processes:
            await stop_async_process(process, timeout=30, first=None)  # stdin closed: it ends


# --------------------------------------------------------------------------- the gateway


async def gateway_worker(port: int, path: str) -> None:
    """``--gateway PORT PATH``: the gateway as ``imaginex-context gateway`` builds it (rate
    limit off), delivering over room connections or the server API; serves until SIGTERM."""
    settings = LiveKitSettings(
        url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
    )
    # the agent directory, as a gateway at this scale runs (``--agent-directory``): filled by
    # its start-up reconciliation (the agents joined before the gateway started), so no
    # request lists rooms; a scan would list all of them again every second
    finder = LiveKitBackend(
        settings, identity=GATEWAY_IDENTITY, agent_directory=MemoryAgentDirectory()
    )
    backend: AgentBackend = finder
    if path == SERVER_API:
        backend = ServerApiBackend(
            finder, settings, signing_secret=SIGNING, public_url=f"http://127.0.0.1:{port}"
        )
    app = create_app(
        backend,
        ApiSecrets(secret=API_SECRET_HEADER),
        signing_secret=SIGNING if path == SERVER_API else None,
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
class Gateway:
    process: asyncio.subprocess.Process
    base_url: str

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def gateway(lk: ServerInfo, port: int, path: str) -> AsyncIterator[Gateway]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env.update(LIVEKIT_URL=lk.url, LIVEKIT_API_KEY=lk.api_key, LIVEKIT_API_SECRET=lk.api_secret)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        THIS_FILE,
        "--gateway",
        str(port),
        path,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    running = Gateway(process, f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                if process.returncode is not None:
                    raise RuntimeError("the gateway exited")
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(running.base_url + "/healthz") as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start")
                await asyncio.sleep(0.05)
        yield running
    finally:
        await stop_async_process(process, timeout=20, kill_group=True)


async def speak(http: aiohttp.ClientSession, base: str, code: str, n: int) -> tuple[float, int]:
    """One fan-out: seconds from request to response, and the rooms it reached."""
    start = time.perf_counter()
    async with http.post(
        f"{base}/v1/agent/{code}/speak",
        json={"message": f"Message {n}."},
        headers={"api-secret": API_SECRET_HEADER},
    ) as response:
        body: dict[str, Any] = await response.json()
    elapsed = time.perf_counter() - start
    delivered: int = (body.get("data") or {}).get("delivered_to_rooms", 0)
    return elapsed, delivered


@dataclass
class Row:
    size: int
    path: str
    cold_s: float
    cold_reached: int
    warm: list[float]
    warm_reached_all: int
    rss_start_bytes: int
    rss_bytes: int
    cpu_ms_per_request: dict[str, float]
    """CPU milliseconds per warm request: ``gateway``, ``server`` (absent when the server
    was not started here), ``agents``."""


async def one_path(
    lk: ServerInfo,
    port: int,
    path: str,
    code: str,
    size: int,
    warm: int,
    *,
    server_pid: int | None,
    agent_pids: Sequence[int],
) -> Row:
    async with gateway(lk, port, path) as gw, aiohttp.ClientSession() as http:
        rss_start = gw.rss_bytes()
        cold_s, cold_reached = await speak(http, gw.base_url, code, 0)
        groups: dict[str, list[int]] = {"gateway": [gw.process.pid], "agents": list(agent_pids)}
        if server_pid is not None:
            groups["server"] = [server_pid]
        cpu_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        samples: list[float] = []
        reached_all = 0
        for n in range(1, warm + 1):
            elapsed, reached = await speak(http, gw.base_url, code, n)
            samples.append(elapsed)
            reached_all += reached == size
        cpu_ms = {
            name: (cpu_seconds(pids) - cpu_before[name]) * 1000 / max(warm, 1)
            for name, pids in groups.items()
        }
        return Row(
            size,
            path,
            cold_s,
            cold_reached,
            samples,
            reached_all,
            rss_start,
            gw.rss_bytes(),
            cpu_ms,
        )


async def run(
    sizes: Sequence[int],
    warm: int,
    *,
    server: ServerInfo | None = None,
    paths: Sequence[str] = PATHS,
) -> list[Row]:
    """Every size on each of ``paths`` (default both); on ``server`` if given (small sizes),
    else on a server started here with room for the largest size."""
    rows: list[Row] = []
    given = None if server is None else (server, None)
    with contextlib.nullcontext(given) if given is not None else livekit() as (lk, server_pid):
        for size in sizes:
            code = f"SA{uuid.uuid4().hex[:8].upper()}"
            rooms = [f"bench-sa-{size}-{i}-{uuid.uuid4().hex[:6]}" for i in range(size)]
            port = free_tcp_port()
            reply_prefix = f"http://127.0.0.1:{port}/v1/internal/"
            async with agents(lk, rooms, code, reply_prefix) as agent_pids:
                await asyncio.sleep(1.5)  # the agents publish their code after joining
                for path in paths:
                    rows.append(
                        await one_path(
                            lk,
                            port,
                            path,
                            code,
                            size,
                            warm,
                            server_pid=server_pid,
                            agent_pids=agent_pids,
                        )
                    )
    return rows


def print_table(rows: Sequence[Row], warm: int) -> None:
    print(NETWORK)
    print(
        f"{'rooms':>5} {'path':<10} {'cold':>9} {'cold reached':>12} {'warm p50':>9} "
        f"{'warm p99':>9} {'warm all':>9} {'RSS MiB start -> end':>20}  "
        "CPU ms per warm request (gateway / server / agents)"
    )
    for r in rows:
        print(
            f"{r.size:>5} {r.path:<10} {ms(r.cold_s):>9} {r.cold_reached:>5}/{r.size:<6} "
            f"{ms(percentile(r.warm, 0.5)):>9} {ms(percentile(r.warm, 0.99)):>9} "
            f"{r.warm_reached_all:>4}/{warm:<4} "
            f"{r.rss_start_bytes / 2**20:>9.1f} -> {r.rss_bytes / 2**20:>6.1f}  "
            + " / ".join(
                f"{r.cpu_ms_per_request[k]:.1f}" if k in r.cpu_ms_per_request else "-"
                for k in ("gateway", "server", "agents")
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,20,50")
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--paths", default=",".join(PATHS), help="room,server-api or one")
    parser.add_argument("--agents", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", nargs=2, metavar=("PORT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agents:
        asyncio.run(agents_worker())
        return
    if args.gateway:
        asyncio.run(gateway_worker(int(args.gateway[0]), args.gateway[1]))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    if not set(paths) <= set(PATHS):
        parser.error(f"--paths: choose from {', '.join(PATHS)}")
    rows = asyncio.run(run(sizes, args.warm, paths=paths))
    print_table(rows, args.warm)


if __name__ == "__main__":
    main()
