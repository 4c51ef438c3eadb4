"""The run's figures: the printed table (each phase against one room, the floors and its
targets) and the same figures as data (``--json``, read by ``benchmarks/capacity_model.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from _harness import Figure, Report, ms, percentile

from .measure import CLOCK_TICK_S, FloorPhase, Measured, Phase
from .settings import (
    BARE_FLOOR_OF,
    DELIVERY_CALL,
    DIRECTORY,
    FLOOR_FACTOR,
    GATEWAY,
    GATEWAY_MS_PER_ROOM,
    WARM_FACTOR,
)


def p50_p99(samples: Sequence[float]) -> str:
    return f"{ms(percentile(samples, 0.5))} / {ms(percentile(samples, 0.99))}"


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def samples(requests: int, rooms: int) -> str:
    """How many room deliveries a warm figure rests on, and of which requests."""
    return f"{requests * rooms} samples: {requests} requests x {rooms} rooms"


def as_data(
    floors: Sequence[FloorPhase],
    phases: Sequence[Phase],
    floor_samples: Sequence[float],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    warm: int,
    ok: bool,
) -> dict[str, Any]:
    """The run's figures as data: times in milliseconds, CPU in milliseconds per request."""

    def p(samples: Sequence[float], q: float) -> float:
        return round(percentile(samples, q) * 1000, 3)

    return {
        "load_before": list(load_before),
        "load_after": list(load_after),
        "warm": warm,
        "ok": ok,
        "rpc_echo_ms": {
            "p50": p(floor_samples, 0.5),
            "p99": p(floor_samples, 0.99),
            "samples": len(floor_samples),
        },
        "floors": [
            {
                "rooms": f.rooms,
                "variant": f.variant,
                "p50_ms": p(f.warm, 0.5),
                "p99_ms": p(f.warm, 0.99),
                "requests": len(f.warm),
                "samples": len(f.warm) * f.rooms,
                "missed": f.missed,
                "cpu_ms": {k: round(v, 2) for k, v in f.cpu_ms.items()},
                "cpu_ticks": f.measured.ticks,
                "idle_ms_per_s": {
                    k: round(f.measured.idle_ms_per_s(k), 1) for k in f.measured.idle
                },
            }
            for f in floors
        ],
        "phases": [
            {
                "rooms": d.rooms,
                "mode": d.mode,
                "delivery": d.delivery,
                "cold_ms": round(d.cold * 1000, 3),
                "p50_ms": p(d.warm, 0.5),
                "p99_ms": p(d.warm, 0.99),
                "requests": len(d.warm),
                "samples": len(d.warm) * d.rooms,
                "delivered": sum(a["delivered_to_rooms"] for a in d.answers),
                "duplicates": d.duplicates,
                "of": d.rooms * len(d.answers),
                "cpu_ms": {k: round(v, 2) for k, v in d.cpu_ms.items()},
                "cpu_ticks": d.measured.ticks,
                "idle_ms_per_s": {
                    k: round(d.measured.idle_ms_per_s(k), 1) for k in d.measured.idle
                },
                "rss_base_mib": round(d.rss_base / 2**20, 1),
                "rss_after_mib": round(d.rss_pooled / 2**20, 1),
                "sockets_base": d.sockets_base,
                "sockets_after": d.sockets_pooled,
                "room_service_calls_per_request": round(d.calls_per_request, 2),
            }
            for d in phases
        ],
    }


def add_floor_figures(
    report: Report, done: FloorPhase, floors: Sequence[FloorPhase], sizes: Sequence[int]
) -> None:
    single = next((f for f in floors if f.variant == done.variant and f.rooms == min(sizes)), None)
    single_p99 = percentile(single.warm, 0.99) if single is not None and single.warm else 0.0
    largest = done.rooms == max(sizes) and done.rooms != min(sizes) and single_p99 > 0
    report.add(
        Figure(
            f"{done.label}: warm ({samples(len(done.warm), done.rooms)}), p50 / p99",
            p50_p99(done.warm),
            f"1 room p99 {ms(single_p99)}" if largest else "",
            f"{percentile(done.warm, 0.99) / single_p99:.2f}x" if largest else "",
        )
    )
    report.add(cpu_figure(f"{done.label}: CPU ms per warm request", done.measured))
    if done.missed:
        report.add(Figure(f"{done.label}: rooms not reached, all requests", str(done.missed)))


def cpu_figure(name: str, measured: Measured) -> Figure:
    """CPU per warm request of each process (group), in the order measured, and each one's
    CPU when idle (between the blocks)."""
    cpu = measured.cpu_ms
    idle = " / ".join(f"{measured.idle_ms_per_s(group):.0f}" for group in cpu)
    ticks = " / ".join(str(t) for t in measured.ticks.values())
    return Figure(
        f"{name}, {' / '.join(cpu)}",
        " / ".join(f"{v:.1f}" for v in cpu.values()),
        f"sum {sum(cpu.values()):.1f}; {ticks} ticks of {CLOCK_TICK_S * 1000:g} ms over "
        f"{measured.requests} requests; idle before, ms/s: {idle}",
    )


def add_figures(
    report: Report,
    done: Phase,
    phases: Sequence[Phase],
    floors: Sequence[FloorPhase],
    sizes: Sequence[int],
    floor_text: str,
    floor_p99: float,
) -> None:
    n, label = done.rooms, done.label
    single = next(
        (
            p
            for p in phases
            if p.mode == done.mode and p.delivery == done.delivery and p.rooms == min(sizes)
        ),
        None,
    )
    single_p99 = percentile(single.warm, 0.99) if single is not None and single.warm else 0.0
    warm_p99 = percentile(done.warm, 0.99)
    largest = n == max(sizes) and n != min(sizes) and single_p99 > 0
    # a figure only meets its target when every request reached every room
    complete = all(a["delivered_to_rooms"] == n for a in done.answers)
    delivered_cold = done.answers[0]["delivered_to_rooms"]
    report.add(
        Figure(
            f"{label}: HTTP -> response, cold ({delivered_cold}/{n} delivered)",
            ms(done.cold),
            floor_text,
            f"{done.cold / floor_p99:.1f}x",
        )
    )
    report.add(
        Figure(
            f"{label}: HTTP -> response, warm ({samples(len(done.warm), n)}), p50 / p99",
            p50_p99(done.warm),
            f"1 room p99 {ms(single_p99)}" if largest else floor_text,
            f"{warm_p99 / single_p99:.2f}x" if largest else f"{warm_p99 / floor_p99:.1f}x",
            f"p99 <= {WARM_FACTOR:g}x 1 room" if largest else "",
            complete and warm_p99 <= WARM_FACTOR * single_p99 if largest else None,
        )
    )
    # server-side deliveries make one call per room by design: the target is on the rest
    finding = done.calls_per_request - done.delivery_calls_per_request
    per_room_call = DELIVERY_CALL.get(done.delivery)
    directory = done.mode == DIRECTORY
    report.add(
        Figure(
            f"{label}: RoomService calls per request",
            f"{done.calls_per_request:.1f}"
            + (
                f" ({done.delivery_calls_per_request:.1f} {per_room_call}, logged by node A / B: "
                + " / ".join(f"{c:.1f}" for c in done.delivery_calls_per_node)
                + ")"
                if per_room_call
                else ""
            ),
            target=(
                (f"<= 1 besides {per_room_call}" if per_room_call else "no per-room call (<= 1)")
                if directory
                else ""
            ),
            met=complete and finding <= 1.0 if directory else None,
        )
    )
    growth = done.rss_pooled - done.rss_base
    report.add(
        Figure(
            f"{label}: gateway RSS idle -> pooled (per room)",
            f"{mib(done.rss_base)} -> {mib(done.rss_pooled)} ({mib(growth / n)})",
        )
    )
    report.add(
        Figure(
            f"{label}: gateway sockets idle -> pooled (per room)",
            f"{done.sockets_base} -> {done.sockets_pooled} "
            f"({(done.sockets_pooled - done.sockets_base) / n:.1f})",
        )
    )
    report.add(
        Figure(
            f"{label}: rooms reached on node A / node B, all requests",
            " / ".join(
                f"{label_}: {got}/{of}" for label_, (got, of) in done.reached_by_node.items()
            )
            + (f" ({done.moved_rooms} rooms moved node)" if done.moved_rooms else "")
            # every request is new: an answer marked duplicate is the agent answering a copy
            # LiveKit or the gateway sent again (an agent slower than 3 s to answer a
            # PerformRpc gets LiveKit's own copy; server-API resends after 2 s)
            + (f"; {done.duplicates} answered as a repeat" if done.duplicates else ""),
        )
    )
    report.add(cpu_figure(f"{label}: CPU ms per warm request", done.measured))
    per_room = done.cpu_ms[GATEWAY] / n
    report.add(
        Figure(
            f"{label}: gateway CPU per room per request",
            f"{per_room:.3f} ms",
            target=f"<= {GATEWAY_MS_PER_ROOM:g} ms",
            met=complete and per_room <= GATEWAY_MS_PER_ROOM,
        )
    )
    same_size = {f.variant: f for f in floors if f.rooms == n and f.warm}
    if same_size:
        # what the plugin and the gateway add to the bare transport at this size
        report.add(
            Figure(
                f"{label}: warm p99 over the fan-out floors' at {n} rooms",
                ", ".join(
                    f"{warm_p99 / percentile(f.warm, 0.99):.2f}x {variant}"
                    for variant, f in same_size.items()
                ),
                " / ".join(ms(percentile(f.warm, 0.99)) for f in same_size.values()),
            )
        )
        bare = same_size.get(BARE_FLOOR_OF[done.delivery])
        if bare is not None:
            ratio = warm_p99 / percentile(bare.warm, 0.99)
            report.add(
                Figure(
                    f"{label}: warm p99 over the {bare.variant} floor, rooms reached",
                    f"{ratio:.2f}x",
                    f"floor reached {bare.rooms * len(bare.warm) - bare.missed}/"
                    f"{bare.rooms * len(bare.warm)}",
                    target=f"<= {FLOOR_FACTOR:g}x, every room the floor reached",
                    met=complete and ratio <= FLOOR_FACTOR,
                )
            )
