"""Subscribers: the agent's event-loop lag while 10 subscribers take its live events, one stalled.

A real ``AgentSession`` (the test kit's fakes) emits ``user_input_transcribed`` at a steady
rate, as a busy STT would. Measured twice in the same run: with no subscriber, and with 10
subscribers to every event, one of whom never gets anything through (its ``AckTransport`` send
for events never returns). The lag is a task that asks to wake every 1 ms and records how late
it wakes. Correctness: each of the 9 healthy subscribers gets every event, none marked
``dropped``; the stalled one holds at most ``SUBSCRIBER_QUEUE_SIZE`` events and the rest are
counted as dropped; acks to another sender keep flowing; closing is bounded.

Run: ``python benchmarks/bench_subscribers.py [--events N] [--rate R]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from _harness import Figure, Report, ms, percentile, script_main
from bench_latency import LagMonitor
from livekit.agents.voice.events import UserInputTranscribedEvent

from imaginex_context_plugin import AckTransport, ContextPlugin
from imaginex_context_plugin.receiver.outbox import DRAIN_TIMEOUT_S
from imaginex_context_plugin.receiver.subscriber_feed import SUBSCRIBER_QUEUE_SIZE
from imaginex_context_plugin.testing import ScriptedLLM, start_session

SUBSCRIBERS = 10
STALLED = "sub0"
PROBE = "probe"
TARGET_LAG_S = 0.010
TICK_S = 0.001


class _Transport(AckTransport):
    """Counts what each participant is sent; session events to ``STALLED`` never get through."""

    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.dropped_marks: dict[str, int] = {}
        self.acks: dict[str, float] = {}
        self.acked = asyncio.Event()  # set on every ack
        self._never = asyncio.Event()

    async def send(self, payload: bytes, destination_identity: str) -> None:
        if payload.startswith(b'{"type":"ack"'):
            self.acks[json.loads(payload)["id"]] = time.perf_counter()
            self.acked.set()
            return
        if destination_identity == STALLED:
            await self._never.wait()
        self.events[destination_identity] = self.events.get(destination_identity, 0) + 1
        if b'"dropped":' in payload:
            self.dropped_marks[destination_identity] = (
                self.dropped_marks.get(destination_identity, 0) + 1
            )


async def _phase(
    subscribers: int, *, events: int, rate: float
) -> tuple[list[float], list[float], _Transport, ContextPlugin, Any]:
    session = await start_session(llm_model=ScriptedLLM(), text_only=True)
    transport = _Transport()
    identities = [f"sub{i}" for i in range(subscribers)]
    plugin = ContextPlugin(
        agent_code="A1",
        allowed_identities=[*identities, PROBE],
        permissions={"*": {"*"}},
        rate_limit=None,
        ack_transport=transport,
        server_secret="unused-server-secret-for-the-benchmark",
    )
    await plugin.start(session, _room())
    for identity in identities:
        plugin.ingest(
            json.dumps({"type": "subscribe", "id": identity, "events": ["user_transcript"]}),
            sender_identity=identity,
        )
    await _acked(transport, lambda: len(transport.acks) >= len(identities))
    monitor = LagMonitor()
    monitor.start()
    per_tick = max(1, round(rate * TICK_S))
    probes: list[float] = []
    for n in range(events):
        session.emit(
            "user_input_transcribed",
            UserInputTranscribedEvent(transcript=f"words {n}", is_final=True),
        )
        if n % per_tick == per_tick - 1:
            if n % (per_tick * 20) == per_tick * 20 - 1:  # an ack probe every 20 ms
                probes.append(await _probe(plugin, transport, f"g{n}"))
            await asyncio.sleep(TICK_S)
    await asyncio.sleep(0.05)  # let the healthy subscribers drain
    await monitor.stop()
    return monitor.lags, probes, transport, plugin, session


async def _probe(plugin: ContextPlugin, transport: _Transport, rid: str) -> float:
    t0 = time.perf_counter()
    plugin.ingest(json.dumps({"type": "get_state", "id": rid}), sender_identity=PROBE)
    await _acked(transport, lambda: rid in transport.acks)
    return transport.acks[rid] - t0


async def _acked(transport: _Transport, done: Callable[[], bool]) -> None:
    while not done():
        transport.acked.clear()
        await transport.acked.wait()


def _room() -> Any:
    from livekit import rtc

    return rtc.Room()


async def run(events: int = 20_000, rate: float = 5_000.0) -> Report:
    report = Report(f"subscribers: loop lag at {rate:,.0f} events/s, 10 subscribers, 1 stalled")
    base_lags, base_probes, _, plugin, session = await _phase(0, events=events, rate=rate)
    await plugin.aclose()
    await session.aclose()
    lags, probes, transport, plugin, session = await _phase(SUBSCRIBERS, events=events, rate=rate)
    t0 = time.perf_counter()
    await plugin.aclose()
    close_s = time.perf_counter() - t0
    await session.aclose()

    for name, value, base in (
        ("loop lag p50", percentile(lags, 0.5), percentile(base_lags, 0.5)),
        ("loop lag p99", percentile(lags, 0.99), percentile(base_lags, 0.99)),
        ("loop lag max", max(lags), max(base_lags)),
        (
            "get_state ack p99 (other sender)",
            percentile(probes, 0.99),
            percentile(base_probes, 0.99),
        ),
    ):
        gated = name == "loop lag p99"
        report.add(
            Figure(
                name,
                ms(value),
                baseline=f"{ms(base)} (no subscribers)",
                ratio=f"{value / base:.2f}x" if base > 0 else "",
                target=f"<= {ms(TARGET_LAG_S)}" if gated else "",
                met=value <= TARGET_LAG_S if gated else None,
            )
        )
    report.add(
        Figure(
            "aclose with a stalled subscriber",
            ms(close_s),
            target=f"<= {ms(DRAIN_TIMEOUT_S + 0.5)}",
            met=close_s <= DRAIN_TIMEOUT_S + 0.5,
        )
    )
    healthy = [f"sub{i}" for i in range(1, SUBSCRIBERS)]
    got = [transport.events.get(h, 0) for h in healthy]
    # each healthy subscriber: every event, plus call_ended at close
    report.ok = all(n == events + 1 for n in got) and not any(
        transport.dropped_marks.get(h) for h in healthy
    )
    dropped = plugin.stats.events_dropped
    expected_dropped = events + 1 - 1 - SUBSCRIBER_QUEUE_SIZE  # one on its way, a full queue
    report.ok &= dropped == expected_dropped
    report.notes += [
        f"{events:,} events; healthy subscribers got {min(got):,}-{max(got):,} each "
        f"(expected {events + 1:,} with call_ended), none marked dropped",
        f"the stalled subscriber: {dropped:,} dropped (expected {expected_dropped:,}), at most "
        f"{SUBSCRIBER_QUEUE_SIZE} held",
        f"{len(probes)} get_state probes from another sender answered during the run",
    ]
    return report


def main() -> None:
    script_main(__doc__, run, events=20_000, rate=5_000.0)


if __name__ == "__main__":
    main()
