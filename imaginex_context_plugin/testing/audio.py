"""``RecordingAudioOutput``: an audio sink that "plays" against the event-loop clock.

It reports playback started/finished exactly as LiveKit's ``voice.io`` asks of a sink, so the
session's speech tracking, interruptions and the plugin's playout events run as with a speaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from livekit import rtc
from livekit.agents.voice import io


@dataclass(frozen=True)
class PlayedSegment:
    """One playback segment of a ``RecordingAudioOutput`` (from first frame to finish)."""

    captured: float
    """Seconds of audio the sink was given for the segment."""
    played: float
    """Seconds reported as played (``playback_position``)."""
    interrupted: bool
    started_at: float
    """``time.time()`` when the segment started playing (the ``created_at`` reported)."""


class RecordingAudioOutput(io.AudioOutput):
    """An audio sink that plays captured audio against the event-loop clock.

    Frames queue up as on a real speaker: audio is "played" from the moment its frame
    arrives (or the previous frame ends), ``speed`` times faster than real time. The first
    frame of a segment reports ``playback_started``; the segment reports
    ``playback_finished`` once its audio has played after ``flush()``, or at once, as
    interrupted with the position reached, after ``clear_buffer()``. Finished segments are
    appended to ``segments``. Pausing is not supported (``can_pause`` is False).
    """

    def __init__(
        self,
        *,
        speed: float = 1.0,
        sample_rate: int | None = None,
        label: str = "RecordingAudioOutput",
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        super().__init__(
            label=label,
            capabilities=io.AudioOutputCapabilities(pause=False),
            next_in_chain=None,
            sample_rate=sample_rate,
        )
        self.speed = speed
        self.segments: list[PlayedSegment] = []
        self.frames_captured = 0
        self._captured = 0.0  # audio seconds captured in the current segment
        self._drained_at = 0.0  # loop time at which the queued audio runs out
        self._started_at = 0.0
        self._cleared_at_position: float | None = None  # set by clear_buffer()
        self._cleared = asyncio.Event()
        self._playout_task: asyncio.Task[None] | None = None

    @property
    def playing(self) -> bool:
        """Whether a segment has started and not yet finished."""
        return self._captured > 0

    def _position(self) -> float:
        # what is still queued has not played yet
        queued = max(0.0, self._drained_at - asyncio.get_running_loop().time()) * self.speed
        return max(0.0, self._captured - queued)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        # a new segment queues behind the previous one, like a real speaker
        if self._playout_task is not None:
            await asyncio.wait([self._playout_task])
        await super().capture_frame(frame)  # counts the segment for wait_for_playout()
        self.frames_captured += 1
        if self._cleared_at_position is not None:
            return  # cleared mid-segment: the rest of it is dropped until flush()

        now = asyncio.get_running_loop().time()
        if not self._captured:
            self._drained_at = now
            self._started_at = time.time()
            self.on_playback_started(created_at=self._started_at)
        self._captured += frame.duration
        self._drained_at = max(self._drained_at, now) + frame.duration / self.speed

    def flush(self) -> None:
        super().flush()
        if not self._captured or self._playout_task is not None:
            # nothing captured means no segment was counted, so none must finish
            return
        self._playout_task = asyncio.create_task(self._play_out(), name="RecordingAudioOutput")

    def clear_buffer(self) -> None:
        # the session calls this after every interruption, even when nothing plays
        if not self._captured or self._cleared_at_position is not None:
            return
        self._cleared_at_position = self._position()
        self._cleared.set()

    async def _play_out(self) -> None:
        delay = max(0.0, self._drained_at - asyncio.get_running_loop().time())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._cleared.wait(), delay)

        interrupted = self._cleared_at_position is not None
        played = self._captured if self._cleared_at_position is None else self._cleared_at_position
        segment = PlayedSegment(
            captured=self._captured,
            played=played,
            interrupted=interrupted,
            started_at=self._started_at,
        )
        self._captured = 0.0
        self._cleared_at_position = None
        self._cleared.clear()
        self._playout_task = None
        self.segments.append(segment)
        self.on_playback_finished(playback_position=played, interrupted=interrupted)

    async def aclose(self) -> None:
        """Cut any segment still playing and wait until it has reported its end."""
        self.clear_buffer()
        if self._playout_task is not None:
            await asyncio.wait([self._playout_task])

