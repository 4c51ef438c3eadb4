"""``benchmarks/bench_server_api_delivery.py`` at a tiny size on the session's server, so that
it never rots. No timing is asserted: only that both paths reached every room every time."""

from __future__ import annotations

import sys
from pathlib import Path

from devtools.livekit_server import ServerInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_server_api_delivery as bench


async def test_both_paths_reach_every_room_cold_and_warm(livekit: ServerInfo) -> None:
    rows = await bench.run([1, 2], 3, server=livekit)

    assert [(r.size, r.path) for r in rows] == [
        (1, "room"), (1, "server-api"), (2, "room"), (2, "server-api")
    ]
    for row in rows:
        assert row.cold_reached == row.size, row
        assert row.warm_reached_all == 3, row
        assert len(row.warm) == 3
        assert row.rss_bytes > 0
