"""Context growth: 10,000 add_context messages without keys into one session.

The plugin keeps the context it adds within its budget (default 64 entries, 32,000 characters;
the oldest unkeyed entries go first) and applies a burst of messages with one chat context
update, so its cost per message must stay flat however long the conversation runs. The baseline,
in the same run, is the pattern most code uses, once per message::

    ctx = agent.chat_ctx.copy()
    ctx.add_message(role="system", content=text)
    await agent.update_chat_ctx(ctx)

which copies the whole, ever growing, context twice per message (O(n) each, O(n^2) in all).

Variants: "paced" (each message sent once the previous one is acked), "bursts" (100 at a time)
and "all at once" (every message emitted before the first is applied). Per-message costs are
wall time from the packet to its ack (the burst's last ack for bursts), LiveKit calls included.

Run: ``python benchmarks/bench_context_growth.py [--messages N]``.
"""

from __future__ import annotations

import json
import time

from _harness import (
    CallTimer,
    Figure,
    RecordingTTS,
    Report,
    Rig,
    ScriptedLLM,
    TimedAgent,
    TimedSession,
    context_payload,
    make_rig,
    ms,
    script_main,
    us,
)
from livekit.agents import llm

TARGET_FLATNESS = 1.5
TARGET_SPEEDUP = 10.0
BURST = 100


def _context_size(chat_ctx: llm.ChatContext) -> tuple[int, int]:
    """(items, characters of message text) of a chat context."""
    chars = sum(len(m.text_content or "") for m in chat_ctx.messages())
    return len(chat_ctx.items), chars


def _ends(costs: list[float], window: int) -> tuple[float, float]:
    """Mean cost per message of the first and of the last ``window`` messages."""
    window = max(1, min(window, len(costs) // 2))
    return sum(costs[:window]) / window, sum(costs[-window:]) / window


async def _plugin_paced(messages: int) -> tuple[list[float], float, Rig, bool]:
    rig = await make_rig(capacity=messages, rate_limit=None, max_queue=messages)
    costs: list[float] = []
    t_start = time.perf_counter()
    for n in range(messages):
        t0 = time.perf_counter()
        rig.deliver(rig.packet(context_payload(n)))
        await rig.transport.wait_for(n + 1)
        costs.append(rig.transport.last_at - t0)
    total = time.perf_counter() - t_start
    ok = rig.transport.acked_once(range(messages)) == messages
    return costs, total, rig, ok


async def _plugin_bursts(messages: int, burst: int) -> tuple[list[float], float, Rig, bool]:
    rig = await make_rig(capacity=messages, rate_limit=None, max_queue=messages)
    costs: list[float] = []
    t_start = time.perf_counter()
    sent = 0
    while sent < messages:
        size = min(burst, messages - sent)
        packets = [rig.packet(context_payload(sent + i)) for i in range(size)]
        t0 = time.perf_counter()
        for packet in packets:
            rig.deliver(packet)
        sent += size
        await rig.transport.wait_for(sent)
        costs.extend([(rig.transport.last_at - t0) / size] * size)
    total = time.perf_counter() - t_start
    ok = rig.transport.acked_once(range(messages)) == messages
    return costs, total, rig, ok


async def _plugin_all_at_once(messages: int) -> tuple[float, bool]:
    rig = await make_rig(capacity=messages, rate_limit=None, max_queue=messages)
    try:
        packets = [rig.packet(context_payload(n)) for n in range(messages)]
        t0 = time.perf_counter()
        for packet in packets:
            rig.deliver(packet)
        await rig.transport.wait_for(messages)
        total = rig.transport.last_at - t0
        return total, rig.transport.acked_once(range(messages)) == messages
    finally:
        await rig.aclose()


async def _naive(messages: int) -> tuple[list[float], float, tuple[int, int]]:
    session = TimedSession(
        CallTimer(),
        llm=ScriptedLLM(),
        tts=RecordingTTS(),
        vad=None,
        turn_handling={"turn_detection": None},
    )
    agent = TimedAgent(CallTimer(), instructions="You are a benchmark.")
    await session.start(agent)
    try:
        costs: list[float] = []
        t_start = time.perf_counter()
        for n in range(messages):
            t0 = time.perf_counter()
            body = json.loads(context_payload(n))
            ctx = agent.chat_ctx.copy()
            ctx.add_message(role="system", content=body["context"])
            await agent.update_chat_ctx(ctx)
            json.dumps({"type": "ack", "id": body["id"], "success": True}).encode()
            costs.append(time.perf_counter() - t0)
        total = time.perf_counter() - t_start
        return costs, total, _context_size(agent.chat_ctx)
    finally:
        await session.aclose()


async def run(*, messages: int = 10_000, window: int = 1_000) -> Report:
    report = Report(f"context growth: {messages:,} add_context without keys, one session")

    naive_costs, naive_total, naive_size = await _naive(messages)
    naive_first, naive_last = _ends(naive_costs, window)

    paced_costs, paced_total, rig, paced_ok = await _plugin_paced(messages)
    try:
        plugin_size = _context_size(rig.agent.chat_ctx)
        budget = rig.plugin.context_store.budget
        held = (len(rig.plugin.context_store), rig.plugin.context_store.chars)
    finally:
        await rig.aclose()
    burst_costs, burst_total, rig, burst_ok = await _plugin_bursts(messages, BURST)
    await rig.aclose()
    once_total, once_ok = await _plugin_all_at_once(messages)
    report.ok = paced_ok and burst_ok and once_ok

    paced_first, paced_last = _ends(paced_costs, window)
    burst_first, burst_last = _ends(burst_costs, window)
    w = min(window, messages // 2)
    for label, first, last in (
        ("paced", paced_first, paced_last),
        (f"bursts of {BURST}", burst_first, burst_last),
    ):
        flat = last / first
        report.add(
            Figure(
                f"plugin {label}: last {w:,} / first {w:,} per message",
                f"{us(last)} / {us(first)} = {flat:.2f}x",
                f"naive {ms(naive_last)} / {ms(naive_first)} = {naive_last / naive_first:.1f}x",
                f"{flat:.2f}x",
                f"<= {TARGET_FLATNESS}x",
                flat <= TARGET_FLATNESS,
            )
        )
    for label, total in (
        ("paced", paced_total),
        (f"bursts of {BURST}", burst_total),
        ("all at once", once_total),
    ):
        speedup = naive_total / total
        report.add(
            Figure(
                f"plugin {label}: total for {messages:,}",
                f"{total:,.2f} s",
                f"naive {naive_total:,.2f} s",
                f"{speedup:,.1f}x faster",
                f">= {TARGET_SPEEDUP:.0f}x",
                speedup >= TARGET_SPEEDUP,
            )
        )
    report.add(
        Figure(
            "chat context at the end (items, chars)",
            f"{plugin_size[0]:,} items, {plugin_size[1]:,} chars",
            f"naive {naive_size[0]:,} items, {naive_size[1]:,} chars",
            f"{naive_size[1] / max(1, plugin_size[1]):,.0f}x smaller",
            f"<= {budget.max_entries} entries, {budget.max_chars:,} chars",
            held[0] <= budget.max_entries and held[1] <= budget.max_chars,
        )
    )
    report.notes.append(
        f"the plugin holds {held[0]} entries, {held[1]:,} chars (budget {budget.max_entries} "
        f"entries, {budget.max_chars:,} chars); the naive context grows by one item per message"
    )
    return report


def main() -> None:
    script_main(__doc__, run, messages=10_000, window=1_000)


if __name__ == "__main__":
    main()
