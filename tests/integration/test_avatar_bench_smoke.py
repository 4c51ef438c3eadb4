"""``benchmarks/bench_avatar.py`` at a tiny size on the session's server, so that it never rots.

No timing is asserted: only that every speech played out through each output (the avatar
process included) and that every figure is there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.livekit_server import ServerInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_avatar


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
