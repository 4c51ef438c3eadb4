"""Over the real wire: request -> ack through a real ``livekit-server``, next to its floor.

Same run, same server (the one ``LIVEKIT_URL`` names, else a ``livekit-server --dev`` started on
loopback as the live tests do; as root inside a loopback-only network namespace):

- **floor**: a bare RPC echo between two plain participants (``perform_rpc`` -> a handler that
  returns the payload), the least any request -> answer over LiveKit can cost;
- **client -> ack** over RPC and over data packets: ``ContextClient.add_context`` (keyed, so
  the context does not grow) to a real ``AgentSession`` with ``ContextPlugin``;
- **gateway HTTP -> response**: ``POST /v1/agent/{code}/add-context`` with ``room_id`` through
  the gateway (``create_app`` + ``LiveKitBackend``, served on 127.0.0.1), warm (its connection
  to the room is pooled) and cold (a fresh gateway each time: the first message to a room joins
  it first).

Targets (issue 13): client -> ack p99 within 1.3x the floor's p99 plus 2 ms; gateway warm p99
within the floor's p99 plus 5 ms. Requests go one at a time; the plugin's and the gateway's
rate limits are off (trusted internal senders), everything else is at its defaults.

Run: ``python benchmarks/bench_live.py [--requests N] [--cold N]``.
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

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: E402

import aiohttp  # noqa: E402
from _harness import Figure, Report, ms, percentile, script_main  # noqa: E402
from _live import livekit, room_token  # noqa: E402
from aiohttp import web  # noqa: E402
from livekit import api, rtc  # noqa: E402

from devtools.livekit_server import ServerInfo  # noqa: E402
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE, ContextClient, ContextPlugin  # noqa: E402
from imaginex_context_plugin.gateway import (  # noqa: E402
    ApiSecrets,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM, start_session  # noqa: E402

AGENT_CODE = "BENCH0001"
AGENT = "bench-agent"
SENDER = "bench-sender"
GATEWAY = "bench-gateway"
API_SECRET_HEADER = "bench-gateway-secret"
PAYLOAD = "x" * 120  # about the size of a small context message
CLIENT_FACTOR, CLIENT_SLACK_S = 1.3, 0.002
GATEWAY_SLACK_S = 0.005


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


async def floor(lk: ServerInfo, count: int) -> list[float]:
    room_name = f"bench-floor-{uuid.uuid4().hex[:6]}"
    echo, caller = rtc.Room(), rtc.Room()
    await echo.connect(lk.url, room_token(lk, room_name, "echo"))
    echo.local_participant.register_rpc_method("echo", lambda data: data.payload)
    await caller.connect(lk.url, room_token(lk, room_name, "caller"))
    try:
        while "echo" not in caller.remote_participants:  # noqa: ASYNC110 - a roster poll
            await asyncio.sleep(0.02)

        async def call() -> None:
            await caller.local_participant.perform_rpc(
                destination_identity="echo", method="echo", payload=PAYLOAD
            )

        await timed(call, 10)  # warm-up
        return await timed(call, count)
    finally:
        await caller.disconnect()
        await echo.disconnect()


@contextlib.asynccontextmanager
async def agent_room(lk: ServerInfo) -> AsyncIterator[str]:
    room_name = f"bench-agent-{uuid.uuid4().hex[:6]}"
    session = await start_session(llm_model=ScriptedLLM(), tts_model=RecordingTTS(), text_only=True)
    room = rtc.Room()
    plugin = ContextPlugin(
        agent_code=AGENT_CODE,
        allowed_identities=[SENDER, GATEWAY],
        rate_limit=None,
        server_secret=lk.api_secret,
    )
    await plugin.start(session, room)
    await room.connect(lk.url, room_token(lk, room_name, AGENT, agent=True))
    try:
        async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
            while True:  # until RoomService shows the agent's code (the gateway looks there)
                listing = await lkapi.room.list_participants(
                    api.ListParticipantsRequest(room=room_name)
                )
                if any(p.attributes.get(AGENT_CODE_ATTRIBUTE) for p in listing.participants):
                    break
                await asyncio.sleep(0.05)
        yield room_name
    finally:
        await plugin.aclose()
        await session.aclose()
        await room.disconnect()


async def client_acks(lk: ServerInfo, room_name: str, via: str, count: int) -> list[float]:
    async with await ContextClient.connect(
        lk.url, lk.api_key, lk.api_secret, room_name,
        identity=SENDER, agent_code=AGENT_CODE, via=via,  # type: ignore[arg-type]
    ) as client:

        async def call() -> None:
            await client.add_context(PAYLOAD, key="bench")

        await timed(call, 10)
        return await timed(call, count)


@contextlib.asynccontextmanager
async def gateway(lk: ServerInfo) -> AsyncIterator[str]:
    settings = LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)
    app = create_app(
        LiveKitBackend(settings, identity=GATEWAY),
        ApiSecrets(secret=API_SECRET_HEADER),
        rate_limit=None,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def gateway_post(http: aiohttp.ClientSession, base: str, room_name: str) -> None:
    async with http.post(
        f"{base}/v1/agent/{AGENT_CODE}/add-context",
        json={"context": PAYLOAD, "room_id": room_name},
        headers={"api-secret": API_SECRET_HEADER},
    ) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"gateway answered {response.status}: {body}")


async def gateway_latency(lk: ServerInfo, room_name: str, warm: int, cold: int) -> tuple[
    list[float], list[float]
]:
    async with aiohttp.ClientSession() as http:
        cold_samples = []
        for _ in range(cold):
            async with gateway(lk) as base:
                start = time.perf_counter()
                await gateway_post(http, base, room_name)
                cold_samples.append(time.perf_counter() - start)
        async with gateway(lk) as base:

            async def call() -> None:
                await gateway_post(http, base, room_name)

            await timed(call, 10)
            warm_samples = await timed(call, warm)
    return warm_samples, cold_samples


def p50_p99(samples: list[float]) -> str:
    return f"{ms(percentile(samples, 0.5))} / {ms(percentile(samples, 0.99))}"


async def run(requests: int = 300, cold: int = 10, server: ServerInfo | None = None) -> Report:
    """Measure; ``server``: use this one instead of the environment's or a new one."""
    report = Report("live: request -> ack through a real livekit-server")
    report.notes.append(NETWORK)
    with livekit(server) as lk:
        floor_samples = await floor(lk, requests)
        async with agent_room(lk) as room_name:
            rpc = await client_acks(lk, room_name, "rpc", requests)
            data = await client_acks(lk, room_name, "data", requests)
            warm, cold_samples = await gateway_latency(lk, room_name, requests, cold)
    floor_p99 = percentile(floor_samples, 0.99)
    floor_text = p50_p99(floor_samples)
    report.add(Figure("floor: bare RPC echo, p50 / p99", floor_text))
    client_target = CLIENT_FACTOR * floor_p99 + CLIENT_SLACK_S
    for name, samples in (("client -> ack over RPC", rpc), ("client -> ack over data", data)):
        p99 = percentile(samples, 0.99)
        report.add(
            Figure(
                f"{name}, p50 / p99",
                p50_p99(samples),
                floor_text,
                f"{p99 / floor_p99:.2f}x",
                f"p99 <= {ms(client_target)}",
                p99 <= client_target,
            )
        )
    warm_p99 = percentile(warm, 0.99)
    gateway_target = floor_p99 + GATEWAY_SLACK_S
    report.add(
        Figure(
            "gateway HTTP -> response, warm, p50 / p99",
            p50_p99(warm),
            floor_text,
            f"{warm_p99 / floor_p99:.2f}x",
            f"p99 <= {ms(gateway_target)}",
            warm_p99 <= gateway_target,
        )
    )
    report.add(
        Figure(
            "gateway HTTP -> response, cold (joins the room), p50 / p99",
            p50_p99(cold_samples),
            floor_text,
            f"{percentile(cold_samples, 0.99) / floor_p99:.1f}x",
        )
    )
    report.notes.append(
        f"{requests} sequential requests per figure ({cold} cold), 120-byte context, keyed"
    )
    return report


def main() -> None:
    script_main(__doc__, run, requests=300, cold=10)


if __name__ == "__main__":
    main()
