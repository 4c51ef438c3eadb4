"""The gateway's own CPU per room of a fan-out, beside the bare ``PerformRpc`` calls, on both loops.

The issue-26 target is the gateway's own CPU per room per request. ``bench_fanout.py`` measures
it live, on 30 requests counted in 10 ms ticks, among 200 agents and two LiveKit nodes sharing
the machine's cores: the right place for the whole picture, a noisy one for the gateway's part.
This measures that part alone. The real fan-out (``FanOut`` + ``ServerRpcBackend``, as
``imaginex-context gateway --delivery server-rpc`` builds it: each room's message written,
signed, sent through ``RoomService.PerformRpc`` over the lean HTTP/1.1 client, the agent's ack
read and checked) against a Twirp server in another process that answers every call with a
real ack after a random 0 to ``--spread-ms`` delay (agents answer one by one, so each answer
is its own wake-up, as in the live run). The baseline, in the same run: the bare calls, the
same ``ServerRpc.perform`` with a ready payload and nothing done with the answer (what the
live benchmark's floors send with). Both on asyncio's loop and on uvloop (the gateway's
default when installed, ``gateway/event_loop.py``), taking turns in rounds.

CPU: the measuring process's user + system time over the warm requests (``getrusage``), per
room; each loop has its own process, as the gateway has. Correctness: every room of every
fan-out answered delivered.

Run: ``python benchmarks/bench_gateway_rooms.py [--requests N] [--rounds N] [--spread-ms M]``.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from _harness import Figure, Report, script_main, us
from livekit.protocol.room import PerformRpcResponse

from imaginex_context_plugin._livekit.server_rpc import ServerRpc
from imaginex_context_plugin._livekit.settings import LiveKitSettings
from imaginex_context_plugin.gateway.delivery.agent_backend import AgentTarget
from imaginex_context_plugin.gateway.delivery.room_delivery import LiveKitBackend
from imaginex_context_plugin.gateway.delivery.server_rpc_delivery import ServerRpcBackend
from imaginex_context_plugin.gateway.event_loop import run_on
from imaginex_context_plugin.gateway.http.fanout import FanOut
from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from imaginex_context_plugin.protocol import AckData, SuccessAck, utc_timestamp

THIS_FILE: Final = Path(__file__).resolve()
SIZES: Final = (1, 50)
API_SECRET: Final = "bench-gateway-rooms-api-secret-0123456789"
MESSAGE: Final = {"type": "speak", "message": "Your order 1234 has shipped and arrives tomorrow."}
WARMUP: Final = 5
GATEWAY: Final = "gateway fan-out"
BARE: Final = "bare PerformRpc calls"


def _ack() -> bytes:
    """The HTTP answer the fake server gives every call: an agent's real success ack."""
    ack = SuccessAck(
        id="bench",
        message="Message delivered to agent",
        data=AckData(
            agent_code="BENCH",
            context_type="speak",
            room_id="bench-room",
            timestamp=utc_timestamp(),
            speech_id="speech_0123456789ab",
            method="say",
        ),
    ).model_dump_json(exclude_none=True)
    body = PerformRpcResponse(payload=ack).SerializeToString()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _serve(spread_s: float) -> None:
    """``--serve``: print the port, then answer every POST with :func:`_ack`, each after its
    own random delay."""
    loop = asyncio.get_running_loop()
    answer = _ack()

    class Twirp(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                length = 0
                for line in self.buffer[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                loop.call_later(random.random() * spread_s, self.transport.write, answer)

    server = await loop.create_server(Twirp, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(url: str, rooms: int, requests: int, path: str) -> tuple[float, bool]:
    """CPU seconds per room of ``requests`` fan-outs to ``rooms`` rooms on ``path``, and
    whether every room answered delivered."""
    settings = LiveKitSettings(url=url, api_key="bench", api_secret=API_SECRET)
    rpc = ServerRpc(settings)
    # the finder is what finds agents; here the targets are given, so it is never asked
    backend = ServerRpcBackend(LiveKitBackend(settings), settings, server_rpc=rpc)
    # as create_app builds it for this delivery: no gateway signing secret, so the writer signs
    # with the one the delivery names (the LiveKit API secret)
    writer = MessageWriter(signing_secret=backend.unsigned_messages_secret)
    fanout = FanOut(backend, writer=writer, delivery_timeout=10.0)
    targets = [AgentTarget(f"bench-room-{i}", "agent") for i in range(rooms)]
    payload = writer.write(Outgoing("speak", MESSAGE), "bench-0", "BENCH", "bench-room-0")
    all_delivered = True
    sent = 0

    async def through_gateway() -> None:
        nonlocal all_delivered, sent
        sent += 1
        outcomes = await fanout.deliver(targets, Outgoing("speak", MESSAGE), f"r{sent}", "BENCH")
        all_delivered = all_delivered and all(o.result.delivered for o in outcomes)

    async def bare() -> None:
        await asyncio.gather(
            *(rpc.perform(t.room, t.identity, "m", payload, timeout=10.0) for t in targets)
        )

    step: Callable[[], Awaitable[None]] = through_gateway if path == GATEWAY else bare
    try:
        for _ in range(WARMUP):
            await step()
        before = _cpu()
        for _ in range(requests):
            await step()
        spent = _cpu() - before
    finally:
        await backend.aclose()
        await rpc.aclose()
    return spent / (rooms * requests), all_delivered


async def _work(url: str) -> None:
    """``--worker LOOP URL``: measure each block asked for on stdin (``rooms requests path``),
    answering ``cpu_per_room delivered`` on stdout; the process is otherwise idle, as a gateway
    between requests."""
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        rooms, requests, path = line.rstrip("\n").split(" ", 2)
        spent, delivered = await _measure(url, int(rooms), int(requests), path)
        print(f"{spent!r} {int(delivered)}", flush=True)


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["uvloop", "asyncio"]


async def _started(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(THIS_FILE),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def _ask(worker: asyncio.subprocess.Process, rooms: int, requests: int, path: str) -> str:
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.write(f"{rooms} {requests} {path}\n".encode())
    await worker.stdin.drain()
    return (await asyncio.wait_for(worker.stdout.readline(), 600)).decode()


async def run(*, requests: int = 60, rounds: int = 4, spread_ms: float = 20.0) -> Report:
    report = Report(
        "gateway CPU per room of a fan-out (PerformRpc, a fake LiveKit in another process)"
    )
    loops = _loops()
    per_round = max(1, requests // rounds)
    cpu: dict[tuple[int, str, str], list[float]] = {}
    ok = True
    server = await _started("--serve", str(spread_ms / 1000))
    workers: dict[str, asyncio.subprocess.Process] = {}
    try:
        assert server.stdout is not None
        port = int(await asyncio.wait_for(server.stdout.readline(), 30))
        url = f"http://127.0.0.1:{port}"
        for loop in loops:  # each its own process, as the gateway is
            workers[loop] = await _started("--worker", loop, url)
        for _ in range(rounds):
            for rooms in SIZES:
                for loop in loops:
                    for path in (GATEWAY, BARE):
                        answer = await _ask(workers[loop], rooms, per_round, path)
                        if not answer:
                            raise RuntimeError(f"the {loop} worker stopped")
                        spent, delivered = answer.split()
                        cpu.setdefault((rooms, loop, path), []).append(float(spent))
                        ok = ok and delivered == "1"
    finally:
        for process in (*workers.values(), server):
            if process.stdin is not None:
                process.stdin.close()
            if process.returncode is None:
                process.terminate()
            await asyncio.wait_for(process.wait(), 10)
    report.ok = ok
    for rooms in SIZES:
        for loop in loops:
            gateway, bare = (sum(cpu[(rooms, loop, path)]) / rounds for path in (GATEWAY, BARE))
            report.add(
                Figure(
                    f"{rooms} room{'s' if rooms > 1 else ''}, {loop}: CPU per room",
                    us(gateway),
                    us(bare),
                    f"{gateway / bare:.2f}x" if bare else "",
                )
            )
        if len(loops) == 2:
            on = {loop: sum(cpu[(rooms, loop, GATEWAY)]) / rounds for loop in loops}
            report.add(
                Figure(
                    f"{rooms} room{'s' if rooms > 1 else ''}: gateway on uvloop vs on asyncio",
                    us(on["uvloop"]),
                    us(on["asyncio"]),
                    f"{on['uvloop'] / on['asyncio']:.2f}x",
                )
            )
    report.notes += [
        f"{per_round * rounds} fan-outs per size, loop and path after {WARMUP} to warm up, in "
        f"{rounds} rounds taking turns; answers after a random 0-{spread_ms:g} ms",
        f"plugin column: {GATEWAY} (FanOut + ServerRpcBackend: write, sign, call, read the ack); "
        f"baseline: {BARE} (ServerRpc.perform with a ready payload, as bench_fanout's floors)",
        "CPU of the process running the loop (getrusage), the fake LiveKit's not counted",
    ]
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(_serve(float(sys.argv[2])))
    elif len(sys.argv) == 4 and sys.argv[1] == "--worker":
        run_on("uvloop" if sys.argv[2] == "uvloop" else "asyncio", _work(sys.argv[3]))
    else:
        script_main(__doc__, run, requests=60, rounds=4, spread_ms=20.0)
