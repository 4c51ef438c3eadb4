"""Flood memory: 100,000 messages from one sender, valid, invalid and duplicate mixed.

Every message must be acked exactly once, and the plugin's memory must stay bounded however much
one sender sends: its queue, its dedup window (10,000 entries), its rate-limit table and its
context budget are all capped. Measured twice: with the default rate limit (nearly everything
is refused with RATE_LIMITED) and with the limit off (``rate_limit=None``, every message is
applied, sent in chunks of 500 so that the queue never overflows). A third run sends only
``get_state`` with a full context budget: the largest acks, enough of them to fill the dedup
window, which keeps each first ack for 10 minutes.

Memory is the peak growth of Python allocations over the run (``tracemalloc``, from just after
set-up) and of the process RSS (sampled). The baseline next to it is the volume the sender
sent in the same run. Acks are counted by request number on the transport side; the mix is
fixed, so the expected count for every id is known:

    i % 10 in 0..2  add_context, no key       i % 10 == 5  unknown type (id kept)
    i % 10 == 3     add_context, 1 of 50 keys  i % 10 == 6  not JSON (ack id null)
    i % 10 == 4     get_state                  i % 10 == 7  repeat of message i - 7
    i % 10 == 8     empty context (id kept)    i % 10 == 9  wrong field type; every 100th is
                                                             over 15 KiB (ack id null)

Run: ``python benchmarks/bench_flood_memory.py [--messages N]``.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import psutil
from _harness import Figure, Report, context_payload, make_rig, script_main, us

from imaginex_context_plugin import MAX_PAYLOAD_BYTES
from imaginex_context_plugin.context import DEFAULT_CONTEXT_BUDGET
from imaginex_context_plugin.security import DEFAULT_RATE_LIMIT

TARGET_BYTES = 50 * 1024 * 1024
CHUNK = 500
_OVERSIZE = b'{"type":"add_context","context":"' + b"x" * (MAX_PAYLOAD_BYTES + 16) + b'"}'


def payload(i: int) -> bytes:
    """Message ``i`` of the fixed mix (see the module docstring)."""
    kind = i % 10
    if kind <= 2:
        return context_payload(i)
    if kind == 3:
        return context_payload(i, key=f"k{(i // 10) % 50}")
    if kind == 4:
        return json.dumps({"type": "get_state", "id": f"m{i}"}).encode()
    if kind == 5:
        return json.dumps({"type": "shout", "id": f"m{i}", "message": "hi"}).encode()
    if kind == 6:
        return b'{"type": "speak", "message": "unterminated'
    if kind == 7:
        return context_payload(i - 7)
    if kind == 8:
        return json.dumps({"type": "add_context", "id": f"m{i}", "context": "   "}).encode()
    if i % 100 == 99:
        return _OVERSIZE
    body = {"type": "speak", "id": f"m{i}", "message": "hi", "allow_interruptions": "yes"}
    return json.dumps(body).encode()


def state_payload(i: int) -> bytes:
    return json.dumps({"type": "get_state", "id": f"m{i}"}).encode()


def expected_acks(messages: int) -> tuple[bytearray, int, int]:
    """(acks expected per request number, acks expected with a null id, repeats sent)."""
    per_id = bytearray(messages)
    unnumbered = repeats = 0
    for i in range(messages):
        kind = i % 10
        if kind == 6 or (kind == 9 and i % 100 == 99):
            unnumbered += 1
        elif kind == 7:
            per_id[i - 7] += 1
            repeats += 1
        else:
            per_id[i] += 1
    return per_id, unnumbered, repeats


async def _flood(
    messages: int, *, limited: bool, states_only: bool = False, traced: bool = True
) -> dict[str, float]:
    prefill = 0
    rig = await make_rig(
        capacity=messages + DEFAULT_CONTEXT_BUDGET.max_entries,
        rate_limit=DEFAULT_RATE_LIMIT if limited else None,
    )
    process = psutil.Process()
    try:
        make = payload
        per_id, unnumbered, repeats = expected_acks(messages)  # before the baseline
        if states_only:
            # a full context budget makes every state ack as large as it gets
            make = state_payload
            per_id, unnumbered, repeats = bytearray(b"\x01" * messages), 0, 0
            prefill = DEFAULT_CONTEXT_BUDGET.max_entries
            for n in range(prefill):
                rig.deliver(rig.packet(context_payload(messages + n)))
            await rig.transport.wait_for(prefill)
        if traced:
            tracemalloc.start()
        base_traced = tracemalloc.get_traced_memory()[0]
        base_rss = peak_rss = process.memory_info().rss
        sent_bytes = 0
        after_first_10th = 0
        t0 = time.perf_counter()
        for start in range(0, messages, CHUNK):
            end = min(messages, start + CHUNK)
            for i in range(start, end):
                data = make(i)
                sent_bytes += len(data)
                rig.deliver(rig.packet(data))
            await rig.transport.wait_for(prefill + end)
            peak_rss = max(peak_rss, process.memory_info().rss)
            if end <= messages // 10:
                after_first_10th = tracemalloc.get_traced_memory()[0] - base_traced
        elapsed = time.perf_counter() - t0
        current, peak = tracemalloc.get_traced_memory()
        if traced:
            tracemalloc.stop()

        transport = rig.transport
        exact = sum(1 for i in range(messages) if transport.acked[i] == per_id[i])
        ok = (
            exact == messages
            and transport.unnumbered == unnumbered
            and transport.received == prefill + messages
            and (limited or rig.plugin.stats.duplicates == repeats)
        )
        return {
            "peak": peak - base_traced,
            "end": current - base_traced,
            "first_10th": after_first_10th,
            "rss": peak_rss - base_rss,
            "sent_bytes": sent_bytes,
            "acked": transport.received - prefill,
            "ok": ok,
            "per_message": elapsed / messages,
            "duplicates": rig.plugin.stats.duplicates,
            "refused": sum(rig.plugin.stats.errors.values()),
        }
    finally:
        await rig.aclose()


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:,.1f} MB"


async def run(*, messages: int = 100_000, states: int = 12_000) -> Report:
    report = Report(f"flood memory: {messages:,} messages from one sender")
    variants = [
        ("default rate limit", messages, True, False),
        ("rate limit off", messages, False, False),
        (f"{states:,} get_state, limit off", states, False, True),
    ]
    for label, count, limited, states_only in variants:
        # tracemalloc slows every allocation ~4x: the get_state run, the slowest, does without
        r = await _flood(count, limited=limited, states_only=states_only, traced=not states_only)
        report.ok &= bool(r["ok"])
        growth = max(r["peak"], 0.0)
        if not states_only:
            report.add(
                Figure(
                    f"{label}: peak growth (tracemalloc)",
                    _mb(growth),
                    f"sent {_mb(r['sent_bytes'])}",
                    f"{growth / r['sent_bytes']:.2f}x",
                    f"< {_mb(TARGET_BYTES)}",
                    growth < TARGET_BYTES,
                )
            )
        report.add(
            Figure(
                f"{label}: peak RSS growth",
                _mb(max(r["rss"], 0.0)),
                f"sent {_mb(r['sent_bytes'])}",
                f"{max(r['rss'], 0.0) / r['sent_bytes']:.2f}x",
                f"< {_mb(TARGET_BYTES)}",
                r["rss"] < TARGET_BYTES,
            )
        )
        report.add(
            Figure(
                f"{label}: acked",
                f"{int(r['acked']):,} of {count:,}",
                "",
                "",
                "all, each once",
                bool(r["ok"]),
            )
        )
        held = (
            f"held after the first tenth {_mb(r['first_10th'])}, at the end {_mb(r['end'])}; "
            if not states_only
            else "RSS only; "
        )
        report.notes.append(
            f"{label}: {held}{int(r['duplicates']):,} repeats answered as duplicates, "
            f"{int(r['refused']):,} refusals; {us(r['per_message'])} per message"
            + (" under tracemalloc" if not states_only else "")
        )
    return report


def main() -> None:
    script_main(__doc__, run, messages=100_000, states=12_000)


if __name__ == "__main__":
    main()
