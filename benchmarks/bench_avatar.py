"""Speaking through an avatar: speak -> ``speech_started`` and -> ``speech_finished``, next to the
same with the agent's own audio track, same run, same real ``livekit-server``.

A backend sends ``speak`` (one second of audio: the test kit's silent TTS, 20 characters) over
RPC to a real ``AgentSession`` with ``ContextPlugin`` in a real room, with a user in the room
(subscribed to everything), one speech at a time, and times the events it is sent. Three ways
the agent's audio leaves it:

- **own track** (the baseline): ``RoomIO``'s audio output, the agent publishes its voice itself;
- **avatar, started = avatar's report**: ``DataStreamAudioOutput(wait_playback_start=True)`` to
  ``examples/avatar_worker.py`` (a separate process: LiveKit's ``AvatarRunner``, a real-time
  audio track and a tiny video track), ``speech_started`` from the avatar's
  ``lk.playback_started`` RPC, as ``examples/avatar_agent.py`` does;
- **avatar, started = first frame sent**: the same with ``wait_playback_start=False``, the
  default and what ``livekit-plugins-bithuman`` sets: ``speech_started`` once the first audio
  frame went into the data stream.

``speech_finished`` comes, in each, once the audio output reported the end: the own track once
its audio source has played out, the avatar once its ``lk.playback_finished`` RPC arrived. The
figure "finished - audio" is the time beyond the speech's own second of audio. No targets: these
are what an avatar costs, for the docs (``docs/avatar.md``).

Run: ``python benchmarks/bench_avatar.py [--speeches N]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# before anything imports LiveKit: its native threads must start inside the namespace
from devtools.netns import isolate  # noqa: E402

NETWORK = isolate()

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Final  # noqa: E402

from _harness import Figure, Report, ms, percentile, script_main  # noqa: E402
from _live import livekit, room_token  # noqa: E402
from livekit import rtc  # noqa: E402
from livekit.agents import Agent, AgentSession, room_io  # noqa: E402
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF  # noqa: E402
from livekit.agents.voice.avatar import DataStreamAudioOutput  # noqa: E402

from devtools.livekit_server import ServerInfo  # noqa: E402
from devtools.processes import stop_async_process  # noqa: E402
from imaginex_context_plugin import ContextPlugin  # noqa: E402
from imaginex_context_plugin.protocol import ACK_TOPIC, RPC_METHOD, SENDER_ATTRIBUTE  # noqa: E402
from imaginex_context_plugin.testing import RecordingTTS, ScriptedLLM  # noqa: E402

AGENT = "bench-agent"
AVATAR = "bench-avatar"
SENDER = "bench-sender"
USER = "bench-user"
SECONDS_PER_CHAR: Final = 0.05
TEXT: Final = "la " * 6 + "la"  # 20 characters: one second of audio
AUDIO_S: Final = len(TEXT) * SECONDS_PER_CHAR
AVATAR_WORKER: Final = REPO_ROOT / "examples" / "avatar_worker.py"
EVENT_TIMEOUT_S: Final = 30.0
READY_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True)
class Output:
    name: str
    avatar: bool
    wait_playback_start: bool = False


OUTPUTS: Final = (
    Output("own track", avatar=False),
    Output("avatar, started = avatar's report", avatar=True, wait_playback_start=True),
    Output("avatar, started = first frame sent", avatar=True, wait_playback_start=False),
)


@dataclass
class Timings:
    started: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    played: list[float] = field(default_factory=list)
    failures: int = 0


async def until(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def avatar_process(lk: ServerInfo, room_name: str) -> AsyncIterator[None]:
    """``examples/avatar_worker.py`` in the room, speaking for the bench agent."""
    avatar_token = room_token(
        lk, room_name, AVATAR, agent=True, attributes={ATTRIBUTE_PUBLISH_ON_BEHALF: AGENT}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(AVATAR_WORKER),
        "--identity",
        AVATAR,
        "--agent-identity",
        AGENT,
        "--log-level",
        "WARNING",
        env={**os.environ, "LIVEKIT_URL": lk.url, "LIVEKIT_TOKEN": avatar_token},
        stdin=asyncio.subprocess.DEVNULL,
        # quiet: without wait_playback_start nobody takes its lk.playback_started, which the
        # SDK's receiver logs as an error for every speech
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        await stop_async_process(process, timeout=10)


def _avatar_video(room: rtc.Room) -> bool:
    participant = room.remote_participants.get(AVATAR)
    return participant is not None and any(
        pub.kind == rtc.TrackKind.KIND_VIDEO for pub in participant.track_publications.values()
    )


async def measure(lk: ServerInfo, output: Output, speeches: int) -> Timings:
    """``speeches`` sequential speaks, each timed from the RPC call to its two events."""
    room_name = f"bench-avatar-{uuid.uuid4().hex[:6]}"
    timings = Timings()
    user, agent_room, sender = rtc.Room(), rtc.Room(), rtc.Room()
    events: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == ACK_TOPIC:
            message = json.loads(packet.data)
            events.setdefault((message["type"], message.get("id")), (time.perf_counter(), message))

    sender.on("data_received", on_data)
    session: AgentSession[Any] = AgentSession(
        llm=ScriptedLLM(),
        tts=RecordingTTS(seconds_per_char=SECONDS_PER_CHAR),
        vad=None,
        turn_handling={
            "turn_detection": None,
            "interruption": {"resume_false_interruption": False},
        },
    )
    plugin = ContextPlugin(
        agent_code="BENCHAV01", allowed_identities=[SENDER], rate_limit=None, trust_server=False
    )
    async with contextlib.AsyncExitStack() as stack:
        await user.connect(lk.url, room_token(lk, room_name, USER))
        stack.push_async_callback(user.disconnect)
        await agent_room.connect(lk.url, room_token(lk, room_name, AGENT, agent=True))
        stack.push_async_callback(agent_room.disconnect)
        if output.avatar:
            await stack.enter_async_context(avatar_process(lk, room_name))
            session.output.audio = DataStreamAudioOutput(
                agent_room,
                destination_identity=AVATAR,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                wait_playback_start=output.wait_playback_start,
            )
        await plugin.start(session, agent_room)
        stack.push_async_callback(plugin.aclose)
        await session.start(
            Agent(instructions="You are a benchmark."),
            room=agent_room,
            room_options=room_io.RoomOptions(audio_input=False, audio_output=not output.avatar),
        )
        stack.push_async_callback(session.aclose)
        sender_attributes = {SENDER_ATTRIBUTE: "1"}
        await sender.connect(
            lk.url, room_token(lk, room_name, SENDER, agent=True, attributes=sender_attributes)
        )
        stack.push_async_callback(sender.disconnect)
        await until(lambda: AGENT in sender.remote_participants, "the agent", READY_TIMEOUT_S)
        if output.avatar:
            await until(lambda: _avatar_video(user), "the avatar's video", READY_TIMEOUT_S)

        for n in range(speeches + 1):  # the first one warms up every path
            request_id = f"s{n}"
            start = time.perf_counter()
            await sender.local_participant.perform_rpc(
                destination_identity=AGENT,
                method=RPC_METHOD,
                payload=json.dumps({"type": "speak", "id": request_id, "message": TEXT}),
            )
            key = ("speech_finished", request_id)
            try:
                await until(lambda key=key: key in events, f"{key}", EVENT_TIMEOUT_S)
            except TimeoutError:
                timings.failures += 1
                continue
            started = events.get(("speech_started", request_id))
            finished_at, finished = events[("speech_finished", request_id)]
            if started is None or finished["interrupted"]:
                timings.failures += 1
                continue
            if n == 0:
                continue
            timings.started.append(started[0] - start)
            timings.finished.append(finished_at - start)
            timings.played.append(float(finished.get("played_s") or 0.0))
    return timings


def p50_p95(samples: list[float]) -> str:
    return f"{ms(percentile(samples, 0.5))} / {ms(percentile(samples, 0.95))}"


async def run(speeches: int = 20, server: ServerInfo | None = None) -> Report:
    """Measure; ``server``: use this one instead of the environment's or a new one."""
    report = Report("avatar: speak -> speech_started / speech_finished, through an avatar")
    report.notes.append(NETWORK)
    with livekit(server) as lk:
        measured = {output.name: await measure(lk, output, speeches) for output in OUTPUTS}
    baseline = measured[OUTPUTS[0].name]
    base_started = percentile(baseline.started, 0.5)
    base_finished = percentile(baseline.finished, 0.5)
    for output in OUTPUTS:
        timings = measured[output.name]
        if timings.failures or len(timings.finished) != speeches:
            report.ok = False
        is_baseline = output is OUTPUTS[0]
        started = percentile(timings.started, 0.5)
        finished = percentile(timings.finished, 0.5)
        report.add(
            Figure(
                f"speak -> speech_started, {output.name}, p50 / p95",
                p50_p95(timings.started),
                "" if is_baseline else p50_p95(baseline.started),
                "" if is_baseline else f"{started / base_started:.2f}x" if base_started else "",
            )
        )
        report.add(
            Figure(
                f"speak -> speech_finished, {output.name}, p50 / p95",
                p50_p95(timings.finished),
                "" if is_baseline else p50_p95(baseline.finished),
                "" if is_baseline else f"+{ms(finished - base_finished)}",
            )
        )
        beyond = [f - AUDIO_S for f in timings.finished]
        report.add(
            Figure(
                f"speech_finished - {AUDIO_S:.1f} s of audio, {output.name}, p50",
                ms(percentile(beyond, 0.5)),
                "",
                f"played_s p50 {percentile(timings.played, 0.5):.3f} s",
            )
        )
        if timings.failures:
            report.notes.append(f"{output.name}: {timings.failures} speeches did not play out")
    report.notes.append(
        f"{speeches} sequential speeches of {AUDIO_S:.1f} s per output (after one warm-up), "
        "timed at the backend from the speak RPC to each event"
    )
    return report


def main() -> None:
    script_main(__doc__, run, speeches=20)


if __name__ == "__main__":
    main()
