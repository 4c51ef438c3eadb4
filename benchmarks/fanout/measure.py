"""Measurement: CPU per process group over a block of requests (once the agents have settled),
the fan-out floors (``PerformRpc`` from this process to every agent's bare echo) and the
gateway's phases, each run in blocks so that the floors and the gateways can take turns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from _harness import cpu_seconds
from livekit import api

from devtools.livekit_cluster import LiveKitCluster
from imaginex_context_plugin._livekit.server_rpc import ServerRpc
from imaginex_context_plugin.gateway import LiveKitSettings

from .agents import AgentWorkers
from .gateway import GatewayProcess, RoomServiceCalls, speak
from .relay import RelayProcess
from .settings import (
    AGENT_IDENTITY,
    AGENTS,
    DELIVERY_CALL,
    DELIVERY_TIMEOUT_S,
    ECHO_METHOD,
    FLOORS,
    GATEWAY,
    NODE_LABELS,
    QUIET_CORES_PER_WORKER,
    QUIET_TIMEOUT_S,
    ROOM,
    RPC_HTTP_SAY,
    RPC_SAY,
    SENDER,
)

CLOCK_TICK_S: Final = 1 / os.sysconf("SC_CLK_TCK")
"""The resolution of the CPU figures: ``/proc`` counts CPU time in these ticks (10 ms on
Linux), so a figure rests on the ticks of its whole warm window, not on a request's own."""


async def settled_cpu(
    groups: dict[str, list[int]], *, timeout_s: float = QUIET_TIMEOUT_S
) -> dict[str, float]:
    """Wait until the agent workers (``groups[AGENTS]``) are settled
    (``QUIET_CORES_PER_WORKER`` each, over a 1 s window); each group's CPU in that window, in
    milliseconds per second: what an idle agent, LiveKit node or gateway costs."""
    deadline = time.monotonic() + timeout_s
    workers = len(groups[AGENTS])
    while True:
        before, start = {k: cpu_seconds(p) for k, p in groups.items()}, time.monotonic()
        await asyncio.sleep(1.0)
        took = time.monotonic() - start
        rates = {k: (cpu_seconds(p) - before[k]) * 1000 / took for k, p in groups.items()}
        if rates[AGENTS] < QUIET_CORES_PER_WORKER * 1000 * max(workers, 1):
            return rates
        if time.monotonic() > deadline:
            return rates


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
        """CPU milliseconds per warm request, by group: the ticks of every block over the
        requests of every block."""
        return {k: v * 1000 / max(self.requests, 1) for k, v in self.cpu_s.items()}

    @property
    def ticks(self) -> dict[str, int]:
        """The clock ticks each group's CPU figure rests on (``CLOCK_TICK_S`` each)."""
        return {k: round(v / CLOCK_TICK_S) for k, v in self.cpu_s.items()}

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
    agent's bare echo method, done when every room has answered. ``RPC_HTTP_SAY`` needs
    ``relay`` (the process that makes the calls, whose CPU is the ``sender``'s) and ``http``
    (this process's client to it)."""

    def __init__(
        self,
        cluster: LiveKitCluster,
        names: Sequence[str],
        variant: str,
        workers: AgentWorkers,
        *,
        relay: RelayProcess | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        node = cluster.nodes[0].info
        settings = LiveKitSettings(url=node.url, api_key=node.api_key, api_secret=node.api_secret)
        self._rpc = ServerRpc(settings)
        self._names, self._workers = names, workers
        self._say = variant in (RPC_SAY, RPC_HTTP_SAY)
        self._relay = relay
        self._http = http
        if (variant == RPC_HTTP_SAY) != (relay is not None and http is not None):
            raise ValueError(f"{RPC_HTTP_SAY} (and only it) needs a relay and a client")
        senders = [relay.pid] if relay is not None else [os.getpid()]
        self._groups = cpu_groups(cluster, senders, workers.pids, first=SENDER)
        self._next = 1_000_000 * (FLOORS.index(variant) + 1)  # numbers no other floor uses
        self.phase = FloorPhase(len(names), variant)

    async def _call(self, name: str, payload: str) -> bool:
        with contextlib.suppress(api.TwirpError, OSError, asyncio.TimeoutError):
            await self._rpc.perform(
                name, AGENT_IDENTITY, ECHO_METHOD, payload, timeout=DELIVERY_TIMEOUT_S
            )
            return True
        return False

    async def _relayed(self, payload: str) -> int:
        """Rooms that answered, through the relay (none if it failed)."""
        assert self._relay is not None
        assert self._http is not None
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            async with self._http.post(self._relay.url, data=payload) as response:
                if response.status == 200:
                    return int(await response.text())
        return 0

    async def fan_out(self) -> float:
        n, self._next = self._next, self._next + 1
        names = self._names
        packet = json.dumps({"n": n, "say": self._say, "text": f"Floor message {n}."})
        start = time.perf_counter()
        if self._relay is not None:
            answered = await self._relayed(packet)
        else:
            calls = await asyncio.gather(*(self._call(name, packet) for name in names))
            answered = calls.count(True)
        elapsed = time.perf_counter() - start
        self.phase.missed += len(names) - answered
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
        await self._workers.settle()  # its speeches are over before the next block

    async def aclose(self) -> None:
        await self._rpc.aclose()


def cpu_groups(
    cluster: LiveKitCluster, first_pids: Sequence[int], agent_pids: Sequence[int], *, first: str
) -> dict[str, list[int]]:
    """The processes whose CPU is counted: ``first`` (the gateway, or this process as the
    floors' sender), each LiveKit node, the agents' worker processes together."""
    groups = {first: list(first_pids)}
    for label, node in zip(NODE_LABELS, cluster.nodes, strict=False):
        groups[label] = [node.server.process.pid] if node.server.process else []
    groups[AGENTS] = list(agent_pids)
    return groups


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
    def delivery_calls_per_node(self) -> list[float]:
        return [c / max(len(self.answers), 1) for c in self.per_room_calls]

    @property
    def delivery_calls_per_request(self) -> float:
        return sum(self.delivery_calls_per_node)

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
        self._per_room_call = f"API RoomService.{DELIVERY_CALL.get(phase.delivery, 'PerformRpc')}"
        self._groups = cpu_groups(cluster, [gw.process.pid], workers.pids, first=GATEWAY)
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
