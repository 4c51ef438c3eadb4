"""``benchmarks/bench_console.py`` at a tiny size on the session's server, so that it never rots.

No timing is asserted: the figures come from running the benchmark itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.livekit_server import ServerInfo
from tests.typescript import chromium, node

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_console


async def test_bench_console_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    node()
    chromium()
    report = await bench_console.run(rounds=5, warmup=1, server=livekit)
    assert report.ok
    names = [figure.name.split(",")[0] for figure in report.figures]
    assert names == [
        "floor: bare SSE client",
        "console: caller's words (interim transcript)",
        "console: caller's words (interim transcript)",
        "floor: bare SSE client",
        "console: committed line (conversation_item)",
        "console: committed line (conversation_item)",
    ]
    assert report.figures[1].met is not None
    assert report.figures[4].met is not None
