"""A scripted speech-to-text model and a silent microphone, so a real ``AgentSession`` hears
the user: ``stt.hear("hello")`` makes the session emit ``user_input_transcribed`` (and the
user's turn) exactly as a real STT's events would.
"""

from __future__ import annotations

import asyncio
from typing import Final, NoReturn

from livekit import rtc
from livekit.agents import APIConnectOptions, stt
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer
from livekit.agents.voice import io

SAMPLE_RATE: Final = 16_000
FRAME_S: Final = 0.02


class SilentAudioInput(io.AudioInput):
    """A microphone that yields 20 ms of silence every 20 ms."""

    def __init__(self) -> None:
        super().__init__(label="silent")

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(FRAME_S)
        samples = int(SAMPLE_RATE * FRAME_S)
        return rtc.AudioFrame(bytes(samples * 2), SAMPLE_RATE, 1, samples)


class ScriptedSTT(stt.STT[NoReturn]):
    """A streaming STT whose transcripts are whatever the test says the user said."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=True))
        self._streams: list[_ScriptedStream] = []

    @property
    def streams(self) -> int:
        """Streams open now (the session opens one once it listens)."""
        return sum(1 for s in self._streams if not s.closed)

    def hear(self, text: str, *, final: bool = True, language: str = "en") -> None:
        """The user said ``text``: an interim transcript, or a final one ending the speech."""
        data = [stt.SpeechData(language=LanguageCode(language), text=text)]
        kinds = (
            [stt.SpeechEventType.FINAL_TRANSCRIPT, stt.SpeechEventType.END_OF_SPEECH]
            if final
            else [stt.SpeechEventType.START_OF_SPEECH, stt.SpeechEventType.INTERIM_TRANSCRIPT]
        )
        for stream in self._streams:
            for kind in kinds:
                stream.push(stt.SpeechEvent(type=kind, alternatives=data))

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return stt.SpeechEvent(type=stt.SpeechEventType.FINAL_TRANSCRIPT)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        stream = _ScriptedStream(stt=self, conn_options=conn_options)
        self._streams.append(stream)
        return stream


class _ScriptedStream(stt.RecognizeStream):
    closed = False

    def push(self, event: stt.SpeechEvent) -> None:
        if not self._event_ch.closed:
            self._event_ch.send_nowait(event)

    async def _run(self) -> None:
        try:
            async for _ in self._input_ch:  # the audio is not listened to: the script speaks
                pass
        finally:
            self.closed = True
