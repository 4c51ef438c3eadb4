"""``benchmarks/bench_fanout.py`` at a tiny size on the session's two-node cluster, so that it
never rots.

No timing is asserted: the figures come from running the benchmark itself. What is asserted is
its correctness check (every room reached by every request, cold and warm, each message spoken
once), that every figure is there for both ways of finding agents and both ways of delivering
(room connections and the server API), that the fan-out floors (the bare transport, with and
without ``say()``) were echoed by every room and are compared with, and that the server API
reached node B's rooms through node A.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.livekit_cluster import LiveKitCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_fanout

SIZES = (1, 2)
WARM = 2
KINDS = [
    "HTTP -> response, cold",
    "HTTP -> response, warm",
    "RoomService calls per request",
    "gateway RSS idle -> pooled",
    "gateway sockets idle -> pooled",
    "rooms reached on node A / node B, all requests",
    "CPU ms per warm request, gateway / 2 nodes / agents",
]
FLOOR_KINDS = ["warm", "CPU ms per warm request, sender / 2 nodes / agents"]
"""The fan-out floors' figures (measured when server-API delivery is)."""


def _label(n: int, mode: str, delivery: str) -> str:
    return f"{n} rooms, {mode}" + ("" if delivery == "room" else f", {delivery}")


async def test_bench_fanout_runs_and_every_figure_is_there(
    livekit_cluster: LiveKitCluster,
) -> None:
    report = await bench_fanout.run(
        sizes=SIZES,
        warm=WARM,
        floor_requests=5,
        cluster=livekit_cluster,
        deliveries=("room", "server-api"),
    )
    assert report.ok, report.notes
    expected = (
        ["floor: bare RPC echo"]
        + [
            f"{n} rooms, {variant}: {kind}"
            for n in SIZES
            for variant in bench_fanout.FLOORS
            for kind in FLOOR_KINDS
        ]
        + [
            f"{_label(n, mode, delivery)}: {kind}"
            for n in SIZES
            for delivery in ("room", "server-api")
            for mode in ("directory", "scan")
            for kind in KINDS
            + ([f"warm p99 over the fan-out floors' at {n} rooms"] if delivery != "room" else [])
        ]
    )
    assert [figure.name.split(" (")[0].split(", p50")[0] for figure in report.figures] == [
        e.split(", p50")[0] for e in expected
    ]
    values = {figure.name.split(" (")[0].split(", p50")[0]: figure for figure in report.figures}
    directory_calls = [
        f for f in report.figures if ", directory" in f.name and "RoomService calls" in f.name
    ]
    assert len(directory_calls) == 2 * len(SIZES)
    assert all(f.met for f in directory_calls)
    for n in SIZES:
        for delivery in ("room", "server-api"):
            for mode in ("directory", "scan"):
                label = _label(n, mode, delivery)
                # cold: every room; all requests (cold + warm): every room on each node
                cold = next(
                    f
                    for f in report.figures
                    if f.name.startswith(f"{label}: HTTP -> response, cold")
                )
                assert f"({n}/{n} delivered)" in cold.name
                reached = values[f"{label}: rooms reached on node A / node B, all requests"]
                per_node = {1: {"A"}, 2: {"A", "B"}}[n]
                parts = dict(part.split(": ") for part in reached.value.split(" / "))
                assert set(parts) == per_node, reached.value
                for node in per_node:
                    rooms_there = n // 2 if n > 1 else 1
                    assert parts[node] == f"{rooms_there * (WARM + 1)}/{rooms_there * (WARM + 1)}"
                cpu = values[f"{label}: CPU ms per warm request, gateway / 2 nodes / agents"]
                assert [float(x) >= 0 for x in cpu.value.split(" / ")] == [True] * 3, cpu.value
    # the fan-out floors: every room echoed every request (else the report is not ok), and
    # each server-API phase compares itself with both at its size
    for n in SIZES:
        for variant in bench_fanout.FLOORS:
            cpu = values[f"{n} rooms, {variant}: {FLOOR_KINDS[1]}"]
            assert [float(x) >= 0 for x in cpu.value.split(" / ")] == [True] * 3, cpu.value
        label = _label(n, "directory", "server-api")
        over = values[f"{label}: warm p99 over the fan-out floors' at {n} rooms"]
        assert over.value.count("x ") == len(bench_fanout.FLOORS), over.value
    # server-API delivery: one SendData per room and request, all made on node A (the gateway's)
    for n in SIZES:
        calls = values[f"{_label(n, 'directory', 'server-api')}: RoomService calls per request"]
        assert f"{n:.1f} SendData, logged by node A / B: {n:.1f} / 0.0" in calls.value
