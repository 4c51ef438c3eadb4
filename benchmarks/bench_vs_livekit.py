"""Side by side with LiveKit's own remote-control host: cost per request, same session, same run.

LiveKit Agents ships a request/answer host of its own for a running session:
``livekit.agents.voice.remote_session.SessionHost`` (protobuf ``AgentSessionMessage`` over a
``SessionTransport``). It is the closest peer of the plugin, so both are attached to the SAME
started ``AgentSession`` (scripted LLM, silent TTS, text only) and driven in the SAME run:

- **theirs**: a ``SessionHost`` over ``MemorySessionTransport``, an in-memory
  ``SessionTransport``: bytes in (``feed()``; ``__anext__`` parses them with
  ``ParseFromString``, as LiveKit's room and TCP transports do) and bytes out
  (``send_message`` serializes with ``SerializeToString``, as they do, and stops there: no
  network). Requests: ``ping`` (its cheapest), ``get_session_state`` (agent and user state,
  agent id, options) and ``get_agent_info`` (agent id, instructions, tools, chat context), its
  two state queries in this version.
- **ours**: ``ContextPlugin.ingest(payload, sender_identity=...)`` (the path room bytes take
  after ``rtc.Room``'s dispatch) with an ``AckTransport`` subclass standing where
  ``publish_data`` would be. Requests: ``get_state`` and a keyed ``add_context`` (the same key
  every time, so the context stays one entry: each one replaces it and updates the agent's chat
  context once, as a lone message does). Plugin defaults, except that the rate limiter, still
  on, never refuses (``bench_hot_path.NO_REFUSAL``).

Each request is timed alone, from just before its bytes are handed in to the moment its
answer's bytes reach the transport, then awaited before the next one goes; so every figure
includes the same event-loop hops a real request takes on either side (theirs: receive loop,
one task per request; ours: the work queue's consumer, the publisher). Building the request
bytes and checking the answer happen outside the timing. Kinds take turns in rounds of
``--round`` requests, after a warm-up of ``--warmup`` of each, so a slow moment of the machine
weighs on all of them alike. Medians and p99 (nearest rank) over ``--requests`` of each; ratios
are ours over theirs, median to median (p99 to p99 in brackets). The heap is frozen first
(``gc.collect(); gc.freeze()``) as in the other benchmarks and in LiveKit's job processes; the
cyclic GC stays on. No task factory is installed: neither side's tasks are wrapped.

For add_context the note gives the part spent inside LiveKit's ``Agent.update_chat_ctx``
(timed by the harness's ``TimedAgent``): it is in the figure, as it is in a real request.

Goal (issue 10): our cheapest request no dearer than its cheapest, ``get_state`` <= 1x ``ping``
(medians). Reported met or not, never failed: timings depend on the machine. Correctness is
checked: every request answered exactly once, with a success under its own id.

Run: ``python benchmarks/bench_vs_livekit.py [--requests N] [--warmup N] [--round N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from _harness import (
    BACKEND,
    ROOM_NAME,
    CallTimer,
    Figure,
    OfflineRoom,
    Report,
    TimedSession,
    freeze_imports,
    median,
    percentile,
    start_timed_session,
)
from bench_hot_path import NO_REFUSAL
from livekit import rtc
from livekit.agents.voice.remote_session import SessionHost, SessionTransport
from livekit.protocol.agent_pb import agent_session as agent_pb

from imaginex_context_plugin import AckTransport, ContextPlugin

THEIRS = ("ping", "get_session_state", "get_agent_info")
OURS = ("get_state", "add_context")
KINDS = THEIRS + OURS
TARGET_RATIO = 1.0  # get_state <= 1x ping
CONTEXT_KEY = "customer"


class _Answers:
    """Where one side's answer bytes land: when the last came, what it was, how many."""

    def __init__(self) -> None:
        self.at = 0.0
        self.payload = b""
        self.count = 0
        self.other = 0  # messages that are not answers (session events), not timed
        self._waiter: asyncio.Future[None] | None = None

    def arm(self) -> asyncio.Future[None]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def answered(self, payload: bytes, at: float) -> None:
        self.at = at
        self.payload = payload
        self.count += 1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MemorySessionTransport(SessionTransport):
    """LiveKit's ``SessionTransport`` in memory: protobuf bytes in, protobuf bytes out."""

    def __init__(self) -> None:
        self.answers = _Answers()
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def feed(self, data: bytes) -> None:
        self._inbox.put_nowait(data)

    async def start(self) -> None:
        pass

    async def send_message(self, msg: agent_pb.AgentSessionMessage) -> None:
        data = msg.SerializeToString()
        at = time.perf_counter()
        if msg.HasField("response"):
            self.answers.answered(data, at)
        else:
            self.answers.other += 1

    async def close(self) -> None:
        self._inbox.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[agent_pb.AgentSessionMessage]:
        return self

    async def __anext__(self) -> agent_pb.AgentSessionMessage:
        data = await self._inbox.get()
        if data is None:
            raise StopAsyncIteration
        msg = agent_pb.AgentSessionMessage()
        msg.ParseFromString(data)
        return msg


class AnswerSink(AckTransport):
    """Stands where ``publish_data`` would be: takes the answer bytes, notes when they came."""

    # started inline like the built-in room transport it stands for (nothing here needs a task)
    start_inline = True

    def __init__(self, room: rtc.Room) -> None:
        super().__init__(room)
        self.answers = _Answers()

    async def send(self, payload: bytes, destination_identity: str) -> None:
        at = time.perf_counter()
        if payload.startswith(b'{"type":"ack"'):
            self.answers.answered(payload, at)
        else:
            self.answers.other += 1


# --------------------------------------------------------------------------- requests


def their_request(kind: str, n: int) -> bytes:
    """One ``AgentSessionMessage`` carrying a ``SessionRequest`` of ``kind``, as bytes."""
    request = agent_pb.SessionRequest(request_id=f"req_{n}")
    getattr(request, kind).SetInParent()  # the empty request message selects the oneof
    return agent_pb.AgentSessionMessage(request=request).SerializeToString()


def our_request(kind: str, n: int) -> bytes:
    if kind == "get_state":
        return json.dumps({"type": "get_state", "id": f"s{n}"}).encode()
    return json.dumps(
        {
            "type": "add_context",
            "id": f"c{n}",
            "key": CONTEXT_KEY,
            "context": f"Customer note {n}: prefers email, premium member since 2021, order #{n}.",
        }
    ).encode()


def their_answer_ok(payload: bytes, kind: str, n: int) -> bool:
    msg = agent_pb.AgentSessionMessage()
    msg.ParseFromString(payload)
    response = msg.response
    return (
        response.request_id == f"req_{n}"
        and not response.error
        and response.WhichOneof("response") == ("pong" if kind == "ping" else kind)
    )


def our_answer_ok(payload: bytes, kind: str, n: int) -> bool:
    rid = f"s{n}" if kind == "get_state" else f"c{n}"
    return payload.startswith(b'{"type":"ack","id":"%s","success":true,' % rid.encode())


# --------------------------------------------------------------------------- the rig


@dataclass
class Side:
    """How to hand one kind of request in, and where its answer lands."""

    push: Callable[[bytes], None]
    answers: _Answers
    make: Callable[[str, int], bytes]
    check: Callable[[bytes, str, int], bool]


@dataclass
class PeerRig:
    session: TimedSession
    timer: CallTimer
    host: SessionHost
    transport: MemorySessionTransport
    plugin: ContextPlugin
    sink: AnswerSink

    def side(self, kind: str) -> Side:
        if kind in THEIRS:
            return Side(self.transport.feed, self.transport.answers, their_request, their_answer_ok)

        def ingest(payload: bytes) -> None:
            self.plugin.ingest(payload, sender_identity=BACKEND)

        return Side(ingest, self.sink.answers, our_request, our_answer_ok)

    async def aclose(self) -> None:
        await self.plugin.aclose()
        await self.host.aclose()
        await self.session.aclose()


async def make_peer_rig() -> PeerRig:
    """One started text-only session with both LiveKit's host and the plugin attached to it."""
    freeze_imports()
    room = OfflineRoom(ROOM_NAME)
    timer = CallTimer()
    session, _ = await start_timed_session(timer)
    session.keep_handles = False

    transport = MemorySessionTransport()
    host = SessionHost(transport)
    host.register_session(session)
    await host.start()

    sink = AnswerSink(room)
    plugin = ContextPlugin(
        agent_code="A12345678",
        allowed_identities=[BACKEND],
        ack_transport=sink,
        rate_limit=NO_REFUSAL,
        trust_server=False,  # no server API here
    )
    await plugin.start(session, room)
    await asyncio.sleep(0.01)  # the plugin's start-up tasks, off the measurements
    return PeerRig(session, timer, host, transport, plugin, sink)


# --------------------------------------------------------------------------- measuring


@dataclass
class Samples:
    seconds: list[float]
    livekit: list[float]  # inside Agent.update_chat_ctx (add_context only)
    answered_ok: int = 0
    sent: int = 0

    @property
    def p50(self) -> float:
        return median(self.seconds)

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 0.99)


async def _one(rig: PeerRig, side: Side, kind: str, n: int, samples: Samples | None) -> bool:
    payload = side.make(kind, n)
    answered = side.answers.arm()
    rig.timer.reset()
    t0 = time.perf_counter()
    side.push(payload)
    await answered  # no timer per request: the round has one (asyncio.timeout)
    elapsed = side.answers.at - t0
    ok = side.check(side.answers.payload, kind, n)
    if samples is not None:
        samples.seconds.append(elapsed)
        samples.livekit.append(rig.timer.seconds.get("update_chat_ctx", 0.0))
    return ok


async def measure(
    *, requests: int, warmup: int, round_size: int
) -> tuple[dict[str, Samples], bool]:
    """Per-request seconds of every kind, taking turns in rounds; and whether all were answered."""
    rig = await make_peer_rig()
    samples = {kind: Samples([], []) for kind in KINDS}
    sides = {kind: rig.side(kind) for kind in KINDS}
    sent = dict.fromkeys(KINDS, 0)
    ok = True
    try:
        for phase_total, timed in ((warmup, False), (requests, True)):
            done = 0
            while done < phase_total:
                size = min(round_size, phase_total - done)
                for kind in KINDS:
                    record = samples[kind] if timed else None
                    async with asyncio.timeout(30.0):
                        for _ in range(size):
                            good = await _one(rig, sides[kind], kind, sent[kind], record)
                            sent[kind] += 1
                            ok &= good
                            if record is not None:
                                record.sent += 1
                                record.answered_ok += good
                done += size
        # every answer counted exactly once, none missing, nothing refused
        ok &= rig.transport.answers.count == sum(sent[k] for k in THEIRS)
        ok &= rig.sink.answers.count == sum(sent[k] for k in OURS)
        ok &= rig.plugin.stats.errors == {}
        ok &= len(rig.plugin.context_store) == 1  # the keyed entry, replaced each time
    finally:
        await rig.aclose()
    return samples, ok


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def _p50_p99(s: Samples) -> str:
    return f"{_us(s.p50)} / {_us(s.p99)} us"


def _ratio(ours: Samples, theirs: Samples) -> str:
    return f"{ours.p50 / theirs.p50:.2f}x (p99 {ours.p99 / theirs.p99:.2f}x)"


async def run(*, requests: int = 10_000, warmup: int = 1_000, round_size: int = 100) -> Report:
    report = Report("vs LiveKit's SessionHost: bytes in -> answer bytes out, per request")
    samples, ok = await measure(requests=requests, warmup=warmup, round_size=round_size)
    report.ok = ok
    ping = samples["ping"]
    for kind in THEIRS:
        report.add(Figure(f"LiveKit {kind}, p50 / p99", "", _p50_p99(samples[kind])))
    state_queries = ("get_session_state", "get_agent_info")
    for kind in OURS:
        ours = samples[kind]
        label = "keyed add_context" if kind == "add_context" else kind
        gated = kind == "get_state"
        report.add(
            Figure(
                f"{label} vs its ping, p50 / p99",
                _p50_p99(ours),
                f"ping {_p50_p99(ping)}",
                _ratio(ours, ping),
                f"<= {TARGET_RATIO:.0f}x" if gated else "",
                ours.p50 <= TARGET_RATIO * ping.p50 if gated else None,
            )
        )
        for query in state_queries:
            report.add(
                Figure(
                    f"{label} vs its {query}",
                    f"{_us(ours.p50)} us",
                    f"{query} {_us(samples[query].p50)} us",
                    _ratio(ours, samples[query]),
                )
            )
    add = samples["add_context"]
    inside = median(add.livekit)
    report.notes.append(
        f"{requests:,} timed requests of each kind (after {warmup:,} each), in rounds of "
        f"{round_size}; answered with a success under their own id: "
        + ", ".join(f"{k} {samples[k].answered_ok:,}/{samples[k].sent:,}" for k in KINDS)
    )
    report.notes.append(
        f"keyed add_context: of its median {_us(add.p50)} us, {_us(inside)} us is inside "
        f"LiveKit's Agent.update_chat_ctx; the rest, {_us(add.p50 - inside)} us, is the "
        f"plugin's own ({(add.p50 - inside) / ping.p50:.2f}x its ping)"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="timed, of each kind")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed, of each kind")
    parser.add_argument("--round", type=int, default=100, help="requests of a kind in a row")
    args = parser.parse_args()
    report = asyncio.run(run(requests=args.requests, warmup=args.warmup, round_size=args.round))
    report.print()
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
