"""``benchmarks/bench_browser.py`` at a tiny size on the session's server, so that it never rots.

No timing is asserted: the figures come from running the benchmark itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.livekit_server import ServerInfo
from tests.typescript import chromium, node

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_browser


async def test_bench_browser_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    node()
    chromium()
    report = await bench_browser.run(requests=5, warmup=1, server=livekit)
    assert report.ok
    assert [figure.name.split(",")[0] for figure in report.figures] == [
        "floor: bare performRpc echo (same page",
        "browser speak -> ack (ContextClient over RPC)",
    ]
    assert report.figures[1].met is not None
