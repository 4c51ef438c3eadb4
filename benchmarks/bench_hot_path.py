"""Hot path: messages per second from bytes arriving to ack bytes handed to the transport.

Each message is a real ``rtc.DataPacket`` emitted as ``data_received`` on a real ``rtc.Room``;
the plugin admits it, applies it to a real ``AgentSession`` (``say()`` for speak, one
``update_chat_ctx()`` per burst for add_context) and hands the ack bytes to its transport, which
here counts them where ``publish_data`` would send them. The floor, measured in the same run, is
``json.loads`` + ``json.dumps`` of the same payloads.

Two figures per case: the total (wall time from the first packet of a burst to its last ack,
per message) and the plugin's own share, which leaves out what LiveKit itself spends: the
``data_received`` dispatch of ``rtc.Room.emit`` (measured on a listener that does nothing),
``AgentSession.say`` and ``Agent.update_chat_ctx`` (timed by thin subclasses), LiveKit's own
tasks that run inside the window (speech playout, timed by a task factory) and the transport.
Figures are medians over rounds, each with its own floor and dispatch timed just before it, so a
stray stall from another process moves neither the figures nor the ratios much.

The main add_context payload is about 130 bytes, a short note; a 1 KiB one is measured too, as
the floor grows with the size while most of the plugin's cost is per message.

Run: ``python benchmarks/bench_hot_path.py [--messages N] [--burst K] [--single M]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from _harness import (
    DispatchClock,
    Figure,
    Report,
    Rig,
    context_payload,
    json_floor,
    make_rig,
    median,
    script_main,
    speak_payload,
    us,
)

from imaginex_context_plugin import RateLimit

TARGET_RATIO = 3.0
_NOTE = "prefers email, premium member since 2021, asked about the enterprise plan. "


def long_context_payload(n: int) -> bytes:
    """An add_context of about 1 KiB: the floor grows with the size, the plugin's cost hardly."""
    body = {"type": "add_context", "id": f"m{n}", "context": f"Note {n}: " + _NOTE * 13}
    return json.dumps(body).encode()


# the limiter stays on (its cost is part of the hot path) but never refuses here
NO_REFUSAL = RateLimit(per_second=1e9, burst=1_000_000_000)


@dataclass
class HotPath:
    """Seconds per message, and the plugin-only cost over the floor (medians over rounds)."""

    total: float
    plugin: float
    admit: float
    dispatch: float
    livekit: float
    background: float
    transport: float
    floor: float
    ratio: float
    ok: bool


SINGLES_PER_ROUND = 20


async def measure(
    kind: str, make_payload: Callable[[int], bytes], messages: int, burst: int
) -> HotPath:
    """Send ``messages`` in bursts of ``burst``, each burst once the previous one is acked.

    Work is timed in rounds (one burst, or 20 single messages) and each round's floor and
    dispatch cost are timed right before it on the same payloads, so that a slow moment of the
    machine weighs on both sides of every ratio alike.
    """
    warmup = min(200, messages)
    per_round = burst if burst > 1 else SINGLES_PER_ROUND
    rig: Rig = await make_rig(capacity=warmup + messages + per_round, rate_limit=NO_REFUSAL)
    dispatch_clock = DispatchClock()
    try:
        rows: list[list[float]] = []
        sent = 0
        for phase_total, timed in ((warmup, False), (messages, True)):
            done = 0
            while done < phase_total:
                size = min(per_round, phase_total - done)
                payloads = [make_payload(sent + i) for i in range(size)]
                packets = [rig.packet(p) for p in payloads]
                floor = json_floor(payloads)
                dispatch = dispatch_clock.measure(packets)
                rig.timer.reset()
                transport_before = rig.transport.seconds
                window = admit = background = 0.0
                groups = [packets] if burst > 1 else [[p] for p in packets]
                for group in groups:
                    tasks_before = rig.tasks.seconds
                    t0 = time.perf_counter()
                    for packet in group:
                        rig.deliver(packet)
                    admit += time.perf_counter() - t0
                    sent += len(group)
                    await rig.transport.wait_for(sent)
                    window += rig.transport.last_at - t0
                    background += rig.transport.tasks_at_last - tasks_before
                if kind == "speak":
                    await rig.session.wait_speeches()  # playout happens outside the window
                done += size
                if not timed:
                    continue
                livekit = rig.timer.total()
                transport = rig.transport.seconds - transport_before
                plugin = (window - livekit - background - transport) / size - dispatch
                rows.append(
                    [
                        window / size,
                        plugin,
                        admit / size - dispatch,
                        dispatch,
                        livekit / size,
                        background / size,
                        transport / size,
                        floor,
                        plugin / floor,
                    ]
                )
        ok = rig.transport.acked_once(range(sent)) == sent and rig.plugin.stats.errors == {}
        medians = [median(column) for column in zip(*rows, strict=True)]
        return HotPath(*medians, ok=ok)
    finally:
        dispatch_clock.close()
        await rig.aclose()


async def run(*, messages: int = 20_000, burst: int = 100, single: int = 2_000) -> Report:
    report = Report("hot path: bytes in -> ack bytes out (per message)")
    cases = [
        ("add_context", f"burst of {burst}", context_payload, messages, burst),
        ("add_context", f"1 KiB, burst of {burst}", long_context_payload, messages // 4, burst),
        ("add_context", "one at a time", context_payload, single, 1),
        ("speak", f"burst of {burst}", speak_payload, max(burst, messages // 4), burst),
        ("speak", "one at a time", speak_payload, single, 1),
    ]
    for kind, label, make_payload, count, size in cases:
        hot = await measure(kind, make_payload, count, size)
        report.ok &= hot.ok
        ratio = hot.ratio
        gated = kind == "add_context"
        report.add(
            Figure(
                f"{kind}, {label}: plugin only",
                us(hot.plugin),
                f"json {us(hot.floor)}",
                f"{ratio:.1f}x",
                f"<= {TARGET_RATIO:.0f}x" if gated else "",
                ratio <= TARGET_RATIO if gated else None,
            )
        )
        report.add(
            Figure(
                f"{kind}, {label}: total",
                f"{us(hot.total)} = {1 / hot.total:,.0f} msg/s",
                f"json {us(hot.floor)}",
                f"{hot.total / hot.floor:.1f}x",
            )
        )
        report.notes.append(
            f"{kind}, {label} ({count:,} messages), per message: plugin in the room callback "
            f"{us(hot.admit)}; LiveKit: emit dispatch {us(hot.dispatch)}, "
            f"say/update_chat_ctx {us(hot.livekit)}, own tasks {us(hot.background)}, "
            f"transport {us(hot.transport)}"
        )
    return report


def main() -> None:
    script_main(__doc__, run, messages=20_000, burst=100, single=2_000)


if __name__ == "__main__":
    main()
