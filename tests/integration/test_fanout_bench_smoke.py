"""``benchmarks/bench_fanout.py`` at a tiny size on the session's two-node cluster, so that it
never rots.

No timing is asserted: the figures come from running the benchmark itself. What is asserted is
its correctness check (every room reached by every request, cold and warm, each message spoken
once), that every figure is there for both ways of finding agents and both ways of delivering
(``PerformRpc``, room connections), that the fan-out floors (bare PerformRpc, with and without
``say()``, and through a bare HTTP relay) reached every room and are compared with, and that the
server-side delivery reached node B's rooms through node A.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from devtools.livekit_cluster import LiveKitCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_fanout

SIZES = (1, 2)
WARM = 2
MIN_SAMPLES = 3
"""One room makes 3 warm requests (``--min-samples`` over ``--warm``), two rooms 2 (``--warm``)."""
WARM_AT = {1: 3, 2: 2}
KINDS = [
    "HTTP -> response, cold",
    "HTTP -> response, warm",
    "RoomService calls per request",
    "gateway RSS idle -> pooled",
    "gateway sockets idle -> pooled",
    "rooms reached on node A / node B, all requests",
    "CPU ms per warm request, gateway / node A / node B / agents",
    "gateway CPU per room per request",
]
FLOOR_KINDS = ["warm", "CPU ms per warm request, sender / node A / node B / agents"]
"""The fan-out floors' figures (every floor, at every size)."""
DELIVERIES = ("server-rpc", "room")
"""In the order the report gives them: the server-side ones take turns, the room path after."""


def _label(n: int, mode: str, delivery: str) -> str:
    return f"{n} rooms, {mode}" + ("" if delivery == "room" else f", {delivery}")


async def test_bench_fanout_runs_and_every_figure_is_there(
    livekit_cluster: LiveKitCluster,
) -> None:
    results: dict[str, Any] = {}
    report = await bench_fanout.run(
        sizes=SIZES,
        warm=WARM,
        floor_requests=5,
        cluster=livekit_cluster,
        deliveries=DELIVERIES,
        min_samples=MIN_SAMPLES,
        results=results,
    )
    assert report.ok, report.notes
    # each warm figure rests on max(warm, ceil(min_samples / rooms)) requests, and says so
    for row in [*results["floors"], *results["phases"]]:
        assert row["requests"] == WARM_AT[row["rooms"]], row
        assert row["samples"] == WARM_AT[row["rooms"]] * row["rooms"], row
        assert sum(row["cpu_ticks"].values()) >= 0
    assert results["rpc_echo_ms"]["samples"] == 5
    assert results["min_samples"] == MIN_SAMPLES
    assert results["clock_tick_ms"] > 0
    warm_names = [f.name for f in report.figures if "warm (" in f.name]
    for n in SIZES:
        tag = f"({WARM_AT[n] * n} samples: {WARM_AT[n]} requests x {n} rooms)"
        assert sum(1 for name in warm_names if name.startswith(f"{n} rooms") and tag in name) == (
            len(bench_fanout.FLOORS) + len(DELIVERIES) * 2
        ), warm_names
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
            for delivery in DELIVERIES
            for mode in ("directory", "scan")
            for kind in [
                *KINDS,
                f"warm p99 over the fan-out floors' at {n} rooms",
                f"warm p99 over the {bench_fanout.BARE_FLOOR_OF[delivery]} floor, rooms reached",
            ]
        ]
    )
    assert [figure.name.split(" (")[0].split(", p50")[0] for figure in report.figures] == [
        e.split(", p50")[0] for e in expected
    ]
    values = {figure.name.split(" (")[0].split(", p50")[0]: figure for figure in report.figures}
    directory_calls = [
        f for f in report.figures if ", directory" in f.name and "RoomService calls" in f.name
    ]
    assert len(directory_calls) == len(DELIVERIES) * len(SIZES)
    assert all(f.met for f in directory_calls)
    for n in SIZES:
        for delivery in DELIVERIES:
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
                    requests = WARM_AT[n] + 1  # the cold one and the warm ones
                    assert parts[node] == f"{rooms_there * requests}/{rooms_there * requests}"
                cpu = values[f"{label}: {KINDS[6]}"]
                assert [float(x) >= 0 for x in cpu.value.split(" / ")] == [True] * 4, cpu.value
    # the fan-out floors: every room answered every request (else the report is not ok), and
    # each phase compares itself with all of them at its size
    for n in SIZES:
        for variant in bench_fanout.FLOORS:
            cpu = values[f"{n} rooms, {variant}: {FLOOR_KINDS[1]}"]
            assert [float(x) >= 0 for x in cpu.value.split(" / ")] == [True] * 4, cpu.value
        for delivery in DELIVERIES:
            label = _label(n, "directory", delivery)
            over = values[f"{label}: warm p99 over the fan-out floors' at {n} rooms"]
            assert over.value.count("x ") == len(bench_fanout.FLOORS), over.value
    # server-side deliveries: one call per room and request, all made on node A (the gateway's)
    for n in SIZES:
        for delivery, call in (("server-rpc", "PerformRpc"),):
            calls = values[f"{_label(n, 'directory', delivery)}: RoomService calls per request"]
            assert f"{n:.1f} {call}, logged by node A / B: {n:.1f} / 0.0" in calls.value
