"""``benchmarks/capacity_model.py``: the arithmetic of the fan-out capacity model, its fit and its
check against a run's figures, on hand-made points whose answers are worked out here; and that
the docs hold the tables the script prints and the run the model was fitted on."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import capacity_model as cm  # noqa: E402
from fanout.settings import ROOM  # noqa: E402

MODEL = cm.Model(
    gateway_per_request=2.0,
    gateway_per_room=0.5,
    livekit_per_request=1.0,
    livekit_per_room=1.5,
    agents_per_room=4.0,
    livekit_idle_per_agent=0.4,
    agent_idle_per_agent=1.0,
)


def _groups(gateway: float, livekit: float, agents: float) -> dict[str, float]:
    """Per process group, as the run measures them: LiveKit's share split between its nodes."""
    nodes = cm.NODE_LABELS
    return {cm.GATEWAY: gateway, **dict.fromkeys(nodes, livekit / len(nodes)), cm.AGENTS: agents}


def _run(
    points: dict[int, dict[str, float]], idle: dict[str, float] | None = None
) -> dict[str, Any]:
    """A run's JSON as ``bench_fanout.py --json`` writes it, with the phases the model reads
    and one it must ignore (another delivery)."""
    phases: list[dict[str, Any]] = [
        {
            "rooms": rooms,
            "mode": cm.MODE,
            "delivery": cm.DELIVERY,
            "cpu_ms": _groups(cpu["gateway"], cpu["livekit"], cpu["agents"]),
            "idle_ms_per_s": idle or _groups(0.0, 0.0, 0.0),
        }
        for rooms, cpu in points.items()
    ]
    phases.append(
        {
            "rooms": 1, "mode": cm.MODE, "delivery": ROOM,
            "cpu_ms": _groups(999.0, 0.0, 0.0),
        }
    )
    return {"phases": phases}


def test_cpu_per_request_is_a_line_in_the_rooms_reached() -> None:
    assert MODEL.cpu_ms(1) == {"gateway": 2.5, "livekit": 2.5, "agents": 4.0}
    assert MODEL.cpu_ms(200) == {"gateway": 102.0, "livekit": 301.0, "agents": 800.0}


def test_sizing_10000_calls_one_message_each_every_10_s_to_one_room() -> None:
    sized = cm.size(MODEL, cm.Deployment(calls=10_000, rate=0.1, rooms=1, cores=2, busy=0.5))
    assert sized.requests_per_s == 1_000
    # per second: 1,000 requests x 2.5 ms = 2.5 core-s; LiveKit adds 10,000 idle agents x 0.4 ms
    assert sized.cores == pytest.approx({"gateway": 2.5, "livekit": 6.5, "agents": 14.0})
    # a 2-core machine kept at 50 % gives one core
    assert sized.machines == {"gateway": 3, "livekit": 7, "agents": 14}
    # calls one core carries kept at 50 % busy
    assert sized.calls_per_core == pytest.approx(
        {"gateway": 5_000 / 2.5, "livekit": 5_000 / 6.5, "agents": 5_000 / 14.0}
    )


def test_a_fan_out_shares_the_per_request_cost_between_its_rooms() -> None:
    sized = cm.size(MODEL, cm.Deployment(calls=10_000, rate=0.1, rooms=200))
    assert sized.requests_per_s == 5  # the same 1,000 room deliveries a second, 200 at a time
    assert sized.cores["gateway"] == pytest.approx(5 * 102.0 / 1000)
    assert sized.cores["livekit"] == pytest.approx((5 * 301.0 + 10_000 * 0.4) / 1000)
    assert sized.machines["gateway"] == 1  # never less than one machine


def test_no_calls_need_one_machine_of_each_and_no_core() -> None:
    sized = cm.size(MODEL, cm.Deployment(calls=0))
    assert sized.machines == {"gateway": 1, "livekit": 1, "agents": 1}
    assert all(math.isinf(v) for v in sized.calls_per_core.values())


def test_fitting_exact_points_gives_the_model_back() -> None:
    idle = _groups(0.0, livekit=0.4 * 200, agents=1.0 * 200)
    run = _run({n: MODEL.cpu_ms(n) for n in (1, 50, 200)}, idle)
    fitted = cm.fit(cm.points(run))
    assert fitted == MODEL


def test_fitting_never_gives_a_negative_constant() -> None:
    # CPU falling with the rooms (noise) fits a flat line, not a negative slope
    run = _run({1: {"gateway": 5.0, "livekit": 1.0, "agents": 4.0},
                50: {"gateway": 4.0, "livekit": 1.0, "agents": 200.0}})
    fitted = cm.fit(cm.points(run))
    assert fitted.gateway_per_room == 0.0
    assert 4.0 < fitted.gateway_per_request < 5.0
    with pytest.raises(ValueError, match="two sizes"):
        cm.fit(cm.points(_run({50: MODEL.cpu_ms(50)})))


def test_the_check_holds_within_its_tolerance_and_names_each_miss() -> None:
    relative, absolute = cm.TOLERANCE
    at_50 = MODEL.cpu_ms(50)  # gateway 27, livekit 76, agents 200
    inside = {k: v * (1 + relative * 0.99) for k, v in at_50.items()}
    assert cm.check(MODEL, cm.points(_run({50: inside}))) == []
    # a small figure is judged by the absolute margin, not the relative one
    small = {"gateway": 2.5 + absolute * 0.99, "livekit": 2.5, "agents": 4.0}
    assert cm.check(MODEL, cm.points(_run({1: small}))) == []
    # relative to what was measured: 200 predicted misses a measured value above 200 / 0.7
    outside = {**at_50, "agents": 200 / (1 - relative) * 1.01}
    (miss,) = cm.check(MODEL, cm.points(_run({50: outside})))
    assert miss.startswith("50 rooms, agents: measured 288.6 ms per request, the model says 200.0")
    (nothing,) = cm.check(MODEL, [])
    assert nothing == f"the run has no {cm.DELIVERY} / {cm.MODE} phase to check the model against"


def test_the_command_exits_1_when_the_model_misses(tmp_path: Path) -> None:
    far = tmp_path / "far.json"
    far.write_text(json.dumps(_run({50: {"gateway": 1e6, "livekit": 1.0, "agents": 1.0}})))
    assert cm.main([str(far)]) == 1


def test_the_docs_hold_the_tables_and_the_model_holds_on_the_committed_run() -> None:
    docs = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert cm.markdown() in docs
    measured = cm.points(json.loads(cm.RESULTS.read_text(encoding="utf-8")))
    assert {p.rooms for p in measured} == {1, 50, 200}
    assert cm.check(cm.MODEL, measured) == []
