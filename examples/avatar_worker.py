"""A small avatar worker for local testing: what a bitHuman avatar does in the room, with a
solid-colour face instead of a human one.

It is a separate process that joins the room as its own participant (kind AGENT, with the
attribute ``lk.publish_on_behalf`` naming the agent it speaks for, as bitHuman's cloud avatar
does), and then does what LiveKit's avatar protocol asks of an avatar:

- it receives the agent's audio over a LiveKit data stream (``DataStreamAudioReceiver``: the
  byte stream topic ``lk.audio_stream``, one stream per speech segment);
- it plays that audio out on its own audio track, in real time, with a small video track in step
  (``AvatarRunner`` with :class:`SolidFaceGenerator`: a 32x32 frame that flickers while audio
  plays), published once someone subscribes to its audio (the agent's job does, and the user);
- it reports back to the agent over RPC: ``lk.playback_started`` when a segment starts playing,
  ``lk.playback_finished`` with the position played and ``interrupted`` when the segment has
  played out or when the agent's ``lk.clear_buffer`` RPC cut it.

The agent side is ``examples/avatar_agent.py`` (``DataStreamAudioOutput``), which launches this
worker into each room it joins, as ``bithuman.AvatarSession`` launches a bitHuman avatar. Run it
yourself to watch or crash it (``docs/avatar.md``)::

    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    .venv/bin/python examples/avatar_worker.py --room demo --agent-identity <the agent's identity>

With ``LIVEKIT_TOKEN`` set it joins with that token (the agent mints one for the avatars it
launches) instead of minting its own from the API key and secret. ``--journal FILE`` appends
what it did as JSON lines (joined, each segment received, playback started/finished, each
clear), for tests and debugging. It leaves when the agent it speaks for leaves, when the room
closes, or on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioReceiver,
    VideoGenerator,
)

DEFAULT_IDENTITY: Final = "imaginex-avatar"
SAMPLE_RATE: Final = 24_000
"""The rate the avatar plays at: the usual TTS rate, so most audio needs no resampling."""
VIDEO_FPS: Final = 10.0
VIDEO_SIZE: Final = 32
SENDER_ATTRIBUTE: Final = "imaginex.sender"
"""Set by the plugin's senders (CLI, gateway), which join as kind AGENT too: never the agent."""

logger = logging.getLogger("imaginex.avatar_worker")


class Journal:
    """What the avatar did, one JSON object a line (``event`` and ``t``: ``time.time()``)."""

    def __init__(self, path: Path | None) -> None:
        self._file = path.open("a", encoding="utf-8") if path is not None else None

    def write(self, event: str, **fields: Any) -> None:
        logger.info("avatar %s", event, extra=fields)
        if self._file is not None:
            self._file.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _solid_frame(rgb: tuple[int, int, int]) -> rtc.VideoFrame:
    pixel = bytes((*rgb, 255))
    return rtc.VideoFrame(VIDEO_SIZE, VIDEO_SIZE, rtc.VideoBufferType.RGBA, pixel * VIDEO_SIZE**2)


class SolidFaceGenerator(VideoGenerator):
    """Turns the agent's audio into the avatar's audio and video, in step.

    Each 1/fps of audio goes out together with one video frame (two colours alternate while
    audio plays: the "mouth" moves); with no audio, an idle frame every 1/fps keeps the video
    track alive. Audio at another sample rate is resampled to the runner's. ``AvatarRunner``
    pushes what this yields into an ``AVSynchronizer``, whose audio source plays in real time:
    that is what paces the playout and what the reported positions count.
    """

    def __init__(self, options: AvatarOptions, journal: Journal) -> None:
        self._options = options
        self._journal = journal
        self._queue: asyncio.Queue[rtc.AudioFrame | AudioSegmentEnd] = asyncio.Queue()
        self._resampler: rtc.AudioResampler | None = None
        self._samples_per_frame = int(options.audio_sample_rate / options.video_fps)
        self._bytes_per_frame = self._samples_per_frame * options.audio_channels * 2
        self._pending = bytearray()  # audio waiting for its video frame
        self._received_s = 0.0  # audio received in the current segment
        self._idle = _solid_frame((40, 40, 40))
        self._talking = (_solid_frame((230, 120, 40)), _solid_frame((250, 200, 60)))

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            if self._resampler is not None:
                for resampled in self._resampler.flush():
                    self._queue.put_nowait(resampled)
                self._resampler = None
            self._journal.write("segment_received", audio_s=round(self._received_s, 3))
            self._received_s = 0.0
            self._queue.put_nowait(frame)
            return
        self._received_s += frame.duration
        if frame.num_channels != self._options.audio_channels:
            raise ValueError("the avatar plays mono audio only")
        if frame.sample_rate == self._options.audio_sample_rate:
            self._queue.put_nowait(frame)
            return
        if self._resampler is None:
            self._resampler = rtc.AudioResampler(
                input_rate=frame.sample_rate,
                output_rate=self._options.audio_sample_rate,
                num_channels=frame.num_channels,
            )
        for resampled in self._resampler.push(frame):
            self._queue.put_nowait(resampled)

    def clear_buffer(self) -> None:
        """The agent cut the speech: drop what has not been played yet."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._pending.clear()
        self._resampler = None
        self._received_s = 0.0

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        interval = 1.0 / self._options.video_fps
        shown = 0
        while True:
            try:
                # shorter than a frame: an idle face must not starve the video track
                item = await asyncio.wait_for(self._queue.get(), interval / 2)
            except asyncio.TimeoutError:
                yield self._idle
                continue
            if isinstance(item, AudioSegmentEnd):
                if self._pending:  # the segment's last, shorter chunk
                    shown += 1
                    yield self._audio(bytes(self._pending))
                    yield self._talking[shown % 2]
                    self._pending.clear()
                yield item
                continue
            self._pending += item.data.tobytes()
            while len(self._pending) >= self._bytes_per_frame:
                chunk = bytes(self._pending[: self._bytes_per_frame])
                del self._pending[: self._bytes_per_frame]
                shown += 1
                # the audio first: the video queue may hold the loop for up to a frame, and
                # the first audio frame is what starts the playback (and its report)
                yield self._audio(chunk)
                yield self._talking[shown % 2]

    def _audio(self, data: bytes) -> rtc.AudioFrame:
        channels = self._options.audio_channels
        return rtc.AudioFrame(
            data, self._options.audio_sample_rate, channels, len(data) // (2 * channels)
        )


class ReportingReceiver(DataStreamAudioReceiver):
    """LiveKit's data-stream receiver, with each report to the agent written to the journal."""

    def __init__(self, room: rtc.Room, *, sender_identity: str, journal: Journal) -> None:
        super().__init__(room, sender_identity=sender_identity)
        self._journal = journal
        self.on("clear_buffer", self._on_clear_buffer)

    def _on_clear_buffer(self) -> None:
        self._journal.write("clear_buffer")

    def notify_playback_started(self) -> None:
        self._journal.write("playback_started")
        super().notify_playback_started()

    def notify_playback_finished(self, playback_position: float, interrupted: bool) -> None:
        self._journal.write(
            "playback_finished", played_s=round(playback_position, 3), interrupted=interrupted
        )
        super().notify_playback_finished(playback_position, interrupted)

    async def aclose(self) -> None:
        self.off("clear_buffer", self._on_clear_buffer)
        await super().aclose()


def avatar_token(
    *, api_key: str, api_secret: str, room: str, identity: str, agent_identity: str
) -> str:
    """A join token as an avatar gets it: kind AGENT, publishing on behalf of its agent."""
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name("avatar")
        .with_kind("agent")
        .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity})
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


def _is_the_agent(participant: rtc.RemoteParticipant) -> bool:
    return (
        participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        and SENDER_ATTRIBUTE not in participant.attributes
        and ATTRIBUTE_PUBLISH_ON_BEHALF not in participant.attributes
    )


async def _find_agent(room: rtc.Room, wanted: str | None) -> str:
    """The identity of the agent to take audio from: ``wanted``, else the first agent that is
    neither one of the plugin's senders nor another avatar."""
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def check(participant: rtc.RemoteParticipant) -> None:
        matches = participant.identity == wanted if wanted else _is_the_agent(participant)
        if matches and not found.done():
            found.set_result(participant.identity)

    for participant in room.remote_participants.values():
        check(participant)
    room.on("participant_connected", check)
    try:
        return await found
    finally:
        room.off("participant_connected", check)


async def run_avatar(
    url: str,
    token: str,
    *,
    agent_identity: str | None,
    journal: Journal,
    stop: asyncio.Event,
) -> None:
    """Join, play the agent's speech until ``stop``, the agent leaves or the room closes."""
    room = rtc.Room()
    runner: AvatarRunner | None = None
    gone = asyncio.Event()

    def on_participant_disconnected(participant: rtc.RemoteParticipant) -> None:
        if participant.identity == agent_identity:
            journal.write("agent_left", identity=participant.identity)
            gone.set()

    def on_disconnected(reason: Any) -> None:
        journal.write("room_disconnected", reason=str(reason))
        gone.set()

    room.on("participant_disconnected", on_participant_disconnected)
    room.on("disconnected", on_disconnected)
    try:
        await room.connect(url, token)
        agent_identity = await _find_agent(room, agent_identity)
        journal.write(
            "joined",
            identity=room.local_participant.identity,
            room=room.name,
            agent=agent_identity,
            pid=os.getpid(),
        )
        options = AvatarOptions(
            video_width=VIDEO_SIZE,
            video_height=VIDEO_SIZE,
            video_fps=VIDEO_FPS,
            audio_sample_rate=SAMPLE_RATE,
            audio_channels=1,
        )
        runner = AvatarRunner(
            room,
            audio_recv=ReportingReceiver(room, sender_identity=agent_identity, journal=journal),
            video_gen=SolidFaceGenerator(options, journal),
            options=options,
        )
        await runner.start()
        journal.write("ready")
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gone.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    finally:
        room.off("participant_disconnected", on_participant_disconnected)
        room.off("disconnected", on_disconnected)
        if runner is not None:
            await runner.aclose()
        await room.disconnect()
        journal.write("left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=os.getenv("LIVEKIT_URL"), help="default: LIVEKIT_URL")
    parser.add_argument("--room", help="the room to join (needed unless LIVEKIT_TOKEN is set)")
    parser.add_argument("--identity", default=DEFAULT_IDENTITY, help="the avatar's identity")
    parser.add_argument(
        "--agent-identity",
        help="the agent to speak for; default: the first agent that joins (not a sender)",
    )
    parser.add_argument("--journal", type=Path, help="append what the avatar did, as JSON lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not args.url:
        parser.error("--url or LIVEKIT_URL is required")
    token = os.getenv("LIVEKIT_TOKEN")
    if token is None:
        key, secret = os.getenv("LIVEKIT_API_KEY"), os.getenv("LIVEKIT_API_SECRET")
        if not (key and secret and args.room and args.agent_identity):
            parser.error(
                "without LIVEKIT_TOKEN, give --room, --agent-identity and set "
                "LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
            )
        token = avatar_token(
            api_key=key,
            api_secret=secret,
            room=args.room,
            identity=args.identity,
            agent_identity=args.agent_identity,
        )
    journal = Journal(args.journal)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_avatar(
            args.url, token, agent_identity=args.agent_identity, journal=journal, stop=stop
        )

    try:
        asyncio.run(run())
    finally:
        journal.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
    sys.exit(0)
