"""``RecordingTTS``: a ``tts.TTS`` that synthesises silence and records every text it was given."""

from __future__ import annotations

import uuid
from typing import NoReturn

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tts

from .llm import PROVIDER


class RecordingTTS(tts.TTS[NoReturn]):
    """A non-streaming TTS producing mono silence of ``seconds_per_char * len(text)``.

    Every text it is asked to synthesise is appended to ``texts``; the session's
    StreamAdapter calls it once per sentence.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 24_000,
        seconds_per_char: float = 0.005,
        min_seconds: float = 0.05,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.seconds_per_char = seconds_per_char
        self.min_seconds = min_seconds
        self.texts: list[str] = []

    @property
    def model(self) -> str:
        return "silence"

    @property
    def provider(self) -> str:
        return PROVIDER

    def duration_for(self, text: str) -> float:
        """Seconds of audio synthesised for ``text``."""
        return max(self.min_seconds, self.seconds_per_char * len(text))

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> RecordingChunkedStream:
        self.texts.append(text)
        return RecordingChunkedStream(recording_tts=self, text=text, conn_options=conn_options)


class RecordingChunkedStream(tts.ChunkedStream):
    def __init__(
        self, *, recording_tts: RecordingTTS, text: str, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(tts=recording_tts, input_text=text, conn_options=conn_options)
        # kept typed: the base class only knows a tts.TTS
        self._recording_tts = recording_tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        sample_rate = self._recording_tts.sample_rate
        output_emitter.initialize(
            request_id=f"silence-{uuid.uuid4().hex[:8]}",
            sample_rate=sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        samples = round(self._recording_tts.duration_for(self.input_text) * sample_rate)
        # no flush(): the base class ends the input itself, and an explicit flush adds a
        # 10 ms end marker to the audio
        output_emitter.push(bytes(2 * samples))  # 16-bit zeros

