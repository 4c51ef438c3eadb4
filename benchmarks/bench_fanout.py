"""Fan-out at scale: one ``POST /v1/agent/{code}/speak`` to the agents of 1, 50 and 200 rooms,
through the real gateway process, on a real two-node LiveKit cluster.

Same run, same machine (as root inside a loopback-only network namespace):

- **the cluster**: two ``livekit-server`` nodes sharing one Redis (``devtools/livekit_cluster``);
  rooms are pinned alternately to node A and node B, the gateway talks to node A only;
- **agents**: one per room, each a real ``rtc.Room`` + ``ContextPlugin`` + a text-only
  ``AgentSession`` (the public test kit), spread over worker processes of at most
  ``AGENTS_PER_PROCESS`` (this same file run with ``--agents``); each joins through the node
  that hosts its room;
- **the gateway**: the ``imaginex-context gateway`` process (rate limit off, 10 s delivery
  timeout), a fresh one for each size so that its first request is cold; it delivers over
  room connections (``--delivery room``, the default: it joins every room) or over the server
  API (``--delivery server-api``: one ``RoomService.SendData`` per room, sent to node A for
  rooms on both nodes, the agent posting its signed ack back to the gateway's
  ``/v1/internal/replies``; the agents then allow that reply URL and share the signing secret);
- **floor**: a bare RPC echo between two plain participants on node A, the least one request ->
  answer over LiveKit costs;
- **fan-out floors**: the same transports at the same size with none of the plugin or the
  gateway in them, measured first on the very same agents. This process makes one
  ``RoomService.PerformRpc`` per room (``ServerRpc``), answered by a bare RPC method each agent
  registers beside the plugin's (**bare PerformRpc echo**; **+ say()**: ``session.say(text)``
  first, the least any speak path on ``livekit-agents`` does), or one ``SendData`` per room
  (the gateway's own ``DataSender``), echoed by a bare HTTP ``POST`` to this process from a raw
  ``data_received`` listener (**bare SendData + HTTP echo**, and **+ say()**). All rooms at
  once; a request is done when every room answered. They bound what any design on these
  transports and these agents can reach on this machine.

Per size: HTTP -> response of the first request (cold: the gateway joins every room), then of
``warm`` sequential requests; the floors and the server-side deliveries take turns in
``--rounds`` blocks (a fresh gateway process each, all started before the first block), so that
a load coming and going on the shared machine falls on all of them alike, and the room path
runs after them, alone; RoomService calls per request (counted in both nodes' logs, which
log every API call); the gateway's RSS before and after it pooled the rooms (growth per pooled
room) and its open sockets; the rooms each node's agents were reached in (the node as LiveKit
records it in Redis: server-API packets for node B's rooms go through node A); CPU milliseconds
per warm request of the gateway process, of each ``livekit-server`` process and of the agents'
worker processes together (``/proc``; on 2 cores a request's wall time cannot be
shorter than their sum over 2). Every phase starts once the agent workers have settled
(``QUIET_CORES_PER_WORKER``); their idle CPU then is printed beside the CPU figures.
Correctness: every request reports every room delivered, and at the end each agent said
exactly one speech per request (counted in its ``AgentSession`` history).

Targets, reported, not failed: (issue 12) warm p99 at the largest size within 3x the single-room
warm p99; (issue 26) each delivery's warm p99 within 1.15x its bare floor's at the same size
(``BARE_FLOOR_OF``), every room reached, and the gateway's own CPU at most 0.25 ms per room per
request. ``--json PATH`` writes the figures as data (``scripts/capacity_model.py`` checks the
docs' capacity model against them).

Run: ``python benchmarks/bench_fanout.py [--sizes 1,50,200] [--warm N]
[--modes directory,scan] [--delivery room|server-api|room,server-api] [--floors ...]
[--json PATH]``.
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
from collections import Counter  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Final  # noqa: E402

import aiohttp  # noqa: E402
from _harness import Figure, Report, cpu_seconds, ms, percentile  # noqa: E402
from aiohttp import web  # noqa: E402
from bench_live import floor  # noqa: E402
from livekit import api, rtc  # noqa: E402

from devtools.livekit_cluster import ClusterNode, LiveKitCluster, start_cluster  # noqa: E402
from devtools.livekit_server import ROOT, free_tcp_port  # noqa: E402
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextPlugin  # noqa: E402
from imaginex_context_plugin._livekit.send_data import DataSender  # noqa: E402
from imaginex_context_plugin._livekit.server_rpc import ServerRpc  # noqa: E402
from imaginex_context_plugin.gateway import (  # noqa: E402
    AgentBackend,
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.gateway.delivery import (  # noqa: E402
    ServerApiBackend,
    ServerRpcBackend,
)
from imaginex_context_plugin.gateway.directory import MemoryAgentDirectory  # noqa: E402
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, start_session  # noqa: E402

GATEWAY_IDENTITY: Final = "bench-fanout-gateway"
AGENT_IDENTITY: Final = "bench-fanout-agent"
API_SECRET_HEADER: Final = "bench-fanout-gateway-secret"
SIGNING: Final = "bench-fanout-signing-secret"
"""The agents' and the server-API gateway's shared secret (server-API messages are signed)."""
AGENTS_PER_PROCESS: Final = 50
NODE_UDP_PORTS: Final = 1024
"""ICE ports per node: two per participant; 200 rooms put 100 agents and 100 gateway
connections on each node."""
JOINS_AT_ONCE: Final = 8
"""Agents a worker connects at once (the agents' start-up is not what is measured)."""
JOIN_ATTEMPTS: Final = 3
DELIVERY_TIMEOUT_S: Final = 10.0
READY_TIMEOUT_S: Final = 300.0
NOT_SPOKEN: Final = "did not speak each delivered message exactly once"
SETTLE_TIMEOUT_S: Final = 60.0
"""How long the agents have, after the last request, to finish the speeches they acked."""
ROOM_EMPTY_TIMEOUT_S: Final = 3600
"""Seconds a room with only its agent lives (see ``create_rooms``)."""
WARM_FACTOR: Final = 3.0
FLOOR_FACTOR: Final = 1.15
"""Target (issue 26): a delivery's warm p99 within this factor of its bare floor's."""
GATEWAY_MS_PER_ROOM: Final = 0.25
"""Target (issue 26): the gateway's own CPU per room per request, in milliseconds."""
THIS_FILE: Final = str(Path(__file__).resolve())
GATEWAY_CLI: Final = Path(sys.executable).parent / "imaginex-context"
ROOM_SERVICE_LOG: Final = "API RoomService."
UNKNOWN_OUTCOME: Final = frozenset({"TIMEOUT", "AGENT_NOT_FOUND"})
"""Room errors after which the agent may still have spoken: no answer in time, or the agent
left the room before it answered (RPC's RECIPIENT_DISCONNECTED)."""
NODE_LABELS: Final = ("node A", "node B")
DIRECTORY: Final = "directory"
SCAN: Final = "scan"
MODES: Final = (DIRECTORY, SCAN)
"""How the gateway finds the agents: its agent directory (``--agent-directory``), or listing
every room and its participants (cached 1 s), the default."""
ROOM: Final = "room"
SERVER_API: Final = "server-api"
SERVER_RPC: Final = "server-rpc"
DELIVERIES: Final = (ROOM, SERVER_API, SERVER_RPC)
"""How the gateway delivers: joining every room (RPC over a pooled connection, the default), or
``RoomService.SendData`` with the ack posted back over HTTP (no room joined)."""
QUIET_CORES_PER_WORKER: Final = 0.2
"""An agent worker counts as settled below this share of a core. Just after its rooms
connect, a worker of 50 agents burns about one core for 10 to 15 s, then idles at about 0.1
core: a phase measured in that burn measures the burn. (py-spy: half the worker's samples
then are in ``livekit.rtc``'s FFI callback thread, most of those in its loop over the native
side's log records, which it drops; ``RUST_LOG=warn`` did not change it.)"""
QUIET_TIMEOUT_S: Final = 180.0
RECONCILE_INTERVAL_S: Final = 3600.0
"""The directory's reconciliation interval here: longer than a run, so no phase counts one."""
SPOKEN_PREFIX: Final = "Fan-out message"
"""How the gateway's messages start: only those count as the agents' speeches."""
FLOOR_TOPIC: Final = "bench.fanout.floor"
ECHO_METHOD: Final = "bench.fanout.echo"
RPC_BARE: Final = "bare PerformRpc echo"
RPC_SAY: Final = "bare PerformRpc + say()"
DATA_BARE: Final = "bare SendData + HTTP echo"
DATA_SAY: Final = "bare SendData + say() + HTTP echo"
FLOORS: Final = (RPC_BARE, RPC_SAY, DATA_BARE, DATA_SAY)
"""The fan-out floors, measured on the same agents before the gateway's phases: this process
makes one ``RoomService.PerformRpc`` per room (answered by a bare RPC method beside the
plugin's) or one ``SendData`` per room (echoed by a bare HTTP ``POST``), all at once."""
RPC_FLOORS: Final = (RPC_BARE, RPC_SAY)
DATA_FLOORS: Final = (DATA_BARE, DATA_SAY)
BARE_FLOOR_OF: Final = {ROOM: RPC_BARE, SERVER_API: DATA_BARE, SERVER_RPC: RPC_BARE}
DELIVERY_CALL: Final = {SERVER_API: "SendData", SERVER_RPC: "PerformRpc"}
"""The RoomService call a server-side delivery makes per room and request, by design."""
"""The floor each delivery's target is measured against: the same transport, bare."""


# --------------------------------------------------------------------------- agent workers


def agent_token(url_key: str, secret: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True)
    return (
        api.AccessToken(url_key, secret)
        .with_identity(AGENT_IDENTITY)
        .with_kind("agent")
        .with_grants(grants)
        .to_jwt()
    )


async def agents_worker() -> None:
    """``--agents``: read one JSON spec line, join every room, print ``ready``, then on a
    ``report`` line print how many speeches each room's agent said, and leave on stdin's end."""
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    joined: list[tuple[str, rtc.Room, ContextPlugin, Any]] = []
    limit = asyncio.Semaphore(JOINS_AT_ONCE)
    floor_url: str | None = spec.get("floor_url")
    echo_clients: list[aiohttp.ClientSession] = []
    echo_tasks: set[asyncio.Task[None]] = set()
    floor_speeches: list[Any] = []

    def rpc_echo(session: Any) -> Any:
        async def handler(data: rtc.RpcInvocationData) -> str:
            # the PerformRpc floor: no validation, no signing, no queue; say() when asked
            message = json.loads(data.payload)
            if message["say"]:
                floor_speeches.append(session.say(message["text"]))
            return "ok"

        return handler

    async def echo(room_name: str, session: Any, http: aiohttp.ClientSession, data: bytes) -> None:
        # the fan-out floor: no validation, no signing, no queue, no ack; say() when asked
        message = json.loads(data)
        if message["say"]:
            floor_speeches.append(session.say(message["text"]))
        assert floor_url is not None
        async with http.post(floor_url, json={"room": room_name, "n": message["n"]}) as response:
            await response.read()

    def listen_for_floor(room: rtc.Room, room_name: str, session: Any) -> None:
        # one HTTP client per agent, as each plugin has its own for its replies
        http = aiohttp.ClientSession()
        echo_clients.append(http)

        def on_data(packet: rtc.DataPacket) -> None:
            if packet.topic == FLOOR_TOPIC:
                task = loop.create_task(echo(room_name, session, http, packet.data))
                echo_tasks.add(task)
                task.add_done_callback(echo_tasks.discard)

        room.on("data_received", on_data)

    async def join(room_name: str, url: str) -> None:
        async with limit:
            session = await start_session(
                llm_model=ScriptedLLM(), tts_model=RecordingTTS(), text_only=True
            )
            room = rtc.Room()
            plugin = ContextPlugin(
                agent_code=spec["code"],
                allowed_identities=[GATEWAY_IDENTITY],
                rate_limit=None,
                server_secret=spec["api_secret"],
                secret=spec.get("secret"),
                reply_urls=spec.get("reply_prefixes", []),
            )
            await plugin.start(session, room)
            if floor_url is not None:
                listen_for_floor(room, room_name, session)
            token = agent_token(spec["api_key"], spec["api_secret"], room_name)
            for attempt in range(JOIN_ATTEMPTS):
                try:
                    await room.connect(url, token)
                    break
                except rtc.ConnectError:
                    # the agents' start-up is not what is measured: a handshake lost on a
                    # loaded machine is tried again
                    if attempt == JOIN_ATTEMPTS - 1:
                        raise
            room.local_participant.register_rpc_method(ECHO_METHOD, rpc_echo(session))
            joined.append((room_name, room, plugin, session))

    await asyncio.gather(*(join(name, url) for name, url in spec["rooms"]))
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "report":
            said = {
                name: sum(
                    1
                    for m in session.history.messages()
                    if m.role == "assistant" and (m.text_content or "").startswith(SPOKEN_PREFIX)
                )
                for name, _, _, session in joined
            }
            print(json.dumps(said), flush=True)
        elif line.strip() == "settle":
            # the floors' speeches are over before the gateway's phases start
            await asyncio.gather(*echo_tasks, return_exceptions=True)
            await asyncio.gather(*floor_speeches, return_exceptions=True)
            floor_speeches.clear()
            print("settled", flush=True)
    for http in echo_clients:
        await http.close()
    for _, room, plugin, session in joined:
        await plugin.aclose()
        await session.aclose()
        await room.disconnect()


@dataclass
class AgentWorkers:
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    async def report(self) -> dict[str, int]:
        said: dict[str, int] = {}
        for process in self.processes:
            assert process.stdin is not None
            assert process.stdout is not None
            if process.returncode is not None:
                continue  # its rooms count as having said nothing
            process.stdin.write(b"report\n")
            await process.stdin.drain()
            said.update(json.loads(await process.stdout.readline()))
        return said

    async def settle(self) -> None:
        """Wait until every agent's floor echoes and floor speeches are done."""
        for process in self.processes:
            assert process.stdin is not None
            if process.returncode is None:
                process.stdin.write(b"settle\n")
                await process.stdin.drain()
        for process in self.processes:
            assert process.stdout is not None
            if process.returncode is None:
                await asyncio.wait_for(process.stdout.readline(), SETTLE_TIMEOUT_S)

    async def stop(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


@contextlib.asynccontextmanager
async def agents(
    cluster: LiveKitCluster,
    placed: Sequence[tuple[str, ClusterNode]],
    code: str,
    reply_prefixes: Sequence[str] = (),
    floor_url: str | None = None,
) -> AsyncIterator[AgentWorkers]:
    """The agents of ``placed``; with ``reply_prefixes`` they share the signing secret and
    allow server-API packets to ask for their answer there; with ``floor_url`` they echo the
    fan-out floors' packets there."""
    workers = AgentWorkers()
    try:
        for start in range(0, len(placed), AGENTS_PER_PROCESS):
            chunk = placed[start : start + AGENTS_PER_PROCESS]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                THIS_FILE,
                "--agents",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            workers.processes.append(process)
            assert process.stdin is not None
            spec = {
                "code": code,
                "api_key": cluster.api_key,
                "api_secret": cluster.api_secret,
                "rooms": [(name, node.info.url) for name, node in chunk],
            }
            if reply_prefixes:
                spec.update(secret=SIGNING, reply_prefixes=list(reply_prefixes))
            if floor_url is not None:
                spec.update(floor_url=floor_url)
            process.stdin.write(json.dumps(spec).encode() + b"\n")
            await process.stdin.drain()
        for process in workers.processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
            if line.strip() != b"ready":
                raise RuntimeError(f"an agent worker failed to start: {line!r}")
        yield workers
    finally:
        await workers.stop()


async def unlisted(
    cluster: LiveKitCluster, rooms: Sequence[str], code: str, *, wait: float = 0.0
) -> set[str]:
    """The rooms where RoomService does not show the agent with its code (where the gateway
    looks), waiting up to ``wait`` seconds for them to appear."""
    node = cluster.nodes[0]
    async with api.LiveKitAPI(node.info.url, cluster.api_key, cluster.api_secret) as lkapi:
        pending = set(rooms)
        deadline = time.monotonic() + wait
        while pending:
            for name in list(pending):
                with contextlib.suppress(api.TwirpError):
                    listing = await lkapi.room.list_participants(
                        api.ListParticipantsRequest(room=name)
                    )
                    if any(
                        p.attributes.get(AGENT_CODE_ATTRIBUTE) == code for p in listing.participants
                    ):
                        pending.discard(name)
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    return pending


async def settled_cpu(
    groups: dict[str, list[int]], *, timeout_s: float = QUIET_TIMEOUT_S
) -> dict[str, float]:
    """Wait until the agent workers (``groups["agents"]``) are settled
    (``QUIET_CORES_PER_WORKER`` each, over a 1 s window); each group's CPU in that window, in
    milliseconds per second: what an idle agent, LiveKit node or gateway costs."""
    deadline = time.monotonic() + timeout_s
    workers = len(groups["agents"])
    while True:
        before, start = {k: cpu_seconds(p) for k, p in groups.items()}, time.monotonic()
        await asyncio.sleep(1.0)
        took = time.monotonic() - start
        rates = {k: (cpu_seconds(p) - before[k]) * 1000 / took for k, p in groups.items()}
        if rates["agents"] < QUIET_CORES_PER_WORKER * 1000 * max(workers, 1):
            return rates
        if time.monotonic() > deadline:
            return rates


# --------------------------------------------------------------------------- the gateway


async def gateway_worker(port: int, mode: str, joins: int, delivery: str = ROOM) -> None:
    """``--gateway``: the gateway as ``imaginex-context gateway`` builds it (no Redis, rate
    limit off; signed only with server-API delivery), with ``max_concurrent_joins`` set;
    serves until SIGTERM."""
    settings = LiveKitSettings(
        url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
    )
    finder = LiveKitBackend(
        settings,
        identity=GATEWAY_IDENTITY,
        max_concurrent_joins=joins,
        agent_directory=MemoryAgentDirectory() if mode == DIRECTORY else None,
        reconcile_interval=RECONCILE_INTERVAL_S,
    )
    backend: AgentBackend = finder
    if delivery == SERVER_RPC:
        backend = ServerRpcBackend(finder, settings)
    if delivery == SERVER_API:
        backend = ServerApiBackend(
            finder, settings, signing_secret=SIGNING, public_url=f"http://127.0.0.1:{port}"
        )
    app = create_app(
        backend,
        ApiSecrets(secret=API_SECRET_HEADER),
        signing_secret=SIGNING if delivery == SERVER_API else None,
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
    """A fresh gateway process on ``port`` (default: a free one); with server-API delivery its
    public URL is ``http://127.0.0.1:{port}``, which the agents must already allow."""
    port = port if port is not None else free_tcp_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIVEKIT_", "IMAGINEX_API", "IMAGINEX_SIGNING"))
    }
    env.update(
        LIVEKIT_URL=node.info.url,
        LIVEKIT_API_KEY=node.info.api_key,
        LIVEKIT_API_SECRET=node.info.api_secret,
        IMAGINEX_API_SECRET=API_SECRET_HEADER,
    )
    if delivery == SERVER_API:
        env.update(IMAGINEX_SIGNING_SECRET=SIGNING)
    log_path = workdir / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        command = [
            str(GATEWAY_CLI),
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--identity",
            GATEWAY_IDENTITY,
            "--rate-limit",
            "0",
            "--timeout",
            str(DELIVERY_TIMEOUT_S),
            # the directory's first reconciliation finds the agents (they joined before it
            # started); the periodic ones (1 + N calls every 30 s, bench_directory.py) are
            # pushed out of the phase, so that the calls counted are the requests' own
            *(
                ["--agent-directory", "--reconcile-interval", str(RECONCILE_INTERVAL_S)]
                if mode == DIRECTORY
                else []
            ),
            *(
                ["--delivery", SERVER_API, "--public-url", f"http://127.0.0.1:{port}"]
                if delivery == SERVER_API
                else []
            ),
            *(["--delivery", SERVER_RPC] if delivery == SERVER_RPC else []),
        ]
        if joins is not None:  # built here as the command builds it, with that join bound
            command = [
                *(sys.executable, THIS_FILE, "--gateway"),
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
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                if process.returncode is not None:
                    raise RuntimeError("the gateway exited:\n" + log_path.read_text()[-3000:])
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(running.base_url + "/healthz") as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start")
                await asyncio.sleep(0.05)
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


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


# --------------------------------------------------------------------------- fan-out floors


class EchoInbox:
    """This process's ``POST /echo``: which rooms have echoed floor request ``n``."""

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[set[str], int, asyncio.Event]] = {}

    def expect(self, n: int, rooms: int) -> asyncio.Event:
        done = asyncio.Event()
        self._waiting[n] = (set(), rooms, done)
        return done

    def echoed(self, n: int) -> int:
        return len(self._waiting.pop(n, (set(), 0, None))[0])

    async def handle(self, request: web.Request) -> web.Response:
        echo = await request.json()
        waiting = self._waiting.get(echo["n"])
        if waiting is not None:
            rooms, expected, done = waiting
            rooms.add(echo["room"])
            if len(rooms) == expected:
                done.set()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def echo_server(port: int) -> AsyncIterator[EchoInbox]:
    inbox = EchoInbox()
    app = web.Application()
    app.router.add_post("/echo", inbox.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield inbox
    finally:
        await runner.cleanup()


@dataclass
class Measured:
    """CPU per process group, summed over the warm requests measured so far."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    idle: dict[str, list[float]] = field(default_factory=dict)
    """Each group's CPU just before each block (the agents settled), milliseconds per
    second."""

    @property
    def cpu_ms(self) -> dict[str, float]:
        """CPU milliseconds per warm request, by group."""
        return {k: v * 1000 / max(self.requests, 1) for k, v in self.cpu_s.items()}

    def idle_ms_per_s(self, group: str) -> float:
        """``group``'s CPU when idle (the median over the blocks), milliseconds per second."""
        rates = sorted(self.idle.get(group, []))
        return rates[len(rates) // 2] if rates else 0.0

    async def block(
        self,
        groups: dict[str, list[int]],
        requests: Sequence[Callable[[], Awaitable[None]]],
    ) -> None:
        """Run ``requests`` one after the other, once the agents have settled, counting the
        CPU each group spends meanwhile."""
        for name, rate in (await settled_cpu(groups)).items():
            self.idle.setdefault(name, []).append(rate)
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        for request in requests:
            await request()
        for name, pids in groups.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + cpu_seconds(pids) - before[name]
        self.requests += len(requests)


@dataclass
class FloorPhase:
    """One fan-out floor against one size's rooms."""

    rooms: int
    variant: str
    warm: list[float] = field(default_factory=list)
    missed: int = 0
    """Rooms that did not answer within the delivery timeout, over all requests."""
    measured: Measured = field(default_factory=Measured)
    """CPU: ``sender`` (this process), ``node A``, ``node B``, ``agents``."""

    @property
    def cpu_ms(self) -> dict[str, float]:
        return self.measured.cpu_ms

    @property
    def label(self) -> str:
        return f"{self.rooms} rooms, {self.variant}"


class FloorRunner:
    """Bare fan-outs of one floor variant to every room in ``names``: a ``PerformRpc`` to each
    agent's bare echo method, done when every room has answered, or a ``SendData`` to each,
    done when every agent has echoed it over HTTP."""

    def __init__(
        self,
        cluster: LiveKitCluster,
        names: Sequence[str],
        variant: str,
        inbox: EchoInbox,
        workers: AgentWorkers,
    ) -> None:
        node = cluster.nodes[0].info
        settings = LiveKitSettings(url=node.url, api_key=node.api_key, api_secret=node.api_secret)
        self._rpc, self._sender = ServerRpc(settings), DataSender(settings)
        self._names, self._variant, self._inbox, self._workers = names, variant, inbox, workers
        self._say = variant in (RPC_SAY, DATA_SAY)
        self._groups = cpu_groups(cluster, [os.getpid()], workers.pids, first="sender")
        self._next = 1_000_000 * (FLOORS.index(variant) + 1)  # numbers no other floor uses
        self.phase = FloorPhase(len(names), variant)

    async def _call(self, name: str, payload: str) -> bool:
        with contextlib.suppress(api.TwirpError, OSError, asyncio.TimeoutError):
            await self._rpc.perform(
                name, AGENT_IDENTITY, ECHO_METHOD, payload, timeout=DELIVERY_TIMEOUT_S
            )
            return True
        return False

    async def fan_out(self) -> float:
        n, self._next = self._next, self._next + 1
        names = self._names
        packet = json.dumps({"n": n, "say": self._say, "text": f"Floor message {n}."})
        start = time.perf_counter()
        if self._variant in RPC_FLOORS:
            answered = await asyncio.gather(*(self._call(name, packet) for name in names))
            self.phase.missed += answered.count(False)
            return time.perf_counter() - start
        done = self._inbox.expect(n, len(names))
        await asyncio.gather(
            *(
                self._sender.send(
                    name,
                    packet.encode(),
                    destination_identities=[AGENT_IDENTITY],
                    topic=FLOOR_TOPIC,
                    timeout=DELIVERY_TIMEOUT_S,
                )
                for name in names
            )
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), DELIVERY_TIMEOUT_S)
        elapsed = time.perf_counter() - start
        self.phase.missed += len(names) - self._inbox.echoed(n)
        return elapsed

    async def cold(self) -> None:
        """One fan-out that is not measured: connections and tokens, as a gateway's cold."""
        await self.fan_out()
        self.phase.missed = 0
        await self._workers.settle()

    async def block(self, count: int) -> None:
        async def one() -> None:
            self.phase.warm.append(await self.fan_out())

        await self.phase.measured.block(self._groups, [one] * count)
        await self._workers.settle()  # its speeches and echoes are over before the next block

    async def aclose(self) -> None:
        await self._rpc.aclose()
        await self._sender.aclose()


def cpu_groups(
    cluster: LiveKitCluster, first_pids: Sequence[int], agent_pids: Sequence[int], *, first: str
) -> dict[str, list[int]]:
    """The processes whose CPU is counted: ``first`` (the gateway, or this process as the
    floors' sender), each LiveKit node, the agents' worker processes together."""
    groups = {first: list(first_pids)}
    for label, node in zip(NODE_LABELS, cluster.nodes, strict=False):
        groups[label] = [node.server.process.pid] if node.server.process else []
    groups["agents"] = list(agent_pids)
    return groups


# --------------------------------------------------------------------------- one size


@dataclass
class Phase:
    """One gateway (one delivery, one way of finding agents) against one size's rooms."""

    rooms: int
    mode: str
    delivery: str
    cold: float = 0.0
    warm: list[float] = field(default_factory=list)
    rss_base: int = 0
    rss_pooled: int = 0
    sockets_base: int = 0
    sockets_pooled: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    """RoomService calls logged by the nodes during this gateway's requests."""
    per_room_calls: list[int] = field(default_factory=lambda: [0, 0])
    """The delivery's own calls (``DELIVERY_CALL``) in each node's log (node A, node B)."""
    measured: Measured = field(default_factory=Measured)
    """CPU: ``gateway``, ``node A``, ``node B``, ``agents``."""
    reached_by_node: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Node label (A, B) -> (room deliveries reported, rooms there x requests), over all
    requests; the node as LiveKit records it."""
    moved_rooms: int = 0
    """Rooms LiveKit had on another node than they were created on (see ``one_size``)."""

    @property
    def cpu_ms(self) -> dict[str, float]:
        return self.measured.cpu_ms

    @property
    def duplicates(self) -> int:
        """Rooms whose agent answered from its dedup memory, over all requests."""
        return sum(1 for a in self.answers for r in a["rooms"] if r.get("duplicate"))

    @property
    def calls_per_request(self) -> float:
        return self.calls / max(len(self.answers), 1)

    @property
    def send_data_per_node(self) -> list[float]:
        return [c / max(len(self.answers), 1) for c in self.per_room_calls]

    @property
    def send_data_per_request(self) -> float:
        return sum(self.send_data_per_node)

    @property
    def label(self) -> str:
        suffix = "" if self.delivery == ROOM else f", {self.delivery}"
        return f"{self.rooms} rooms, {self.mode}{suffix}"


class GatewayRunner:
    """One gateway process's requests: the cold one, then blocks of warm ones."""

    def __init__(
        self,
        cluster: LiveKitCluster,
        gw: GatewayProcess,
        http: aiohttp.ClientSession,
        code: str,
        workers: AgentWorkers,
        phase: Phase,
    ) -> None:
        self._cluster, self._gw, self._http, self._code = cluster, gw, http, code
        self._workers = workers
        self._calls = RoomServiceCalls(cluster)
        self._per_room_call = f"API RoomService.{DELIVERY_CALL.get(phase.delivery, 'SendData')}"
        self._groups = cpu_groups(cluster, [gw.process.pid], workers.pids, first="gateway")
        self._next = 0
        self.phase = phase
        phase.rss_base, phase.sockets_base = gw.rss_bytes(), gw.sockets()

    async def _counted(self, run: Callable[[], Awaitable[None]]) -> None:
        before, per_node = self._calls.count(), self._calls.per_node(self._per_room_call)
        await run()
        phase = self.phase
        phase.calls += self._calls.count() - before
        after = self._calls.per_node(self._per_room_call)
        phase.per_room_calls = [
            total + now - then
            for total, now, then in zip(phase.per_room_calls, after, per_node, strict=True)
        ]
        phase.rss_pooled = max(phase.rss_pooled, self._gw.rss_bytes())
        phase.sockets_pooled = max(phase.sockets_pooled, self._gw.sockets())

    async def _speak(self) -> float:
        n, self._next = self._next, self._next + 1
        elapsed, data = await speak(self._http, self._gw.base_url, self._code, n)
        self.phase.answers.append(data)
        return elapsed

    async def cold(self) -> None:
        async def first() -> None:
            self.phase.cold = await self._speak()

        await self._calls.settled()  # the directory's first reconciliation is its start-up
        await settled_cpu(self._groups)
        await self._counted(first)

    async def block(self, count: int) -> None:
        async def one() -> None:
            self.phase.warm.append(await self._speak())

        async def run() -> None:
            await self.phase.measured.block(self._groups, [one] * count)

        await self._counted(run)


def check(phases: Sequence[Phase], names: Sequence[str], said: dict[str, int]) -> list[str]:
    """What went wrong: a request that missed a room, a room that spoke a message twice."""
    failures = []
    delivered = dict.fromkeys(names, 0)
    timed_out = dict.fromkeys(names, 0)
    for done in phases:
        for n, data in enumerate(done.answers):
            missed = [r for r in data["rooms"] if not r["delivered"]]
            if not data["rooms"]:
                failures.append(f"{done.label}, request {n}: {data['status']} {data['error']}")
            elif missed:
                errors = Counter(str(r.get("error")) for r in missed)
                failures.append(
                    f"{done.label}, request {n}: {data['delivered_to_rooms']}/{done.rooms} "
                    f"delivered ({', '.join(f'{e} x{c}' for e, c in sorted(errors.items()))})"
                )
            for result in data["rooms"]:
                if result["delivered"]:
                    delivered[result["room"]] += 1
                elif result["error"] in UNKNOWN_OUTCOME:
                    timed_out[result["room"]] += 1
    wrong = [
        name
        for name in names
        if not delivered[name] <= said.get(name, 0) <= delivered[name] + timed_out[name]
    ]
    if wrong:
        gaps = Counter(said.get(name, 0) - delivered[name] for name in wrong)
        failures.append(
            f"{len(wrong)} rooms {NOT_SPOKEN} "
            f"(said - delivered: {', '.join(f'{g:+d} x{c}' for g, c in sorted(gaps.items()))})"
        )
    return failures


async def settled_speeches(
    workers: AgentWorkers, phases: Sequence[Phase], names: Sequence[str]
) -> dict[str, int]:
    """What each room's agent said, once it has said what it acked: an ack means the speech
    was taken, not that it is over, and the history records it when it is (a loaded worker
    may still be behind when the last request is answered)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        said = await workers.report()
        spoken = [f for f in check(phases, names, said) if NOT_SPOKEN in f]
        if not spoken or time.monotonic() > deadline:
            return said
        await asyncio.sleep(0.5)


async def create_rooms(cluster: LiveKitCluster, placed: Sequence[tuple[str, ClusterNode]]) -> None:
    """Create each room on its node (through node A) to outlive the run: LiveKit counts agent
    participants as dependent, so a room with only its agent in it is "empty" and is closed
    ``empty_timeout`` after its creation (``cluster.create_room``'s 60 s closed every room of a
    size whose agents, plus the phases, took longer than that). They are deleted at the end."""
    async with api.LiveKitAPI(
        cluster.nodes[0].info.url, cluster.api_key, cluster.api_secret
    ) as lkapi:
        for name, node in placed:
            await lkapi.room.create_room(
                api.CreateRoomRequest(
                    name=name,
                    node_id=node.node_id,
                    empty_timeout=ROOM_EMPTY_TIMEOUT_S,
                    departure_timeout=ROOM_EMPTY_TIMEOUT_S,
                )
            )


async def one_size(
    cluster: LiveKitCluster,
    rooms: int,
    warm: int,
    modes: Sequence[str],
    workdir: Path,
    joins: int | None = None,
    deliveries: Sequence[str] = (ROOM,),
    floor_variants: Sequence[str] = FLOORS,
    rounds: int = 1,
) -> tuple[list[Phase], list[FloorPhase], list[str]]:
    """One size: the floors and the server-side deliveries (every mode) take turns, in
    ``rounds`` blocks of warm requests each, so that a load coming and going on the machine
    falls on all of them alike; the room path (it holds a WebRTC connection per room, which
    would weigh on the others) runs after them, alone, each mode with a fresh gateway."""
    code = f"FAN{rooms:04d}{uuid.uuid4().hex[:4].upper()}"
    placed = [
        (f"fan-{rooms}-{uuid.uuid4().hex[:6]}-{i}", cluster.nodes[i % len(cluster.nodes)])
        for i in range(rooms)
    ]
    await create_rooms(cluster, placed)
    names = [name for name, _ in placed]
    phases: list[Phase] = []
    floors: list[FloorPhase] = []
    problems: list[str] = []
    server_side = [(d, m) for d in deliveries if d != ROOM for m in modes]
    # the server-API gateways' ports are fixed before the agents start: they must allow
    # their reply URLs
    ports = {(d, m): free_tcp_port() for d, m in server_side}
    reply_prefixes = [
        f"http://127.0.0.1:{port}/v1/internal/" for (d, _), port in ports.items() if d == SERVER_API
    ]
    floor_port = free_tcp_port() if set(floor_variants) & set(DATA_FLOORS) else None
    floor_url = None if floor_port is None else f"http://127.0.0.1:{floor_port}/echo"
    rounds = max(1, min(rounds, warm))
    blocks = [warm // rounds + (1 if r < warm % rounds else 0) for r in range(rounds)]
    try:
        async with (
            agents(cluster, placed, code, reply_prefixes, floor_url) as workers,
            contextlib.AsyncExitStack() as stack,
            aiohttp.ClientSession() as http,
        ):
            if missing := await unlisted(cluster, names, code, wait=READY_TIMEOUT_S):
                raise RuntimeError(f"{len(missing)} agents never showed their code")
            inbox = (
                await stack.enter_async_context(echo_server(floor_port))
                if floor_port is not None
                else EchoInbox()
            )
            taking_turns: list[FloorRunner | GatewayRunner] = []
            for variant in floor_variants:
                runner = FloorRunner(cluster, names, variant, inbox, workers)
                stack.push_async_callback(runner.aclose)
                await runner.cold()
                floors.append(runner.phase)
                taking_turns.append(runner)
            for delivery, mode in server_side:
                gw = await stack.enter_async_context(
                    gateway(cluster.nodes[0], workdir, mode, joins, delivery, ports[delivery, mode])
                )
                gateway_phase = Phase(rooms, mode, delivery)
                runner_gw = GatewayRunner(cluster, gw, http, code, workers, gateway_phase)
                await runner_gw.cold()
                phases.append(gateway_phase)
                taking_turns.append(runner_gw)
            for count in blocks:
                for turn in taking_turns:
                    if gone := await unlisted(cluster, names, code):
                        problems.append(f"{len(gone)} of {rooms} agents were gone")
                    await turn.block(count)
            for mode in modes if ROOM in deliveries else ():
                room_phase = Phase(rooms, mode, ROOM)
                async with gateway(cluster.nodes[0], workdir, mode, joins, ROOM) as gw:
                    runner_gw = GatewayRunner(cluster, gw, http, code, workers, room_phase)
                    await runner_gw.cold()
                    await runner_gw.block(warm)
                phases.append(room_phase)
            said = await settled_speeches(workers, phases, names)
            where = await cluster.room_nodes()
            node_label = {
                n.node_id: "AB"[i] if i < 2 else str(i) for i, n in enumerate(cluster.nodes)
            }
            # a room whose first join failed on its node can be made again by the retry, on
            # the node LiveKit then picks: reported, the figures use where each room is
            moved = sum(1 for name, node in placed if where.get(name) != node.node_id)
            for done in phases:
                done.reached_by_node = reached_by_node(done, names, where, node_label)
                done.moved_rooms = moved
    finally:
        async with api.LiveKitAPI(
            cluster.nodes[0].info.url, cluster.api_key, cluster.api_secret
        ) as lkapi:
            for name in names:
                with contextlib.suppress(api.TwirpError):
                    await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))
    problems += [
        f"{done.label}: {done.missed} rooms not reached" for done in floors if done.missed
    ]
    return phases, floors, problems + check(phases, names, said)


def reached_by_node(
    done: Phase, names: Sequence[str], where: dict[str, str], node_label: dict[str, str]
) -> dict[str, tuple[int, int]]:
    """Per node: room deliveries the requests reported, of rooms there x requests."""
    label_of = {name: node_label.get(where.get(name, ""), "?") for name in names}
    counts = {label: [0, 0] for label in sorted(set(label_of.values()))}
    for data in done.answers:
        for name in names:
            counts[label_of[name]][1] += 1
        for result in data["rooms"]:
            if result["delivered"] and result["room"] in label_of:
                counts[label_of[result["room"]]][0] += 1
    return {label: (got, of) for label, (got, of) in counts.items()}


# --------------------------------------------------------------------------- the report


@contextlib.contextmanager
def cluster_here(given: LiveKitCluster | None) -> Iterator[LiveKitCluster]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as workdir:
        cluster = start_cluster(Path(workdir), udp_ports=NODE_UDP_PORTS)
        try:
            yield cluster
        finally:
            cluster.stop()


def p50_p99(samples: Sequence[float]) -> str:
    return f"{ms(percentile(samples, 0.5))} / {ms(percentile(samples, 0.99))}"


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


async def run(
    sizes: Sequence[int] = (1, 50, 200),
    warm: int = 20,
    floor_requests: int = 100,
    modes: Sequence[str] = MODES,
    cluster: LiveKitCluster | None = None,
    joins: int | None = None,
    deliveries: Sequence[str] = (ROOM,),
    floor_variants: Sequence[str] = FLOORS,
    results: dict[str, Any] | None = None,
    rounds: int = 4,
) -> Report:
    """Measure; ``cluster``: use this one instead of starting a new one; ``joins``: run the
    gateway with this ``max_concurrent_joins`` (built here as the command builds it) instead of
    the ``imaginex-context gateway`` command with its defaults; ``deliveries``: each of
    ``DELIVERIES`` to measure (every mode with each), in that order; ``floor_variants``: the
    fan-out floors to measure; ``results``: filled with the figures as data (what
    ``--json`` writes, what ``scripts/capacity_model.py`` checks); ``rounds``: how many turns
    the floors and the server-side deliveries take, ``warm`` requests shared between them."""
    report = Report("fan-out: one speak to N rooms through the gateway, on a 2-node cluster")
    report.notes.append(NETWORK)
    load_before = os.getloadavg()
    phases: list[Phase] = []
    floors: list[FloorPhase] = []
    with cluster_here(cluster) as lk, tempfile.TemporaryDirectory(prefix="fanout-gw-") as tmp:
        floor_samples = await floor(lk.nodes[0].info, floor_requests)
        for rooms in sizes:
            try:
                measured, floored, failures = await one_size(
                    lk, rooms, warm, modes, Path(tmp), joins, deliveries, floor_variants, rounds
                )
            except (RuntimeError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                report.ok = False
                report.notes.append(f"{rooms} rooms: broke: {type(exc).__name__}: {exc}"[:400])
                break
            phases.extend(measured)
            floors.extend(floored)
            if failures:
                report.ok = False
                report.notes.extend(f"{rooms} rooms: {failure}" for failure in failures[:6])
    floor_p99 = percentile(floor_samples, 0.99)
    floor_text = p50_p99(floor_samples)
    report.add(Figure("floor: bare RPC echo, p50 / p99", floor_text))
    for done in floors:
        add_floor_figures(report, done, floors, sizes)
    for each in phases:
        add_figures(report, each, phases, floors, sizes, floor_text, floor_p99)
    load_after = os.getloadavg()
    report.notes.append(
        "load average (1, 5, 15 min) at the start "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; at the end "
        + ", ".join(f"{x:.2f}" for x in load_after)
    )
    if results is not None:
        results.update(
            as_data(floors, phases, floor_samples, load_before, load_after, warm, report.ok)
        )
    report.notes.append(
        f"{warm} warm requests per size, mode and delivery, after 1 cold, the floors and the "
        f"server-side deliveries taking turns in {rounds} rounds, the room path after them; "
        f"agents in <= "
        f"{AGENTS_PER_PROCESS} rooms per worker process; rooms alternate between the 2 nodes, "
        f"the gateway uses node A; {DELIVERY_TIMEOUT_S:g} s delivery timeout"
        + (f"; max_concurrent_joins={joins}" if joins is not None else "")
        + (
            "; server-api: SendData to node A for the rooms of both nodes, acks posted back to "
            "the gateway over HTTP, messages signed"
            if SERVER_API in deliveries
            else ""
        )
        + "; fan-out floors: PerformRpc or SendData from this process (sender) to the same "
        "agents, answered by a bare RPC method or echoed by a bare POST, nothing of the plugin "
        "or the gateway in them"
    )
    return report


def as_data(
    floors: Sequence[FloorPhase],
    phases: Sequence[Phase],
    floor_samples: Sequence[float],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    warm: int,
    ok: bool,
) -> dict[str, Any]:
    """The run's figures as data: times in milliseconds, CPU in milliseconds per request."""

    def p(samples: Sequence[float], q: float) -> float:
        return round(percentile(samples, q) * 1000, 3)

    return {
        "load_before": list(load_before),
        "load_after": list(load_after),
        "warm": warm,
        "ok": ok,
        "rpc_echo_ms": {"p50": p(floor_samples, 0.5), "p99": p(floor_samples, 0.99)},
        "floors": [
            {
                "rooms": f.rooms,
                "variant": f.variant,
                "p50_ms": p(f.warm, 0.5),
                "p99_ms": p(f.warm, 0.99),
                "missed": f.missed,
                "cpu_ms": {k: round(v, 2) for k, v in f.cpu_ms.items()},
                "idle_ms_per_s": {
                    k: round(f.measured.idle_ms_per_s(k), 1) for k in f.measured.idle
                },
            }
            for f in floors
        ],
        "phases": [
            {
                "rooms": d.rooms,
                "mode": d.mode,
                "delivery": d.delivery,
                "cold_ms": round(d.cold * 1000, 3),
                "p50_ms": p(d.warm, 0.5),
                "p99_ms": p(d.warm, 0.99),
                "delivered": sum(a["delivered_to_rooms"] for a in d.answers),
                "duplicates": d.duplicates,
                "of": d.rooms * len(d.answers),
                "cpu_ms": {k: round(v, 2) for k, v in d.cpu_ms.items()},
                "idle_ms_per_s": {
                    k: round(d.measured.idle_ms_per_s(k), 1) for k in d.measured.idle
                },
                "rss_base_mib": round(d.rss_base / 2**20, 1),
                "rss_after_mib": round(d.rss_pooled / 2**20, 1),
                "sockets_base": d.sockets_base,
                "sockets_after": d.sockets_pooled,
                "room_service_calls_per_request": round(d.calls_per_request, 2),
            }
            for d in phases
        ],
    }


def add_floor_figures(
    report: Report, done: FloorPhase, floors: Sequence[FloorPhase], sizes: Sequence[int]
) -> None:
    single = next((f for f in floors if f.variant == done.variant and f.rooms == min(sizes)), None)
    single_p99 = percentile(single.warm, 0.99) if single is not None and single.warm else 0.0
    largest = done.rooms == max(sizes) and done.rooms != min(sizes) and single_p99 > 0
    report.add(
        Figure(
            f"{done.label}: warm, p50 / p99",
            p50_p99(done.warm),
            f"1 room p99 {ms(single_p99)}" if largest else "",
            f"{percentile(done.warm, 0.99) / single_p99:.2f}x" if largest else "",
        )
    )
    report.add(cpu_figure(f"{done.label}: CPU ms per warm request", done.measured))
    if done.missed:
        report.add(Figure(f"{done.label}: rooms not reached, all requests", str(done.missed)))


def cpu_figure(name: str, measured: Measured) -> Figure:
    """CPU per warm request of each process (group), in the order measured, and each one's
    CPU when idle (between the blocks)."""
    cpu = measured.cpu_ms
    idle = " / ".join(f"{measured.idle_ms_per_s(group):.0f}" for group in cpu)
    return Figure(
        f"{name}, {' / '.join(cpu)}",
        " / ".join(f"{v:.1f}" for v in cpu.values()),
        f"sum {sum(cpu.values()):.1f}; idle before, ms/s: {idle}",
    )


def add_figures(
    report: Report,
    done: Phase,
    phases: Sequence[Phase],
    floors: Sequence[FloorPhase],
    sizes: Sequence[int],
    floor_text: str,
    floor_p99: float,
) -> None:
    n, label = done.rooms, done.label
    single = next(
        (
            p
            for p in phases
            if p.mode == done.mode and p.delivery == done.delivery and p.rooms == min(sizes)
        ),
        None,
    )
    single_p99 = percentile(single.warm, 0.99) if single is not None and single.warm else 0.0
    warm_p99 = percentile(done.warm, 0.99)
    largest = n == max(sizes) and n != min(sizes) and single_p99 > 0
    # a figure only meets its target when every request reached every room
    complete = all(a["delivered_to_rooms"] == n for a in done.answers)
    delivered_cold = done.answers[0]["delivered_to_rooms"]
    report.add(
        Figure(
            f"{label}: HTTP -> response, cold ({delivered_cold}/{n} delivered)",
            ms(done.cold),
            floor_text,
            f"{done.cold / floor_p99:.1f}x",
        )
    )
    report.add(
        Figure(
            f"{label}: HTTP -> response, warm, p50 / p99",
            p50_p99(done.warm),
            f"1 room p99 {ms(single_p99)}" if largest else floor_text,
            f"{warm_p99 / single_p99:.2f}x" if largest else f"{warm_p99 / floor_p99:.1f}x",
            f"p99 <= {WARM_FACTOR:g}x 1 room" if largest else "",
            complete and warm_p99 <= WARM_FACTOR * single_p99 if largest else None,
        )
    )
    # server-side deliveries make one call per room by design: the target is on the rest
    finding = done.calls_per_request - done.send_data_per_request
    per_room_call = DELIVERY_CALL.get(done.delivery)
    directory = done.mode == DIRECTORY
    report.add(
        Figure(
            f"{label}: RoomService calls per request",
            f"{done.calls_per_request:.1f}"
            + (
                f" ({done.send_data_per_request:.1f} {per_room_call}, logged by node A / B: "
                + " / ".join(f"{c:.1f}" for c in done.send_data_per_node)
                + ")"
                if per_room_call
                else ""
            ),
            target=(
                (f"<= 1 besides {per_room_call}" if per_room_call else "no per-room call (<= 1)")
                if directory
                else ""
            ),
            met=complete and finding <= 1.0 if directory else None,
        )
    )
    growth = done.rss_pooled - done.rss_base
    report.add(
        Figure(
            f"{label}: gateway RSS idle -> pooled (per room)",
            f"{mib(done.rss_base)} -> {mib(done.rss_pooled)} ({mib(growth / n)})",
        )
    )
    report.add(
        Figure(
            f"{label}: gateway sockets idle -> pooled (per room)",
            f"{done.sockets_base} -> {done.sockets_pooled} "
            f"({(done.sockets_pooled - done.sockets_base) / n:.1f})",
        )
    )
    report.add(
        Figure(
            f"{label}: rooms reached on node A / node B, all requests",
            " / ".join(
                f"{label_}: {got}/{of}" for label_, (got, of) in done.reached_by_node.items()
            )
            + (f" ({done.moved_rooms} rooms moved node)" if done.moved_rooms else "")
            # every request is new: an answer marked duplicate is the agent answering a copy
            # LiveKit or the gateway sent again (an agent slower than 3 s to answer a
            # PerformRpc gets LiveKit's own copy; server-API resends after 2 s)
            + (f"; {done.duplicates} answered as a repeat" if done.duplicates else ""),
        )
    )
    report.add(cpu_figure(f"{label}: CPU ms per warm request", done.measured))
    per_room = done.cpu_ms["gateway"] / n
    report.add(
        Figure(
            f"{label}: gateway CPU per room per request",
            f"{per_room:.3f} ms",
            target=f"<= {GATEWAY_MS_PER_ROOM:g} ms",
            met=complete and per_room <= GATEWAY_MS_PER_ROOM,
        )
    )
    same_size = {f.variant: f for f in floors if f.rooms == n and f.warm}
    if same_size:
        # what the plugin and the gateway add to the bare transport at this size
        report.add(
            Figure(
                f"{label}: warm p99 over the fan-out floors' at {n} rooms",
                ", ".join(
                    f"{warm_p99 / percentile(f.warm, 0.99):.2f}x {variant}"
                    for variant, f in same_size.items()
                ),
                " / ".join(ms(percentile(f.warm, 0.99)) for f in same_size.values()),
            )
        )
        bare = same_size.get(BARE_FLOOR_OF[done.delivery])
        if bare is not None:
            ratio = warm_p99 / percentile(bare.warm, 0.99)
            report.add(
                Figure(
                    f"{label}: warm p99 over the {bare.variant} floor, rooms reached",
                    f"{ratio:.2f}x",
                    f"floor reached {bare.rooms * len(bare.warm) - bare.missed}/"
                    f"{bare.rooms * len(bare.warm)}",
                    target=f"<= {FLOOR_FACTOR:g}x, every room the floor reached",
                    met=complete and ratio <= FLOOR_FACTOR,
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--joins", type=int, help="the gateway's max_concurrent_joins")
    parser.add_argument("--sizes", default="1,50,200")
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--delivery",
        default=ROOM,
        help="room (join every room, the default), server-rpc (RoomService.PerformRpc, the "
        "ack is its answer), server-api (RoomService.SendData, acks over HTTP), or several: "
        "server-rpc,server-api,room (measured in the order given)",
    )
    parser.add_argument(
        "--floors",
        default=",".join(FLOORS),
        help=f"fan-out floors to measure first, of: {', '.join(FLOORS)} ('' for none)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="turns the floors and the server-side deliveries take (the warm requests split "
        "between them), so that load coming and going falls on all alike",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.agents:
        asyncio.run(agents_worker())
        return
    if args.gateway:
        port, mode, joins, delivery = args.gateway
        asyncio.run(gateway_worker(int(port), mode, int(joins), delivery))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    deliveries = [d for d in args.delivery.split(",") if d]
    if not deliveries or not set(deliveries) <= set(DELIVERIES):
        parser.error(f"--delivery: choose from {', '.join(DELIVERIES)}")
    modes = args.modes.split(",")
    floor_variants = [f for f in args.floors.split(",") if f]
    if not set(floor_variants) <= set(FLOORS):
        parser.error(f"--floors: choose from {', '.join(FLOORS)}")
    results: dict[str, Any] = {}
    report = asyncio.run(
        run(
            sizes,
            args.warm,
            modes=modes,
            joins=args.joins,
            deliveries=deliveries,
            floor_variants=floor_variants,
            results=results,
            rounds=max(1, min(args.rounds, args.warm)),
        )
    )
    report.print()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
