"""Shared pieces of the benchmarks: a real session and room, timed LiveKit calls, acks counted.

Everything the plugin touches is real: ``AgentSession`` (with the fake LLM/TTS of the public
test kit ``imaginex_context_plugin.testing``, text output), an ``rtc.Room`` (``OfflineRoom``: never
connected, no server) whose ``data_received`` event is emitted with real ``rtc.DataPacket``
objects from real ``rtc.RemoteParticipant`` senders. Timing is added only from outside:

- ``TimedSession.say()`` and ``TimedAgent.update_chat_ctx()`` (thin subclasses) add the time
  spent inside LiveKit's own call to a ``CallTimer``;
- ``TaskClock`` (the loop's task factory) times every step of the tasks that are not the
  plugin's, i.e. LiveKit's own work (speech playout) that runs while a message is in flight;
- ``DispatchClock`` times ``rtc.Room.emit`` itself on a second room with a do-nothing listener;
- ``CountingTransport`` stands where ``publish_data`` would be: it receives the ack bytes,
  records when the last one came, and counts acks by request number;
- ``GcWatch`` counts the cyclic GC's collections and their longest pauses.

So a benchmark can report the plugin's own cost: the wall time minus all of the above.

Request ids are ``"<prefix><n>"``: the transport reads ``n`` back from the ack bytes without a
JSON parse (the id is the first string after ``"id":``), so counting costs the hot path nothing
and needs no memory that grows with the number of messages.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from livekit import rtc  # noqa: E402
from livekit.agents import Agent, AgentSession, llm  # noqa: E402

# private, and only here: see remote_participant()
from livekit.rtc._proto import handle_pb2, participant_pb2  # noqa: E402

from imaginex_context_plugin import CONTEXT_TOPIC, AckTransport, ContextPlugin  # noqa: E402
from imaginex_context_plugin.testing import OfflineRoom, RecordingTTS, ScriptedLLM  # noqa: E402

ROOM_NAME = "bench-room"
AGENT_IDENTITY = "agent"
BACKEND = "backend"

FREEZE_IMPORTS = True
"""Whether ``make_rig`` freezes the heap first (the smoke tests turn it off: pytest's process)."""


def freeze_imports() -> None:
    """Move everything alive now out of the cyclic GC's reach, as LiveKit's job processes do.

    A LiveKit worker preloads its modules in the forkserver and runs ``gc.collect();
    gc.freeze()`` there (``livekit/agents/ipc/_preload_freeze.py``), so a job's full collections
    scan only what the job itself created. Without this, a full collection here would walk the
    whole import graph (about 70 ms on a slow core), a pause no agent in production sees.
    """
    if not FREEZE_IMPORTS:
        return
    gc.collect()
    gc.freeze()


class GcWatch:
    """Counts the cyclic GC's collections while installed, and the longest pause per generation."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.longest[generation] = max(
            self.longest[generation], time.perf_counter() - self._started
        )

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


# --------------------------------------------------------------------------- timing LiveKit


@dataclass
class CallTimer:
    """Seconds spent inside LiveKit's own calls, by name."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, elapsed: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.calls[name] = self.calls.get(name, 0) + 1

    def total(self) -> float:
        return sum(self.seconds.values())

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class TimedAgent(Agent):
    """The real ``Agent``; ``update_chat_ctx`` is timed (it does not suspend without realtime)."""

    def __init__(self, timer: CallTimer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timer = timer

    async def update_chat_ctx(
        self, chat_ctx: llm.ChatContext, *, exclude_invalid_function_calls: bool = True
    ) -> None:
        t0 = time.perf_counter()
        try:
            await super().update_chat_ctx(
                chat_ctx, exclude_invalid_function_calls=exclude_invalid_function_calls
            )
        finally:
            self.timer.add("update_chat_ctx", time.perf_counter() - t0)


class TimedSession(AgentSession[Any]):
    """The real ``AgentSession``; ``say`` is timed and can report when it was called."""

    def __init__(self, timer: CallTimer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timer = timer
        self.handles: list[Any] = []
        self.keep_handles = True
        self.on_say: Callable[[str], None] | None = None

    def say(self, text: Any, **kwargs: Any) -> Any:
        called_at = time.perf_counter()
        if self.on_say is not None:
            self.on_say(text)
        handle = super().say(text, **kwargs)
        self.timer.add("say", time.perf_counter() - called_at)
        if self.keep_handles:
            self.handles.append(handle)
        return handle

    async def wait_speeches(self) -> None:
        """Wait until every speech said so far has played out, then forget them."""
        handles, self.handles = self.handles, []
        for handle in handles:
            await handle


class TaskClock:
    """Seconds the event loop spent running tasks that are not the plugin's (LiveKit's own).

    Installed as the loop's task factory: each task whose coroutine is not the plugin's is wrapped
    so that every step it takes is timed. The plugin's tasks and the benchmark's main task are
    left alone. The proxy's own bookkeeping (well under a microsecond a step) is not subtracted,
    so it counts against the plugin.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            owner = getattr(coro, "__qualname__", "")
            if not owner.startswith("ContextPlugin."):
                coro = _TimedCoroutine(coro, self)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)  # type: ignore[arg-type]


class _TimedCoroutine(Coroutine[Any, Any, Any]):
    __slots__ = ("_clock", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, Any], clock: TaskClock) -> None:
        self._coro = coro
        self._clock = clock

    def send(self, value: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._coro.send(value)
        finally:
            self._clock.seconds += time.perf_counter() - t0

    def throw(self, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._coro.throw(*args)
        finally:
            self._clock.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> _TimedCoroutine:
        return self


# --------------------------------------------------------------------------- acks


_ACK_START = b'{"type":"ack",'


def id_number(payload: bytes, prefix: bytes) -> int | None:
    """The ``n`` of an ack's ``"id":"<prefix><n>"``, or None (no id, or another prefix)."""
    start = payload.find(b'"id":"')
    if start < 0:
        return None
    start += 6
    if not payload.startswith(prefix, start):
        return None
    start += len(prefix)
    end = payload.find(b'"', start)
    return int(payload[start:end])


class CountingTransport(AckTransport):
    """Stands in for ``publish_data``: counts the ack bytes it is handed, by request number.

    ``acked[n]`` counts the acks for request ``n`` (preallocated: counting allocates nothing);
    speech events (``speech_started`` / ``speech_finished``) are counted apart in ``events``.
    ``wait_for(total)`` returns once ``total`` acks have arrived in all.
    """

    # started inline like the built-in room transport it stands for (nothing here needs a task)
    start_inline = True

    def __init__(self, room: rtc.Room, *, capacity: int, prefix: str = "m") -> None:
        super().__init__(room)
        self.prefix = prefix.encode()
        self.acked = bytearray(capacity)
        self.received = 0
        self.unnumbered = 0  # acks without an id of ours (null id: the request was unreadable)
        self.events = 0
        self.seconds = 0.0
        self.last_at = 0.0
        self.task_clock: TaskClock | None = None
        self.tasks_at_last = 0.0  # task_clock.seconds when the last ack arrived
        self.keep: list[bytes] | None = None
        self._target = 0
        self._reached: asyncio.Future[None] | None = None

    async def send(self, payload: bytes, destination_identity: str) -> None:
        t0 = time.perf_counter()
        if self.keep is not None:
            self.keep.append(payload)
        if not payload.startswith(_ACK_START):
            self.events += 1
            self.seconds += time.perf_counter() - t0
            return
        n = id_number(payload, self.prefix)
        if n is None or n >= len(self.acked):
            self.unnumbered += 1
        elif self.acked[n] < 255:
            self.acked[n] += 1
        self.received += 1
        if self.received >= self._target and self._reached is not None:
            if not self._reached.done():
                self._reached.set_result(None)
            self._reached = None
        if self.task_clock is not None:
            self.tasks_at_last = self.task_clock.seconds
        self.last_at = t1 = time.perf_counter()
        self.seconds += t1 - t0

    async def wait_for(self, total: int, timeout: float = 60.0) -> None:
        """Return once ``total`` acks have arrived in all; TimeoutError after ``timeout``."""
        if self.received >= total:
            return
        # a bare future and a timer: no task per wait, so the benchmark adds little to the loop
        loop = asyncio.get_running_loop()
        self._target = total
        self._reached = reached = loop.create_future()
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            reached.cancel()

        timer = loop.call_later(timeout, expire)
        try:
            await reached
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError(f"{self.received} of {total} acks arrived") from None
            raise
        finally:
            timer.cancel()

    def acked_once(self, numbers: Iterable[int]) -> int:
        """How many of the given request numbers got exactly one answer."""
        return sum(1 for n in numbers if self.acked[n] == 1)


# --------------------------------------------------------------------------- the rig


def remote_participant(identity: str) -> rtc.RemoteParticipant:
    """A real ``rtc.RemoteParticipant``, as the SDK hands it to ``data_received``.

    The SDK builds these only from a server's announcement, so there is no public constructor:
    this uses its protobuf (``livekit.rtc._proto``), the one private module the benchmarks touch,
    so that packets reach the plugin through ``rtc.Room.emit`` exactly as from a server. Handle
    id 0 is the SDK's INVALID_HANDLE: disposing it (also at garbage collection) never reaches
    the native side.
    """
    info = participant_pb2.ParticipantInfo(
        identity=identity, kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    )
    owned = participant_pb2.OwnedParticipant(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)
    return rtc.RemoteParticipant(owned)


@dataclass
class Rig:
    room: OfflineRoom
    session: TimedSession
    agent: TimedAgent
    plugin: ContextPlugin
    transport: CountingTransport
    timer: CallTimer
    senders: dict[str, rtc.RemoteParticipant]
    tasks: TaskClock

    def packet(self, payload: bytes, sender: str = BACKEND) -> rtc.DataPacket:
        """A real data packet on the context topic, as the SDK hands it to ``data_received``."""
        return rtc.DataPacket(
            data=payload,
            kind=rtc.DataPacketKind.KIND_RELIABLE,
            participant=self.senders[sender],
            topic=CONTEXT_TOPIC,
        )

    def deliver(self, packet: rtc.DataPacket) -> None:
        self.room.emit("data_received", packet)

    async def aclose(self) -> None:
        await self.plugin.aclose()
        await self.session.aclose()
        asyncio.get_running_loop().set_task_factory(None)


async def start_timed_session(timer: CallTimer) -> tuple[TimedSession, TimedAgent]:
    """A started text-only ``TimedSession`` (no audio output) on the test kit's LLM and TTS."""
    session = TimedSession(
        timer,
        llm=ScriptedLLM(),
        tts=RecordingTTS(),
        vad=None,
        turn_handling={
            "turn_detection": None,
            "interruption": {"resume_false_interruption": False},
        },
    )
    agent = TimedAgent(timer, instructions="You are a benchmark.")
    await session.start(agent)  # no audio output: speech is text only
    return session, agent


async def make_rig(
    *,
    capacity: int,
    senders: Sequence[str] = (BACKEND,),
    prefix: str = "m",
    **plugin_kwargs: Any,
) -> Rig:
    """A started text-only session, a room, ``senders`` to send from, the plugin on it.

    Every task created from here on that is not the plugin's is timed by ``Rig.tasks``.
    """
    freeze_imports()
    tasks = TaskClock()
    tasks.install(asyncio.get_running_loop())
    timer = CallTimer()
    room = OfflineRoom(ROOM_NAME)
    participants = {identity: remote_participant(identity) for identity in senders}

    session, agent = await start_timed_session(timer)

    transport = CountingTransport(room, capacity=capacity, prefix=prefix)
    transport.task_clock = tasks
    plugin_kwargs.setdefault("trust_server", False)  # no server API in a benchmark
    plugin = ContextPlugin(
        agent_code="A12345678",
        allowed_identities=list(senders),
        ack_transport=transport,
        **plugin_kwargs,
    )
    await plugin.start(session, room)
    await asyncio.sleep(0.01)  # the plugin's start-up tasks, off the measurements
    timer.reset()
    return Rig(room, session, agent, plugin, transport, timer, participants, tasks)


# --------------------------------------------------------------------------- payloads


def context_payload(n: int, *, prefix: str = "m", key: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "type": "add_context",
        "id": f"{prefix}{n}",
        "context": f"Customer note {n}: prefers email, premium member since 2021, order #{n}.",
    }
    if key is not None:
        body["key"] = key
    return json.dumps(body).encode()


def speak_payload(n: int, *, prefix: str = "m") -> bytes:
    return json.dumps(
        {"type": "speak", "id": f"{prefix}{n}", "message": f"Your order #{n} has shipped!"}
    ).encode()


def json_floor(payloads: Sequence[bytes], repeat: int = 1) -> float:
    """Best seconds per message of ``json.loads`` + ``json.dumps`` over the same payloads."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for payload in payloads:
            json.dumps(json.loads(payload)).encode()
        best = min(best, (time.perf_counter() - t0) / len(payloads))
    return best


class _Sink:
    def on_data_received(self, packet: rtc.DataPacket) -> None:
        pass


class DispatchClock:
    """What ``rtc.Room.emit("data_received", ...)`` itself costs, per packet.

    LiveKit's ``EventEmitter.emit`` inspects the listener's signature on every call (about as
    much as the whole json floor). This times it on a second real room whose only listener
    does nothing and is shaped like the plugin's (a bound method taking the packet), so the
    benchmarks can leave it out of the plugin's own cost.
    """

    def __init__(self) -> None:
        self._room = rtc.Room()
        self._sink = _Sink()
        self._room.on("data_received", self._sink.on_data_received)

    def measure(self, packets: Sequence[rtc.DataPacket]) -> float:
        t0 = time.perf_counter()
        for packet in packets:
            self._room.emit("data_received", packet)
        return (time.perf_counter() - t0) / len(packets)

    def close(self) -> None:
        self._room.off("data_received", self._sink.on_data_received)


# --------------------------------------------------------------------------- reporting


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes ``pids`` have used so far (Linux ``/proc``; a
    process that is gone counts 0). Threads are included; children are not."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # after the command name: state is field 3, utime 14 and stime 15 (1-based)
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.3f} ms"


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )


@dataclass
class Figure:
    """One line of a benchmark's result: a measured value next to its baseline and target."""

    name: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ok: bool = True  # correctness (every message acked, ...), not timing

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)

    def print(self) -> None:
        print(f"\n== {self.title}  [{machine()}]")
        for line in table(self.figures):
            print(line)
        for note in self.notes:
            print(f"   - {note}")
        print(f"   correctness: {'ok' if self.ok else 'FAILED'}")


def table(figures: Sequence[Figure], *, with_bench: Sequence[str] | None = None) -> list[str]:
    head = ["figure", "plugin", "baseline", "ratio", "target", "met"]
    rows = [
        [
            f.name,
            f.value,
            f.baseline,
            f.ratio,
            f.target,
            "" if f.met is None else ("yes" if f.met else "NO"),
        ]
        for f in figures
    ]
    if with_bench is not None:
        head = ["benchmark", *head]
        rows = [[b, *r] for b, r in zip(with_bench, rows, strict=True)]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return [fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def script_main(
    doc: str | None, run: Callable[..., Awaitable[Report]], **defaults: float
) -> None:
    """A benchmark script's ``main``: a ``--<name> N`` option for each of ``defaults`` (typed as
    its default), ``run(**options)``, the report printed; exit 1 when it is not correct."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    options = vars(parser.parse_args())

    async def measure() -> Report:
        return await run(**options)

    report = asyncio.run(measure())
    report.print()
    sys.exit(0 if report.ok else 1)
