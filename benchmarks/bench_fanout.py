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
  timeout), a fresh one for each size so that its first request is cold; it delivers through
  the server API (``--delivery server-rpc``, the default: one ``RoomService.PerformRpc`` per
  room, sent to node A for rooms on both nodes, the agent's ack being the call's answer) or
  over room connections (``--delivery room``: it joins every room);
- **floor**: a bare RPC echo between two plain participants on node A, the least one request ->
  answer over LiveKit costs;
- **fan-out floors**: the same transports at the same size with none of the plugin or the
  gateway in them, measured first on the very same agents. This process makes one
  ``RoomService.PerformRpc`` per room (``ServerRpc``), answered by a bare RPC method each agent
  registers beside the plugin's (**bare PerformRpc echo**; **+ say()**: ``session.say(text)``
  first, the least any speak path on ``livekit-agents`` does); **bare HTTP hop + PerformRpc +
  say()**: the same calls made by a bare HTTP relay process this process POSTs to
  (``fanout/relay.py``: one aiohttp route, nothing checked, signed or logged), the least any
  HTTP gateway in front of them does. All rooms at once; a request is done when every room
  answered. They bound what any design on these transports and these agents can reach on this
  machine.

Per size: HTTP -> response of the first request (cold: the gateway joins every room), then of
the warm sequential requests, ``max(--warm, ceil(--min-samples / rooms))`` of them on every path
and floor, so that each warm p99 rests on at least ``--min-samples`` room deliveries (each row
prints its count); the floors and the server-side deliveries take turns in
``--rounds`` blocks (a fresh gateway process each, all started before the first block), so that
a load coming and going on the shared machine falls on all of them alike, and the room path
runs after them, alone; RoomService calls per request (counted in both nodes' logs, which
log every API call); the gateway's RSS before and after it pooled the rooms (growth per pooled
room) and its open sockets; the rooms each node's agents were reached in (the node as LiveKit
records it in Redis: server-API calls for node B's rooms go through node A); CPU milliseconds
per warm request of the gateway process, of each ``livekit-server`` process and of the agents'
worker processes together (``/proc``, in clock ticks of 10 ms: each figure is the ticks
of the whole warm window over its requests, and prints the ticks; on 2 cores a request's wall
time cannot be shorter than their sum over 2). Every phase starts once the agent workers have
settled (``QUIET_CORES_PER_WORKER``); their idle CPU then is printed beside the CPU figures.
Correctness: every request reports every room delivered, and at the end each agent said
exactly one speech per request (counted in its ``AgentSession`` history).

Targets, reported, not failed: (issue 12) warm p99 at the largest size within 3x the single-room
warm p99; (issue 26) each delivery's warm p99 within 1.15x its bare floor's at the same size
(``BARE_FLOOR_OF``), every room reached, and the gateway's own CPU at most 0.25 ms per room per
request. ``--json PATH`` writes the figures as data (``benchmarks/capacity_model.py`` checks the
docs' capacity model against them).

Run: ``python benchmarks/bench_fanout.py [--sizes 1,50,200] [--warm N]
[--min-samples N] [--modes directory,scan] [--delivery server-rpc|room|server-rpc,room]
[--floors ...] [--json PATH]``.
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
import tempfile  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
from _harness import Figure, Report, percentile  # noqa: E402
from bench_live import floor  # noqa: E402
from fanout.agents import agents_worker  # noqa: E402
from fanout.gateway import gateway_worker  # noqa: E402
from fanout.measure import CLOCK_TICK_S, FloorPhase, Phase  # noqa: E402
from fanout.one_size import one_size  # noqa: E402
from fanout.relay import relay_worker  # noqa: E402
from fanout.report import add_figures, add_floor_figures, as_data, p50_p99  # noqa: E402
from fanout.settings import (  # noqa: E402
    AGENTS_PER_PROCESS,
    BARE_FLOOR_OF,
    DELIVERIES,
    DELIVERY_TIMEOUT_S,
    FLOORS,
    MIN_SAMPLES,
    MODES,
    NODE_UDP_PORTS,
    SERVER_RPC,
    warm_requests,
)

from devtools.livekit_cluster import LiveKitCluster, start_cluster  # noqa: E402

__all__ = ["BARE_FLOOR_OF", "FLOORS", "main", "run"]

@contextlib.contextmanager
def kept_or_temporary(logs: Path | None, name: str) -> Iterator[Path]:
    """``logs / name`` (created, kept afterwards), or a temporary directory."""
    if logs is not None:
        kept = logs / name
        kept.mkdir(parents=True, exist_ok=True)
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix=f"bench-fanout-{name}-") as workdir:
        yield Path(workdir)


@contextlib.contextmanager
def cluster_here(given: LiveKitCluster | None, logs: Path | None) -> Iterator[LiveKitCluster]:
    if given is not None:
        yield given
        return
    with kept_or_temporary(logs, "cluster") as workdir:
        cluster = start_cluster(workdir, udp_ports=NODE_UDP_PORTS)
        try:
            yield cluster
        finally:
            cluster.stop()


async def run(
    sizes: Sequence[int] = (1, 50, 200),
    warm: int = 20,
    floor_requests: int = 100,
    modes: Sequence[str] = MODES,
    cluster: LiveKitCluster | None = None,
    joins: int | None = None,
    deliveries: Sequence[str] = (SERVER_RPC,),
    floor_variants: Sequence[str] = FLOORS,
    results: dict[str, Any] | None = None,
    rounds: int = 4,
    min_samples: int = MIN_SAMPLES,
    logs: Path | None = None,
) -> Report:
    """Measure; ``cluster``: use this one instead of starting a new one; ``joins``: run the
    gateway with this ``max_concurrent_joins`` (built here as the command builds it) instead of
    the ``imaginex-context gateway`` command with its defaults; ``deliveries``: each of
    ``DELIVERIES`` to measure (every mode with each), in that order; ``floor_variants``: the
    fan-out floors to measure; ``results``: filled with the figures as data (what
    ``--json`` writes, what ``benchmarks/capacity_model.py`` checks); ``rounds``: how many turns
    the floors and the server-side deliveries take, the warm requests shared between them;
    ``min_samples``: rooms the warm requests of each size reach in all, at the least, on every
    path and floor (a size of ``rooms`` makes ``max(warm, ceil(min_samples / rooms))`` warm
    requests), and requests of the bare RPC echo floor, at the least; ``logs``: keep the
    nodes' and the gateways' logs there (else they go with a temporary directory)."""
    report = Report("fan-out: one speak to N rooms through the gateway, on a 2-node cluster")
    report.notes.append(NETWORK)
    load_before = os.getloadavg()
    phases: list[Phase] = []
    floors: list[FloorPhase] = []
    with cluster_here(cluster, logs) as lk, kept_or_temporary(logs, "gateway") as gateway_dir:
        floor_samples = await floor(lk.nodes[0].info, max(floor_requests, min_samples))
        for rooms in sizes:
            try:
                measured, floored, failures = await one_size(
                    lk,
                    rooms,
                    warm_requests(rooms, warm, min_samples),
                    modes,
                    gateway_dir,
                    joins,
                    deliveries,
                    floor_variants,
                    rounds,
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
    echo_name = f"floor: bare RPC echo ({len(floor_samples)} samples), p50 / p99"
    report.add(Figure(echo_name, floor_text))
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
        results.update(min_samples=min_samples, clock_tick_ms=CLOCK_TICK_S * 1000)
    per_size = ", ".join(f"{n} rooms: {warm_requests(n, warm, min_samples)}" for n in sizes)
    report.notes.append(
        f"warm requests per size, on every path and floor: max(--warm {warm}, "
        f"ceil(--min-samples {min_samples} / rooms)) ({per_size}), after 1 cold, the floors and "
        f"the server-side deliveries taking turns in {rounds} rounds, the room path after them; "
        f"agents in <= "
        f"{AGENTS_PER_PROCESS} rooms per worker process; rooms alternate between the 2 nodes, "
        f"the gateway uses node A; {DELIVERY_TIMEOUT_S:g} s delivery timeout"
        + (f"; max_concurrent_joins={joins}" if joins is not None else "")
        + (
            "; server-rpc: PerformRpc to node A for the rooms of both nodes, the ack the call's "
            "answer, messages signed with the LiveKit API secret"
            if SERVER_RPC in deliveries
            else ""
        )
        + "; fan-out floors: PerformRpc from this process (sender) to the same agents, "
        "answered by a bare RPC method, nothing of the plugin or the gateway in them; the "
        "HTTP hop floor's sender is a bare aiohttp relay process this process POSTs to"
    )
    report.notes.append(
        f"CPU: /proc user + system time, counted in clock ticks of {CLOCK_TICK_S * 1000:g} ms, "
        "summed over every block of a phase's warm requests (the whole warm window, not the "
        "settling between blocks) and divided by its warm requests; each CPU row gives its ticks"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--joins", type=int, help="the gateway's max_concurrent_joins")
    parser.add_argument("--sizes", default="1,50,200")
    parser.add_argument("--warm", type=int, default=20, help="warm requests per size, at least")
    parser.add_argument(
        "--min-samples",
        type=int,
        default=MIN_SAMPLES,
        help="rooms the warm requests of each size reach in all, at the least: a size of R "
        "rooms makes max(--warm, ceil(N / R)) warm requests on every path and floor "
        f"(default {MIN_SAMPLES})",
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--delivery",
        default=SERVER_RPC,
        help="server-rpc (RoomService.PerformRpc, the ack is its answer, the default), room "
        "(join every room), or both: server-rpc,room (measured in the order given)",
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
    parser.add_argument(
        "--logs",
        type=Path,
        help="keep the LiveKit nodes' and the gateways' logs in this directory (the agents "
        "write to this command's standard error)",
    )
    args = parser.parse_args()
    if args.agents:
        asyncio.run(agents_worker())
        return
    if args.relay:
        relay_worker()
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
            rounds=max(1, args.rounds),
            min_samples=max(0, args.min_samples),
            logs=args.logs,
        )
    )
    report.print()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
