"""Finding an agent code's rooms: the agent directory next to the RoomService scan, same run.

On a real ``livekit-server`` (started on loopback, as the live tests do; as root inside a
loopback-only network namespace) with 1, 50 and 200 open rooms, one of them holding an agent
whose join token carries its ``imaginex.agent_code``:

- **floor**: one bare ``RoomService.list_participants`` of one room, the least a lookup that asks
  LiveKit can cost;
- **scan**: ``LiveKitBackend.find_agents(code, room_id=None)`` without a directory (``listing_ttl
  = 0``, so every lookup scans: ``list_rooms`` plus one ``list_participants`` per room);
- **directory (memory)** and **directory (Redis)**: the same call with ``agent_directory=``,
  after its first reconciliation; the Redis one on a real ``redis-server`` (skipped without one).

Each line gives the lookup's p50 / p99 and the RoomService calls per lookup (read from
``backend.room_service_calls``). Target (issue 12): the directory makes no RoomService call per
lookup. Correctness: every lookup finds exactly the one agent.

Run: ``python benchmarks/bench_directory.py [--sizes 1,50,200] [--lookups N]``.
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
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator  # noqa: E402

from _harness import Figure, Report, ms, percentile  # noqa: E402
from livekit import api, rtc  # noqa: E402

from devtools.livekit_server import LiveKitServer, ServerInfo, find_binary  # noqa: E402
from devtools.redis_server import NoRedis, RedisServer, find_redis_binary  # noqa: E402
from imaginex_context_plugin import AGENT_CODE_ATTRIBUTE  # noqa: E402
from imaginex_context_plugin.gateway import LiveKitBackend, LiveKitSettings  # noqa: E402
from imaginex_context_plugin.gateway.directory import (  # noqa: E402
    AgentDirectory,
    MemoryAgentDirectory,
    RedisAgentDirectory,
)

AGENT_CODE = "BENCHDIR1"
AGENT = "bench-directory-agent"
ROOM_PREFIX = "bench-dir-"
ROOM_EMPTY_TIMEOUT_S = 600


@contextlib.contextmanager
def servers() -> Iterator[tuple[ServerInfo, str | None]]:
    with tempfile.TemporaryDirectory(prefix="bench-directory-") as workdir:
        livekit = LiveKitServer(find_binary(build=True), Path(workdir) / "livekit")
        redis: RedisServer | None = None
        with contextlib.suppress(NoRedis):
            redis = RedisServer(find_redis_binary(), Path(workdir) / "redis")
        try:
            info = livekit.start()
            yield info, (redis.start() if redis is not None else None)
        finally:
            livekit.stop()
            if redis is not None:
                redis.stop()


def settings(lk: ServerInfo) -> LiveKitSettings:
    return LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret)


@contextlib.asynccontextmanager
async def agent_in_room(lk: ServerInfo, room: str) -> AsyncIterator[None]:
    token = (
        api.AccessToken(lk.api_key, lk.api_secret)
        .with_identity(AGENT)
        .with_kind("agent")
        .with_attributes({AGENT_CODE_ATTRIBUTE: AGENT_CODE})
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )
    joined = rtc.Room()
    await joined.connect(lk.url, token)
    try:
        yield
    finally:
        await joined.disconnect()


async def open_rooms(lkapi: api.LiveKitAPI, names: list[str]) -> None:
    for name in names:
        await lkapi.room.create_room(
            api.CreateRoomRequest(name=name, empty_timeout=ROOM_EMPTY_TIMEOUT_S)
        )


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def p50_p99(samples: list[float]) -> str:
    return f"{ms(percentile(samples, 0.5))} / {ms(percentile(samples, 0.99))}"


async def measure_backend(
    backend: LiveKitBackend, lookups: int, expected_room: str
) -> tuple[list[float], float, bool]:
    """Lookup times, RoomService calls per lookup, and whether every lookup found the agent."""
    found_right = True

    async def lookup() -> None:
        nonlocal found_right
        targets = await backend.find_agents(AGENT_CODE, room_id=None)
        found_right &= [(t.room, t.identity) for t in targets] == [(expected_room, AGENT)]

    await lookup()  # a directory's first reconciliation happens here, not in the figures
    before = backend.room_service_calls.total
    samples = await timed(lookup, lookups)
    return samples, (backend.room_service_calls.total - before) / lookups, found_right


async def run(
    sizes: tuple[int, ...] = (1, 50, 200), lookups: int = 200, scan_lookups: int = 20
) -> Report:
    report = Report("directory: finding an agent code's rooms, directory vs RoomService scan")
    report.notes.append(NETWORK)
    from redis.asyncio import Redis

    with servers() as (lk, redis_url):
        if redis_url is None:
            report.notes.append("no redis-server here: the Redis directory was not measured")
        first = f"{ROOM_PREFIX}0"
        async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
            await open_rooms(lkapi, [first])
            async with agent_in_room(lk, first):
                opened = 1
                for size in sizes:
                    await open_rooms(lkapi, [f"{ROOM_PREFIX}{n}" for n in range(opened, size)])
                    opened = max(opened, size)

                    async def bare() -> None:
                        await lkapi.room.list_participants(api.ListParticipantsRequest(room=first))

                    floor = await timed(bare, lookups)
                    floor_p99 = percentile(floor, 0.99)
                    report.add(
                        Figure(f"{size} rooms: floor, one list_participants p50 / p99",
                               p50_p99(floor))
                    )
                    variants: list[tuple[str, AgentDirectory | None, int]] = [
                        ("scan", None, scan_lookups),
                        ("directory (memory)", MemoryAgentDirectory(), lookups),
                    ]
                    if redis_url is not None:
                        client = Redis.from_url(redis_url)
                        await client.flushdb()
                        variants.append(
                            ("directory (Redis)",
                             RedisAgentDirectory(client, owns_client=True), lookups)
                        )
                    for name, directory, n in variants:
                        backend = LiveKitBackend(
                            settings(lk), listing_ttl=0.0, agent_directory=directory
                        )
                        try:
                            samples, calls, right = await measure_backend(backend, n, first)
                        finally:
                            await backend.aclose()
                        report.ok &= right
                        p99 = percentile(samples, 0.99)
                        report.add(
                            Figure(
                                f"{size} rooms: {name}, p50 / p99; RoomService calls/lookup",
                                f"{p50_p99(samples)}; {calls:g} calls",
                                baseline=ms(floor_p99),
                                ratio=f"{p99 / floor_p99:.2f}x",
                                target="0 calls" if directory is not None else "",
                                met=(calls == 0) if directory is not None else None,
                            )
                        )
                        if directory is not None:
                            report.ok &= calls == 0
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,50,200")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--scan-lookups", type=int, default=20)
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    report = asyncio.run(run(sizes, args.lookups, args.scan_lookups))
    report.print()
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
