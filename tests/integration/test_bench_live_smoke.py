"""``benchmarks/bench_live.py`` at a tiny size on the session's server, so that it never rots.

No timing is asserted: the figures come from running the benchmark itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.livekit_server import ServerInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_live


async def test_bench_live_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    report = await bench_live.run(requests=5, cold=1, server=livekit)
    assert report.ok
    assert [figure.name.split(",")[0] for figure in report.figures] == [
        "floor: bare RPC echo",
        "client -> ack over RPC",
        "client -> ack over data",
        "gateway HTTP -> response",
        "gateway HTTP -> response",
    ]
