"""Run every benchmark and print each report, then one summary table.

Run: ``python benchmarks/run_all.py`` (about 4 minutes on 2 cores, plus about ten for the fan-out
benchmark's 200 rooms; the live benchmarks start a livekit-server, the fan-out one a two-node
cluster), or ``--quick`` for a small-size pass that only checks that everything still
runs. Exits 1 if a benchmark's correctness check failed (a message not acked exactly once,
...); timing targets that are missed are reported, not failed: these figures depend on the
machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# first: the live benchmark's server must run in the loopback-only namespace (devtools/netns.py),
# which has to be entered before anything imports LiveKit
from devtools.netns import isolate

isolate()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from typing import Any  # noqa: E402

import bench_avatar  # noqa: E402
import bench_context_growth  # noqa: E402
import bench_directory  # noqa: E402
import bench_fanout  # noqa: E402
import bench_flood_memory  # noqa: E402
import bench_gateway_http  # noqa: E402
import bench_gateway_rooms  # noqa: E402
import bench_hot_path  # noqa: E402
import bench_latency  # noqa: E402
import bench_live  # noqa: E402
import bench_subscribers  # noqa: E402
import bench_v13_cost  # noqa: E402
import bench_vs_livekit  # noqa: E402
from _harness import Report, machine, table  # noqa: E402

FULL: dict[str, dict[str, Any]] = {
    "hot path": {},
    "latency": {},
    "context growth": {},
    "flood memory": {},
    "vs livekit": {},
    "subscribers": {},
    "v1.3 cost": {},
    "live": {},
    "avatar": {},
    "directory": {},
    "gateway http": {},
    "gateway rooms": {},
    "fanout": {},
}
QUICK: dict[str, dict[str, Any]] = {
    "hot path": {"messages": 400, "burst": 50, "single": 40},
    "latency": {"probes": 20, "rate": 500.0},
    "context growth": {"messages": 400, "window": 100},
    "flood memory": {"messages": 2_000, "states": 300},
    "vs livekit": {"requests": 300, "warmup": 50, "round_size": 50},
    "subscribers": {"events": 2_000},
    "v1.3 cost": {"rounds": 1, "messages": 400, "burst": 50},
    "live": {"requests": 30, "cold": 2},
    "avatar": {"speeches": 3},
    "directory": {"sizes": (1, 20), "lookups": 50, "scan_lookups": 5},
    "gateway http": {"requests": 200, "rounds": 2},
    "gateway rooms": {"requests": 8, "rounds": 2, "spread_ms": 5.0},
    "fanout": {"sizes": (1, 4), "warm": 3, "floor_requests": 20, "min_samples": 20},
}
RUNNERS: dict[str, Callable[..., Awaitable[Report]]] = {
    "hot path": bench_hot_path.run,
    "latency": bench_latency.run,
    "context growth": bench_context_growth.run,
    "flood memory": bench_flood_memory.run,
    "vs livekit": bench_vs_livekit.run,
    "subscribers": bench_subscribers.run,
    "v1.3 cost": bench_v13_cost.run,
    "live": bench_live.run,
    "avatar": bench_avatar.run,
    "directory": bench_directory.run,
    "gateway http": bench_gateway_http.run,
    "gateway rooms": bench_gateway_rooms.run,
    "fanout": bench_fanout.run,
}


async def run_all(sizes: dict[str, dict[str, Any]]) -> list[tuple[str, Report, float]]:
    """Run the benchmarks named in ``sizes``, with those keyword arguments, in RUNNERS' order."""
    results = []
    for name, runner in RUNNERS.items():
        if name not in sizes:
            continue
        t0 = time.perf_counter()
        report = await runner(**sizes[name])
        elapsed = time.perf_counter() - t0
        report.print()
        print(f"   ({elapsed:.1f} s)")
        results.append((name, report, elapsed))
    return results


def print_summary(results: list[tuple[str, Report, float]]) -> None:
    print(f"\n== summary  [{machine()}]")
    names = [name for name, report, _ in results for _ in report.figures]
    figures = [f for _, report, _ in results for f in report.figures]
    for line in table(figures, with_bench=names):
        print(line)
    missed = [f"{n}: {f.name}" for n, f in zip(names, figures, strict=True) if f.met is False]
    failed = [name for name, report, _ in results if not report.ok]
    total = sum(elapsed for *_, elapsed in results)
    print(
        f"\ntargets met: {sum(1 for f in figures if f.met)} of "
        f"{sum(1 for f in figures if f.met is not None)}; total {total:.0f} s"
    )
    for line in missed:
        print(f"   missed  {line}")
    print(f"correctness: {'FAILED in ' + ', '.join(failed) if failed else 'ok'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    results = asyncio.run(run_all(QUICK if args.quick else FULL))
    print_summary(results)
    raise SystemExit(0 if all(report.ok for _, report, _ in results) else 1)


if __name__ == "__main__":
    main()
