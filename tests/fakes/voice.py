"""A synthetic voice that a real VAD takes for speech, and a microphone that sends it.

``speech_like()`` makes vowel sounds: a glottal pulse train (pitch 130 Hz, gently varying)
through three formant resonators, a different vowel each syllable, six syllables a second.
The on-device Silero VAD that livekit-agents ships (``livekit.agents.inference.VAD``) hears
it as speech in more than nine windows of ten (a sine tone or white noise: never), so a user
participant publishing it barges in on the agent through the session's real VAD path, with
no recording on disk. ``Microphone`` publishes a real audio track and sends silence, or this
voice when asked, in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import cache
from typing import Final

import numpy as np
from livekit import rtc

SAMPLE_RATE: Final = 16_000
FRAME_S: Final = 0.01
_SYLLABLES_PER_S: Final = 6.0
# (frequency, bandwidth) of the first three formants of a, i, o, u, e
_VOWELS: Final = (
    ((730, 90), (1090, 110), (2440, 160)),
    ((270, 60), (2290, 100), (3010, 150)),
    ((570, 80), (840, 90), (2410, 150)),
    ((300, 60), (870, 90), (2240, 150)),
    ((530, 80), (1840, 100), (2480, 150)),
)


def _resonate(signal: np.ndarray, frequency: float, bandwidth: float) -> np.ndarray:
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    b1 = 2 * radius * np.cos(2 * np.pi * frequency / SAMPLE_RATE)
    b2 = -radius * radius
    out = np.zeros_like(signal)
    y1 = y2 = 0.0
    for i, x in enumerate(signal):
        y = x + b1 * y1 + b2 * y2
        out[i] = y
        y2, y1 = y1, y
    return out


@cache
def speech_like(seconds: float) -> bytes:
    """``seconds`` of the synthetic voice: 16 kHz mono 16-bit PCM (deterministic)."""
    n = int(SAMPLE_RATE * seconds)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 130.0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t) + 0.05 * np.sin(2 * np.pi * 3.1 * t))
    phase = np.cumsum(pitch / SAMPLE_RATE)
    fraction = phase - np.floor(phase)
    pulses = np.where(fraction < 0.4, np.sin(np.pi * fraction / 0.4) ** 2, 0.0)
    noise = np.random.default_rng(0).normal(size=n)
    source = np.diff(pulses, prepend=0.0) + 0.02 * noise
    voice = np.zeros(n)
    syllable = int(SAMPLE_RATE / _SYLLABLES_PER_S)
    for k, start in enumerate(range(0, n, syllable)):
        part = source[start : start + syllable]
        for frequency, bandwidth in _VOWELS[k % len(_VOWELS)]:
            part = _resonate(part, frequency, bandwidth)
        voice[start : start + len(part)] = part
    voice *= 1 - 0.8 * 0.5 * (1 + np.cos(2 * np.pi * _SYLLABLES_PER_S * t))
    voice *= 0.6 / np.max(np.abs(voice))
    return (voice * 32767).astype(np.int16).tobytes()


class Microphone:
    """A published microphone track that sends silence, or the synthetic voice on ``say()``."""

    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._source = rtc.AudioSource(SAMPLE_RATE, 1)
        self._queued = bytearray()
        self._task: asyncio.Task[None] | None = None
        self.publication: rtc.LocalTrackPublication | None = None

    async def start(self) -> None:
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.publication = await self._room.local_participant.publish_track(track, options)
        self._task = asyncio.create_task(self._send(), name="microphone")

    def say(self, seconds: float) -> None:
        """Speak ``seconds`` of the synthetic voice (after what is still queued)."""
        self._queued += speech_like(seconds)

    @property
    def speaking(self) -> bool:
        return bool(self._queued)

    async def _send(self) -> None:
        samples = int(SAMPLE_RATE * FRAME_S)
        size = 2 * samples
        silence = bytes(size)
        while True:
            if len(self._queued) >= size:
                chunk = bytes(self._queued[:size])
                del self._queued[:size]
            else:
                self._queued.clear()
                chunk = silence
            # the source's queue paces this at real time
            await self._source.capture_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, samples))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._source.aclose()
