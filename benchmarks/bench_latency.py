"""Latency: from a speak packet's arrival to ``AgentSession.say()`` being called.

Probe speak messages arrive at a steady pace as loop callbacks (as the SDK delivers packets);
each records its arrival time just before ``rtc.Room.emit("data_received", ...)``, and a thin
``AgentSession`` subclass records when ``say()`` is called for it. Measured idle, then while
2,000 add_context messages per second arrive from 25 other senders (each under the rate limit,
which stays on), together with the event loop's lag: a task that asks to wake every 1 ms and
records how late it wakes. The baseline for the lag is the same timer on the same loop with no
messages at all, measured in the same run.

Run: ``python benchmarks/bench_latency.py [--probes N] [--rate R]``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from _harness import (
    Figure,
    GcWatch,
    Report,
    Rig,
    context_payload,
    make_rig,
    ms,
    percentile,
    script_main,
    speak_payload,
)

from imaginex_context_plugin import RateLimit

TARGET_P99_IDLE_S = 0.001
TARGET_P99_FLOOD_S = 0.005
TARGET_LAG_S = 0.010
TICK_S = 0.001
PROBE_INTERVAL_S = 0.02
FLOOD_SENDERS = 25
# on for everyone, as in production; each flood sender stays under it (2,000/s over 25 senders)
LIMIT = RateLimit(per_second=100, burst=200)


@dataclass
class LagMonitor:
    """Wakes every ``TICK_S`` and records how late each wake-up is."""

    lags: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(TICK_S)
            self.lags.append(time.perf_counter() - t0 - TICK_S)


@dataclass
class Phase:
    latencies: list[float]
    lags: list[float]
    flood_sent: int
    duration: float
    gc: GcWatch


async def _phase(rig: Rig, *, probes: int, first_id: int, flood_rate: float) -> Phase:
    """Send ``probes`` speak probes, with ``flood_rate`` add_context/s from other senders."""
    loop = asyncio.get_running_loop()
    arrivals: dict[str, float] = {}
    said: dict[str, float] = {}

    def on_say(text: str) -> None:
        said[text] = time.perf_counter()

    rig.session.on_say = on_say
    duration = probes * PROBE_INTERVAL_S
    flood_total = int(duration * flood_rate)
    flood_first = first_id + probes
    # payloads made ahead (bytes are not GC-tracked); each packet is built as it arrives
    flood_payloads = [
        context_payload(flood_first + i, key=f"k{i % 16}" if i % 2 else None)
        for i in range(flood_total)
    ]
    probe_packets = [rig.packet(speak_payload(first_id + k)) for k in range(probes)]
    probe_texts = [f"Your order #{first_id + k} has shipped!" for k in range(probes)]

    def arrive(k: int) -> None:
        arrivals[probe_texts[k]] = time.perf_counter()
        rig.deliver(probe_packets[k])

    async def flood() -> int:
        sent = 0
        t_start = loop.time()
        while sent < flood_total:
            await asyncio.sleep(TICK_S)
            due = min(flood_total, int((loop.time() - t_start) * flood_rate))
            while sent < due:
                rig.deliver(rig.packet(flood_payloads[sent], f"flood{sent % FLOOD_SENDERS}"))
                sent += 1
        return sent

    monitor = LagMonitor()
    monitor.start()
    watch = GcWatch().__enter__()
    t_start = loop.time() + 0.01
    handles = [loop.call_at(t_start + k * PROBE_INTERVAL_S, arrive, k) for k in range(probes)]
    flood_task = asyncio.create_task(flood()) if flood_total else None
    await asyncio.sleep(duration + 0.05)
    flood_sent = await flood_task if flood_task is not None else 0
    await monitor.stop()
    watch.__exit__()
    for handle in handles:
        handle.cancel()
    rig.session.on_say = None
    latencies = [said[t] - arrivals[t] for t in probe_texts if t in said and t in arrivals]
    return Phase(latencies, monitor.lags, flood_sent, duration, watch)


async def _baseline_lag(seconds: float) -> list[float]:
    monitor = LagMonitor()
    monitor.start()
    await asyncio.sleep(seconds)
    await monitor.stop()
    return monitor.lags


async def run(*, probes: int = 200, rate: float = 2_000.0) -> Report:
    report = Report(f"latency: packet -> say(), idle and under {rate:,.0f} msg/s")
    duration = probes * PROBE_INTERVAL_S
    flood_total = int(duration * rate)
    senders = ["backend", *(f"flood{i}" for i in range(FLOOD_SENDERS))]
    capacity = 2 * probes + flood_total + 1
    rig = await make_rig(capacity=capacity, senders=senders, rate_limit=LIMIT)
    try:
        baseline = await _baseline_lag(min(2.0, duration))
        idle = await _phase(rig, probes=probes, first_id=0, flood_rate=0.0)
        busy = await _phase(rig, probes=probes, first_id=probes, flood_rate=rate)
        expected = 2 * probes + busy.flood_sent
        await rig.transport.wait_for(expected, timeout=120.0)
        await rig.session.wait_speeches()
        acked = rig.transport.acked_once(range(expected))
        report.ok = (
            acked == expected
            and len(idle.latencies) == probes
            and len(busy.latencies) == probes
            and busy.flood_sent == flood_total
            and rig.plugin.stats.errors == {}
        )
        report.notes.append(
            f"{probes} probes per phase, one every {PROBE_INTERVAL_S * 1e3:.0f} ms; flood: "
            f"{busy.flood_sent:,} add_context in {busy.duration:.1f} s from {FLOOD_SENDERS} "
            f"senders; {acked:,} of {expected:,} messages acked exactly once"
        )
    finally:
        await rig.aclose()

    for label, phase, target in (
        ("idle", idle, TARGET_P99_IDLE_S),
        (f"during {rate:,.0f} msg/s", busy, TARGET_P99_FLOOD_S),
    ):
        p50 = percentile(phase.latencies, 0.50)
        p99 = percentile(phase.latencies, 0.99)
        worst = max(phase.latencies, default=0.0)
        report.add(
            Figure(
                f"packet -> say() {label}: p50 / p99 / max",
                f"{ms(p50)} / {ms(p99)} / {ms(worst)}",
                "",
                "",
                f"p99 < {ms(target)}",
                p99 < target,
            )
        )
    base_worst = max(baseline, default=0.0)
    for label, lags in (("idle", idle.lags), (f"during {rate:,.0f} msg/s", busy.lags)):
        worst = max(lags, default=0.0)
        report.add(
            Figure(
                f"loop lag {label} (1 ms timer): p99 / max",
                f"{ms(percentile(lags, 0.99))} / {ms(worst)}",
                f"no traffic: {ms(percentile(baseline, 0.99))} / {ms(base_worst)}",
                f"{worst / base_worst:.1f}x" if base_worst else "",
                f"max < {ms(TARGET_LAG_S)}",
                worst < TARGET_LAG_S,
            )
        )
    for label, phase in (("idle", idle), ("flood", busy)):
        report.notes.append(
            f"GC during the {label} phase: {phase.gc.collections[2]} full collections (longest "
            f"{ms(phase.gc.longest[2])}), {phase.gc.collections[1]} of generation 1 (longest "
            f"{ms(phase.gc.longest[1])}); imports frozen as in LiveKit's job processes"
        )
    return report


def main() -> None:
    script_main(__doc__, run, probes=200, rate=2_000.0)


if __name__ == "__main__":
    main()
