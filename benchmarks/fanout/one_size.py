"""One size: create its rooms, start their agents, measure the floors and the server-side
deliveries taking turns and then the room path alone, and check that every request reached
every room and every agent said each delivered message exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from livekit import api

from devtools.livekit_cluster import LiveKitCluster

from .agents import AgentWorkers, agents, create_rooms, unlisted
from .gateway import gateway
from .measure import FloorPhase, FloorRunner, GatewayRunner, Phase
from .relay import relay
from .settings import (
    FLOORS,
    NOT_SPOKEN,
    READY_TIMEOUT_S,
    ROOM,
    RPC_HTTP_SAY,
    SERVER_RPC,
    SETTLE_TIMEOUT_S,
    UNKNOWN_OUTCOME,
)


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


async def one_size(
    cluster: LiveKitCluster,
    rooms: int,
    warm: int,
    modes: Sequence[str],
    workdir: Path,
    joins: int | None = None,
    deliveries: Sequence[str] = (SERVER_RPC,),
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
    rounds = max(1, min(rounds, warm))
    blocks = [warm // rounds + (1 if r < warm % rounds else 0) for r in range(rounds)]
    try:
        async with (
            agents(cluster, placed, code) as workers,
            contextlib.AsyncExitStack() as stack,
            aiohttp.ClientSession() as http,
        ):
            if missing := await unlisted(cluster, names, code, wait=READY_TIMEOUT_S):
                raise RuntimeError(f"{len(missing)} agents never showed their code")
            taking_turns: list[FloorRunner | GatewayRunner] = []
            for variant in floor_variants:
                through = (
                    await stack.enter_async_context(relay(cluster.nodes[0], names))
                    if variant == RPC_HTTP_SAY
                    else None
                )
                runner = FloorRunner(
                    cluster,
                    names,
                    variant,
                    workers,
                    relay=through,
                    http=http if through is not None else None,
                )
                stack.push_async_callback(runner.aclose)
                await runner.cold()
                floors.append(runner.phase)
                taking_turns.append(runner)
            for delivery, mode in server_side:
                gw = await stack.enter_async_context(
                    gateway(cluster.nodes[0], workdir, mode, joins, delivery)
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
    problems += [f"{done.label}: {done.missed} rooms not reached" for done in floors if done.missed]
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
