"""The gateway's HTTP side: its CPU per request beside a bare aiohttp JSON route, same run.

At one room most of the gateway's CPU is the request itself, not the delivery (the capacity
model's per-request constant, ``bench_fanout.py``). This measures that part alone: the real
application (``create_app`` served by ``start_gateway_server``, signing on, the access log
written at INFO to a file as the ``imaginex-context gateway`` command writes it) in front of an
agent that answers at once, so no LiveKit is in it, against the least an aiohttp server does for
the same exchange (a route that reads the JSON body and answers a JSON body of the same size).
Each runs in its own process; one client sends the same ``POST /v1/agent/{code}/speak`` to each
in turn, sequentially, in rounds that take turns, and reads each server's CPU from ``/proc``.

Both servers run on the gateway's default event loop (uvloop when installed,
``gateway/event_loop.py``); a third, the gateway on asyncio's own loop, takes its turns too, so
that what uvloop saves is measured in the same run.

Correctness: every gateway answer is 200 with one room delivered, and the agent saw every
request id once.

Run: ``python benchmarks/bench_gateway_http.py [--requests N] [--rounds N]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import aiohttp
from _harness import Figure, Report, cpu_seconds, ms, percentile, script_main
from aiohttp import web

from imaginex_context_plugin.gateway.config import ApiSecrets
from imaginex_context_plugin.gateway.delivery.agent_backend import AgentTarget
from imaginex_context_plugin.gateway.event_loop import (
    DEFAULT_EVENT_LOOP,
    resolve_event_loop,
    run_on,
)
from imaginex_context_plugin.gateway.http.app import create_app
from imaginex_context_plugin.gateway.http.serving import start_gateway_server
from imaginex_context_plugin.protocol import AckData, SuccessAck, utc_timestamp

THIS_FILE: Final = Path(__file__).resolve()
API_SECRET: Final = "bench-gateway-http-secret"
CODE: Final = "BENCH"
ROOM: Final = "bench-room"
BODY: Final = {"message": "Your order 1234 has shipped and arrives tomorrow."}
GATEWAY: Final = "gateway"
BARE: Final = "bare aiohttp route"
GATEWAY_ON_ASYNCIO: Final = "gateway on asyncio's loop"
WARMUP: Final = 200


class AnswersAtOnce:
    """An ``AgentBackend`` with one agent that takes every message at once; it writes each
    request id it saw to ``seen`` (one per line), for the correctness check."""

    def __init__(self, seen: Path) -> None:
        # a line at a time: the process ends by a signal, with no chance to flush
        self._seen = seen.open("a", encoding="utf-8", buffering=1)

    async def find_agents(self, agent_code: str, *, room_id: str | None) -> list[AgentTarget]:
        return [AgentTarget(ROOM, "agent")]

    async def deliver(self, target: AgentTarget, payload: str, *, timeout: float) -> str:
        request = json.loads(json.loads(payload)["body"])  # the gateway signs every message
        self._seen.write(request["id"] + "\n")
        data = AckData(
            agent_code=CODE, context_type="speak", room_id=target.room, timestamp=utc_timestamp()
        )
        return SuccessAck(id=request["id"], message="Speech scheduled", data=data).model_dump_json()

    async def aclose(self) -> None:
        self._seen.close()


async def _serve(kind: str, workdir: Path) -> None:
    # as the gateway command sets it up (cli/gateway.py), into a file
    logging.basicConfig(
        level=logging.INFO,
        filename=workdir / f"{kind}.log",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if kind in (GATEWAY, GATEWAY_ON_ASYNCIO):
        app = create_app(
            AnswersAtOnce(workdir / f"{kind}.seen"),
            ApiSecrets(secret=API_SECRET),
            signing_secret="bench-signing-secret",
            rate_limit=None,
        )
        server = await start_gateway_server(app, host="127.0.0.1", port=0)
        port = server.port
    else:
        answer = json.dumps(
            {
                "success": True,
                "message": "Message sent to 1 of 1 rooms",
                "data": {"agent_code": CODE, "delivered_to_rooms": 1, "rooms": [{"room": ROOM}]},
            }
        ).encode()

        async def speak(request: web.Request) -> web.Response:
            await request.json()
            return web.Response(body=answer, content_type="application/json")

        bare = web.Application()
        bare.router.add_post("/v1/agent/{agent_code}/speak", speak)
        runner = web.AppRunner(bare, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
    (workdir / f"{kind}.port").write_text(str(port))
    await asyncio.Event().wait()


async def _start(kind: str, workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(THIS_FILE), "--serve", kind, str(workdir), cwd=THIS_FILE.parent
    )
    port_file = workdir / f"{kind}.port"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if process.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {kind} server did not start")
        await asyncio.sleep(0.05)
    return process, f"http://127.0.0.1:{port_file.read_text()}/v1/agent/{CODE}/speak"


async def _requests(
    http: aiohttp.ClientSession, url: str, n: int, statuses: Counter[int], rooms: Counter[int]
) -> list[float]:
    times: list[float] = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.post(url, json=BODY, headers={"api-secret": API_SECRET}) as response:
            answer: dict[str, Any] = await response.json()
        times.append(time.perf_counter() - started)
        statuses[response.status] += 1
        rooms[int(answer.get("data", {}).get("delivered_to_rooms", -1))] += 1
    return times


async def run(*, requests: int = 2_000, rounds: int = 4) -> Report:
    loop = resolve_event_loop(DEFAULT_EVENT_LOOP)
    report = Report(
        f"gateway HTTP side per request (one room, an agent that answers at once; {loop})"
    )
    per_round = max(1, requests // rounds)
    kinds = [GATEWAY, BARE] + ([GATEWAY_ON_ASYNCIO] if loop != "asyncio" else [])
    with tempfile.TemporaryDirectory(prefix="bench-gateway-http-") as tmp:
        workdir = Path(tmp)
        servers = {kind: await _start(kind, workdir) for kind in kinds}
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, float] = dict.fromkeys(kinds, 0.0)
        statuses: dict[str, Counter[int]] = {kind: Counter() for kind in kinds}
        rooms: dict[str, Counter[int]] = {kind: Counter() for kind in kinds}
        try:
            async with aiohttp.ClientSession() as http:
                for _, url in servers.values():
                    await _requests(http, url, WARMUP, Counter(), Counter())
                for _ in range(rounds):
                    for kind, (process, url) in servers.items():
                        before = cpu_seconds([process.pid])
                        times[kind] += await _requests(
                            http, url, per_round, statuses[kind], rooms[kind]
                        )
                        cpu[kind] += cpu_seconds([process.pid]) - before
        finally:
            for process, _ in servers.values():
                process.terminate()
                await asyncio.wait_for(process.wait(), 10)
        seen = {
            kind: Counter((workdir / f"{kind}.seen").read_text().split())
            for kind in kinds
            if kind != BARE
        }
    n = per_round * rounds
    report.ok = all(
        statuses[kind] == Counter({200: n})
        and rooms[kind] == Counter({1: n})
        and len(ids) == n + WARMUP  # the warm-up's reached the agent too
        and set(ids.values()) == {1}
        for kind, ids in seen.items()
    )
    per_request = {kind: cpu[kind] / n for kind in kinds}
    report.add(
        Figure(
            "server CPU per request",
            ms(per_request[GATEWAY]),
            ms(per_request[BARE]),
            f"{per_request[GATEWAY] / per_request[BARE]:.2f}x" if per_request[BARE] else "",
        )
    )
    for q in (50, 99):
        gateway_q, bare_q = (percentile(times[k], q / 100) for k in (GATEWAY, BARE))
        ratio = f"{gateway_q / bare_q:.2f}x"
        report.add(Figure(f"request -> answer, p{q}", ms(gateway_q), ms(bare_q), ratio))
    if GATEWAY_ON_ASYNCIO in kinds:
        on_asyncio = per_request[GATEWAY_ON_ASYNCIO]
        report.add(
            Figure(
                f"gateway CPU per request, {loop} vs asyncio's loop",
                ms(per_request[GATEWAY]),
                ms(on_asyncio),
                f"{per_request[GATEWAY] / on_asyncio:.2f}x" if on_asyncio else "",
            )
        )
        gateway_p50, asyncio_p50 = (
            percentile(times[k], 0.5) for k in (GATEWAY, GATEWAY_ON_ASYNCIO)
        )
        report.add(
            Figure(
                f"gateway request -> answer p50, {loop} vs asyncio's loop",
                ms(gateway_p50),
                ms(asyncio_p50),
                f"{gateway_p50 / asyncio_p50:.2f}x",
            )
        )
    report.notes += [
        f"{n} requests each after {WARMUP} to warm up, in {rounds} rounds taking turns, one at a "
        "time from one client process; each server its own process; CPU from /proc (10 ms ticks)",
        f"baseline: {BARE} (reads the JSON body, answers a JSON body of the same size, no access "
        "log); plugin column: the gateway application, signing on, access log at INFO to a file",
        f"{GATEWAY} and {BARE} on {loop} (the gateway's default loop here); "
        + (f"{GATEWAY_ON_ASYNCIO} beside them" if GATEWAY_ON_ASYNCIO in kinds else "no uvloop"),
    ]
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        kind = sys.argv[2]
        on = "asyncio" if kind == GATEWAY_ON_ASYNCIO else resolve_event_loop(DEFAULT_EVENT_LOOP)
        run_on(on, _serve(kind, Path(sys.argv[3])))
    else:
        script_main(__doc__, run, requests=2_000, rounds=4)
