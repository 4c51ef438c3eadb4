"""The live benchmarks at a tiny size on the session's server, so that they never rot:
``benchmarks/bench_live.py``, ``bench_avatar.py``, and in Chromium ``bench_browser.py`` and
``bench_console.py``.

No timing is asserted: only what the benchmarks check for correctness (every speech played out
through each output, the avatar process included) and that every figure is there; the figures
come from running the benchmarks themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from devtools.livekit_server import ServerInfo
from tests.typescript import chromium, node

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_avatar
import bench_browser
import bench_console
import bench_live
from _harness import Figure, Report


def _names(figures: list[Figure]) -> list[str]:
    return [figure.name.split(",")[0] for figure in figures]


async def _in_chromium(run: Callable[[], Awaitable[Report]]) -> list[Figure]:
    """The figures of a benchmark that drives Chromium (Node and Chromium must be here)."""
    node()
    chromium()
    report = await run()
    assert report.ok
    return report.figures


async def test_bench_live_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    report = await bench_live.run(requests=5, cold=1, server=livekit)
    assert report.ok
    assert _names(report.figures) == [
        "floor: bare RPC echo",
        "client -> ack over RPC",
        "client -> ack over data",
        "gateway HTTP -> response",
        "gateway HTTP -> response",
    ]


async def test_bench_avatar_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    report = await bench_avatar.run(speeches=2, server=livekit)
    assert report.ok, report.notes
    names = [figure.name for figure in report.figures]
    for output in bench_avatar.OUTPUTS:
        assert f"speak -> speech_started, {output.name}, p50 / p95" in names
        assert f"speak -> speech_finished, {output.name}, p50 / p95" in names
    # the avatar's position came back in every speech_finished
    played = [f.ratio for f in report.figures if f.name.startswith("speech_finished - ")]
    assert all(p == "played_s p50 1.010 s" for p in played), played


async def test_bench_browser_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    figures = await _in_chromium(
        lambda: bench_browser.run(requests=5, warmup=1, server=livekit)
    )
    assert _names(figures) == [
        "floor: bare performRpc echo (same page",
        "browser speak -> ack (ContextClient over RPC)",
    ]
    assert figures[1].met is not None


async def test_bench_console_runs_and_every_figure_is_there(livekit: ServerInfo) -> None:
    figures = await _in_chromium(
        lambda: bench_console.run(rounds=5, warmup=1, server=livekit)
    )
    assert _names(figures) == [
        "floor: bare SSE client",
        "console: caller's words (interim transcript)",
        "console: caller's words (interim transcript)",
        "floor: bare SSE client",
        "console: committed line (conversation_item)",
        "console: committed line (conversation_item)",
    ]
    assert figures[1].met is not None
    assert figures[4].met is not None
