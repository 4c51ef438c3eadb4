"""``benchmarks/bench_fanout.py`` at a tiny size on the session's two-node cluster, so that it
never rots.

No timing is asserted: the figures come from running the benchmark itself. What is asserted is
its correctness check (every room reached by every request, each message spoken once) and that
every figure is there for both ways of finding agents.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.integration.cluster import LiveKitCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_fanout


async def test_bench_fanout_runs_and_every_figure_is_there(
    livekit_cluster: LiveKitCluster,
) -> None:
    report = await bench_fanout.run(
        sizes=(1, 2), warm=2, floor_requests=5, cluster=livekit_cluster
    )
    assert report.ok, report.notes
    kinds = [
        "HTTP -> response, cold",
        "HTTP -> response, warm",
        "RoomService calls per request",
        "gateway RSS idle -> pooled",
        "gateway sockets idle -> pooled",
    ]
    expected = ["floor: bare RPC echo"] + [
        f"{n} rooms, {mode}: {kind}"
        for n in (1, 2)
        for mode in ("directory", "scan")
        for kind in kinds
    ]
    assert [figure.name.split(" (")[0].split(", p50")[0] for figure in report.figures] == [
        e.split(", p50")[0] for e in expected
    ]
    directory_calls = [
        f for f in report.figures if f.name.endswith("directory: RoomService calls per request")
    ]
    assert all(f.met for f in directory_calls)
