"""Every benchmark runs at a tiny size, so that none of them rots.

Nothing here asserts a timing: only what the benchmarks check for correctness (every message
acked exactly once, the context within its budget, ...), which holds on any machine. The
figures themselves come from ``python benchmarks/run_all.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _harness  # noqa: E402
import bench_context_growth  # noqa: E402
import bench_flood_memory  # noqa: E402
import bench_hot_path  # noqa: E402
import bench_latency  # noqa: E402
import bench_subscribers  # noqa: E402
import bench_v13_cost  # noqa: E402
import bench_vs_livekit  # noqa: E402
import run_all  # noqa: E402

from imaginex_context_plugin import ErrorAck, ErrorCode, SuccessAck, protocol  # noqa: E402
from imaginex_context_plugin.errors import ProtocolError  # noqa: E402
from imaginex_context_plugin.protocol import (  # noqa: E402
    AckData,
    AgentStateInfo,
    ContextEntryInfo,
    SpeechFinishedEvent,
    SpeechStartedEvent,
)


@pytest.fixture(autouse=True)
def _no_heap_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    # the benchmarks freeze the heap as LiveKit's job processes do; not in pytest's process
    monkeypatch.setattr(_harness, "FREEZE_IMPORTS", False)


def _figures(report: _harness.Report) -> dict[str, _harness.Figure]:
    return {figure.name: figure for figure in report.figures}


async def test_hot_path_acks_every_message() -> None:
    for make_payload, kind in (
        (_harness.context_payload, "add_context"),
        (_harness.speak_payload, "speak"),
    ):
        for burst in (10, 1):
            hot = await bench_hot_path.measure(kind, make_payload, 30, burst)
            assert hot.ok, (kind, burst)
            assert hot.floor > 0
            assert hot.total > 0


async def test_hot_path_report_has_every_case() -> None:
    report = await bench_hot_path.run(messages=40, burst=10, single=10)
    assert report.ok
    names = _figures(report)
    for kind in ("add_context", "speak"):
        for label in ("burst of 10", "one at a time"):
            assert f"{kind}, {label}: plugin only" in names
            assert f"{kind}, {label}: total" in names
    # only add_context carries the 3x target
    assert names["add_context, burst of 10: plugin only"].target
    assert names["speak, burst of 10: plugin only"].met is None


async def test_latency_sees_say_for_every_probe() -> None:
    report = await bench_latency.run(probes=10, rate=200.0)
    assert report.ok  # every probe reached say(), every message acked exactly once
    assert any("idle" in name for name in _figures(report))


async def test_context_growth_stays_within_the_budget() -> None:
    report = await bench_context_growth.run(messages=150, window=50)
    assert report.ok
    size = _figures(report)["chat context at the end (items, chars)"]
    assert size.met  # the plugin holds no more than its budget, whatever was sent
    assert "naive 152 items" in size.baseline  # the naive context kept every message


def test_flood_mix_expectations_add_up() -> None:
    per_id, unnumbered, repeats = bench_flood_memory.expected_acks(1_000)
    assert sum(per_id) + unnumbered == 1_000
    assert repeats == 100
    assert per_id[0] == 2  # message 7 repeats message 0
    assert per_id[6] == 0  # not JSON: answered with a null id
    assert per_id[7] == 0  # a repeat: answered under id 0
    assert bench_flood_memory.payload(99) == bench_flood_memory._OVERSIZE


async def test_flood_acks_every_message_exactly_once() -> None:
    report = await bench_flood_memory.run(messages=1_000, states=120)
    assert report.ok
    acked = [f for f in report.figures if f.name.endswith(": acked")]
    assert [f.value for f in acked] == ["1,000 of 1,000", "1,000 of 1,000", "120 of 120"]


async def test_vs_livekit_answers_every_request_of_both_hosts() -> None:
    report = await bench_vs_livekit.run(requests=20, warmup=4, round_size=10)
    assert report.ok  # every request of both sides answered once, a success under its own id
    names = _figures(report)
    for kind in ("ping", "get_session_state", "get_agent_info"):
        assert names[f"LiveKit {kind}, p50 / p99"].baseline.endswith(" us")
    gated = names["get_state vs its ping, p50 / p99"]
    assert gated.target
    assert gated.met is not None  # reported either way, never failed
    assert "keyed add_context vs its ping, p50 / p99" in names
    assert "20/20" in report.notes[0]


async def test_subscribers_keep_the_healthy_ones_whole_and_drop_for_the_stalled_one() -> None:
    report = await bench_subscribers.run(events=600, rate=2_000.0)
    assert report.ok
    names = {f.name: f for f in report.figures}
    assert names["loop lag p99"].baseline.endswith("(no subscribers)")
    assert names["aclose with a stalled subscriber"].met is not None
    assert "600 events" in report.notes[0]


def test_v13_cost_compares_with_the_pre_v13_receiver() -> None:
    report = bench_v13_cost.run_sync(rounds=1, messages=40, burst=10)
    assert report.ok  # every message acked exactly once, in every variant
    names = {f.name: f for f in report.figures}
    assert "used-context detection, per model request (64 entries)" in names
    if report.notes[0].startswith("baseline skipped"):  # a shallow clone: no pre-v1.3 tree
        return
    for sender in ("v1.2", "v1.3"):
        gated = names[f"add_context burst of 10, v1.3, {sender} sender: plugin only"]
        assert gated.baseline.startswith("today ")
        assert gated.met is not None
    # what a v1.3 sender costs beyond a v1.2 one, split into its field and its extra packet
    named = names["add_context burst of 10, v1.3, sender naming protocol 1.2: plugin only"]
    assert named.met is None  # not gated: it only splits the v1.3 sender's figure
    assert "  of which the protocol field (named 1.2 - v1.2)" in names
    assert "  of which the context_dropped packet (v1.3 - named 1.2)" in names


async def test_run_all_quick_sizes_run() -> None:
    sizes = {
        "hot path": {"messages": 20, "burst": 10, "single": 5},
        "latency": {"probes": 5, "rate": 100.0},
        "context growth": {"messages": 80, "window": 20},
        "flood memory": {"messages": 200, "states": 20},
        "vs livekit": {"requests": 10, "warmup": 2, "round_size": 5},
        "subscribers": {"events": 300},
        "v1.3 cost": {"rounds": 1, "messages": 40, "burst": 10},
        "gateway http": {"requests": 20, "rounds": 2},
        "gateway rooms": {"requests": 4, "rounds": 2, "spread_ms": 2.0},
    }
    # the live benchmarks need a LiveKit server: tests/integration/test_live_bench_smoke.py
    # (and the directory's and the avatar's own smoke tests), and a two-node cluster:
    # tests/integration/test_fanout_bench_smoke.py
    results = await run_all.run_all(sizes)
    assert [name for name, _, _ in results] == [n for n in run_all.RUNNERS if n in sizes]
    assert set(run_all.RUNNERS) - set(sizes) == {"live", "avatar", "directory", "fanout"}
    assert all(report.ok for _, report, _ in results)
    run_all.print_summary(results)


# ---------------------------------------------------------------------------------------------
# the hot path's own encodings, which the benchmarks made faster: same bytes as pydantic's

TS = "2026-01-15T10:30:00.000Z"


@pytest.mark.parametrize(
    "message",
    [
        SuccessAck(
            id=None,
            message="Speech triggered successfully",
            data=AckData(
                agent_code=None, context_type="speak", room_id="r", timestamp=TS, speech_id="s"
            ),
        ),
        SuccessAck(
            id="r1",
            message="Context added successfully",
            data=AckData(
                agent_code="A1", context_type="add_context", room_id="r", timestamp=TS, evicted=2
            ),
        ).model_copy(update={"duplicate": True}),
        SuccessAck(
            id="s1",
            message="State retrieved successfully",
            data=AckData(
                agent_code="A1",
                context_type="get_state",
                room_id="r",
                timestamp=TS,
                state=AgentStateInfo(
                    agent_state="speaking",
                    user_state="listening",
                    current_agent=None,
                    context_entries=[
                        ContextEntryInfo(
                            entry_id="imaginex_ctx_1",
                            key="k\u00e9",
                            role="system",
                            chars=3,
                            scope="next_turn",
                            expires_in_s=0.125,
                            request_id=None,
                        )
                    ],
                    context_chars=3,
                    pending_speeches=["a", "b"],
                ),
            ),
        ),
        ErrorAck(id="e1", error=ErrorCode.RATE_LIMITED, message='a "b"\n\u2028', retry_after=0.1),
        ErrorAck(id=None, error=ErrorCode.VALIDATION_ERROR, message="Message is not valid JSON."),
        SpeechStartedEvent(id=None, speech_id="s", timestamp=TS),
        SpeechFinishedEvent(id="r", speech_id="s", interrupted=True, played_s=1e-7, timestamp=TS),
        SpeechFinishedEvent(id="r", speech_id="s", interrupted=False, timestamp=TS),
    ],
)
def test_encode_message_is_byte_identical_to_pydantic(message: protocol.ServerMessage) -> None:
    assert protocol.encode_message(message) == message.model_dump_json().encode()
    assert protocol.parse_server_message(protocol.encode_message(message)) == message


def test_timestamps_change_with_the_millisecond() -> None:
    first = protocol.utc_timestamp()
    assert protocol.utc_timestamp() >= first
    assert first.endswith("Z")
    assert (first[10], first[19]) == ("T", ".")


_FIELDS = [
    "type",
    "id",
    "message",
    "context",
    "instructions",
    "allow_interruptions",
    "interrupt",
    "mode",
    "role",
    "key",
    "trigger_reply",
    "scope",
    "ttl_s",
    "room_id",
    "agent_code",
    "x",
]
_VALUES = st.one_of(
    st.sampled_from(["speak", "add_context", "remove_context", "get_state", "queue", "system"]),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3),
)
_REQUESTS = st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=8)


def _json_variants(obj: dict[str, object]) -> list[bytes]:
    compact = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
    return [
        compact,
        json.dumps(obj).encode(),
        compact[:-1],
        compact + b"x",
        b"\xef\xbb\xbf" + compact,
    ]


def _both_ways(raw: bytes) -> None:
    # the one-pass read must accept exactly what the general path (json.loads, then the model)
    # accepts, as the same request, and refuse the rest with the same sentence
    try:
        general = protocol.parse_request(raw)
    except ProtocolError as exc:
        refusal = (exc.code, exc.message)
    else:
        assert protocol.read_packet(raw) == general
        return
    with pytest.raises(ProtocolError) as refused:
        protocol.read_packet(raw)
    assert (refused.value.code, refused.value.message) == refusal


@given(obj=_REQUESTS)
@settings(max_examples=400, deadline=None)
def test_one_pass_read_matches_the_general_path(obj: dict[str, object]) -> None:
    for raw in _json_variants(obj):
        _both_ways(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"speak","message":"a\xff"}',
        b'{"type":"speak","message":"\\ud800"}',
        b'{"type":"speak","message":"a\nb"}',
        b'{"type":"speak","message":"a","x":' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"type":"add_context","context":"x","ttl_s":NaN}',
        b'{"type":"add_context","context":"x","ttl_s":1e999}',
        b'{"type":"speak","message":"a","message":"b"}',
        b'{"type":"speak","type":"get_state","message":"a"}',
        b'{"type":"speak","message":"a","x":NaN}',
        b'{"type":"speak","message":"a","x":123456789012345678901234567890}',
    ],
)
def test_one_pass_read_on_edge_inputs(raw: bytes) -> None:
    _both_ways(raw)


async def test_an_envelope_without_its_type_is_refused_and_says_nothing() -> None:
    body = json.dumps({"type": "speak", "message": "hi"})
    raw = json.dumps({"body": body, "timestamp": 1, "signature": "00"}).encode()
    rig = await _harness.make_rig(capacity=1)
    try:
        rig.transport.keep = []
        rig.deliver(rig.packet(raw))
        await rig.transport.wait_for(1, timeout=10.0)
        ack = protocol.parse_ack(rig.transport.keep[0])
        assert isinstance(ack, ErrorAck)
        assert ack.error is ErrorCode.VALIDATION_ERROR
        assert rig.session.handles == []  # nothing was said
    finally:
        await rig.aclose()
