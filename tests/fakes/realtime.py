"""``FakeRealtimeModel``: a speech-to-speech ``llm.RealtimeModel`` (no TTS needed), offline.

Its ``FakeRealtimeSession`` answers ``generate_reply`` with text and silent audio, reads a
verbatim-speech instruction back word for word, and records instructions and the chat context
it held.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from livekit import rtc
from livekit.agents import NOT_GIVEN, NotGivenOr, llm, utils

from imaginex_context_plugin.testing.llm import PROVIDER, split_words

# a reply instruction ending with this line asks the fake to speak the rest as is; it matches
# the plugin's fallback for say() on a realtime model without TTS
VERBATIM_MARKER = "word for word, and nothing else:\n"
REALTIME_SAMPLE_RATE = 24_000
_REALTIME_FRAME_SAMPLES = 480  # 20 ms frames, as realtime APIs stream them


@dataclass(frozen=True)
class RealtimeTruncation:
    """One ``FakeRealtimeSession.truncate()`` call (the session cut a message at playout)."""

    message_id: str
    modalities: tuple[str, ...]
    audio_end_ms: int
    audio_transcript: str | None


class FakeRealtimeModel(llm.RealtimeModel):
    """A speech-to-speech model: every reply is text plus mono 24 kHz silence, no TTS needed.

    Capabilities are those of a typical realtime API with server-side turn detection off:
    audio output, message truncation and mutable chat context, instructions and tools, but
    ``supports_say=False`` by default, so ``session.say()`` needs a TTS unless the test
    passes ``supports_say=True`` (then ``FakeRealtimeSession.say`` speaks the text).

    Each ``generate_reply(instructions=...)`` speaks the text after the line
    ``VERBATIM_MARKER`` in the instructions when it is there, else the next of ``replies``,
    then ``default_reply``. The model records, across all its sessions and in call order:
    ``instructions_seen`` (the per-reply instructions, "" when none were given),
    ``chat_ctx_seen`` (a copy of the session's chat context at that call), ``said`` (texts
    given to ``say()``) and ``spoken`` (the text each generation streamed, also when cut).
    ``sessions`` holds every session the agent activities created.
    """

    def __init__(
        self,
        replies: Sequence[str] = (),
        *,
        default_reply: str = "ok",
        supports_say: bool = False,
        chunks: int = 3,
        seconds_per_char: float = 0.005,
        min_seconds: float = 0.05,
    ) -> None:
        super().__init__(
            capabilities=llm.RealtimeCapabilities(
                message_truncation=True,
                turn_detection=False,
                user_transcription=False,
                auto_tool_reply_generation=False,
                audio_output=True,
                manual_function_calls=False,
                mutable_chat_context=True,
                mutable_instructions=True,
                mutable_tools=True,
                supports_say=supports_say,
            )
        )
        self.replies: list[str] = list(replies)
        self.default_reply = default_reply
        self.chunks = max(1, chunks)
        self.seconds_per_char = seconds_per_char
        self.min_seconds = min_seconds
        self.instructions_seen: list[str] = []
        self.chat_ctx_seen: list[llm.ChatContext] = []
        self.said: list[str] = []
        self.spoken: list[str] = []
        self.sessions: list[FakeRealtimeSession] = []

    @property
    def model(self) -> str:
        return "fake-realtime"

    @property
    def provider(self) -> str:
        return PROVIDER

    def session(self, *, turn_detection_disabled: bool = False) -> FakeRealtimeSession:
        rt_session = FakeRealtimeSession(self)
        self.sessions.append(rt_session)
        return rt_session

    def reply_for(self, instructions: str | None) -> str:
        """The text a reply with these per-reply instructions speaks (consumes ``replies``)."""
        if instructions and VERBATIM_MARKER in instructions:
            return instructions.split(VERBATIM_MARKER, 1)[1]
        return self.replies.pop(0) if self.replies else self.default_reply

    def audio_seconds_for(self, text: str) -> float:
        """Seconds of silence a generation speaking ``text`` streams."""
        return max(self.min_seconds, self.seconds_per_char * len(text))

    async def aclose(self) -> None:
        # the agent activities own and close their sessions; closing again is harmless
        for rt_session in self.sessions:
            await rt_session.aclose()


class FakeRealtimeSession(llm.RealtimeSession[NoReturn]):
    """The session of a ``FakeRealtimeModel``: a server that holds state and streams replies.

    It keeps what the agent pushes: ``chat_ctx`` (replaced by each ``update_chat_ctx``, plus
    the assistant message of each finished generation, as a server adds it), ``instructions``,
    ``tools``, ``tool_choice``. Counters record the other calls: ``audio_frames_pushed``,
    ``video_frames_pushed``, ``commits``, ``clears``, ``interrupts``, ``chat_ctx_updates``
    and ``truncations``. A generation runs as a task streaming text and silent frames; the
    future ``generate_reply``/``say`` return is already resolved. ``interrupt()`` cuts the
    running generations. Nothing here raises unless a test sets ``chat_ctx_update_error``:
    after ``aclose()`` (idempotent) updates are ignored and a reply future fails with
    ``llm.RealtimeError``, which the session handles.
    """

    def __init__(self, realtime_model: FakeRealtimeModel) -> None:
        super().__init__(realtime_model)
        self._fake_model = realtime_model  # kept typed: the base class knows a RealtimeModel
        self._chat_ctx = llm.ChatContext.empty()
        self._tools = llm.ToolContext.empty()
        self.instructions: str | None = None
        self.tool_choice: llm.ToolChoice | None = None
        self.audio_frames_pushed = 0
        self.video_frames_pushed = 0
        self.commits = 0
        self.clears = 0
        self.interrupts = 0
        self.chat_ctx_updates = 0
        self.truncations: list[RealtimeTruncation] = []
        self.closed = False
        self.chat_ctx_update_error: llm.RealtimeError | None = None
        """Set it to have the next ``update_chat_ctx`` fail with it after applying the update,
        as a real API's unacknowledged update does (livekit: "can raise RealtimeError on
        Timeout"); it is cleared once raised."""
        self._generations: set[asyncio.Task[None]] = set()

    @property
    def chat_ctx(self) -> llm.ChatContext:
        return self._chat_ctx.copy()

    @property
    def tools(self) -> llm.ToolContext:
        return self._tools.copy()

    @property
    def generating(self) -> bool:
        """Whether a generation is still streaming."""
        return bool(self._generations)

    async def update_instructions(self, instructions: str) -> None:
        if not self.closed:
            self.instructions = instructions

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        if not self.closed:
            # the caller goes on editing its context, as with a real server keep our own copy
            self._chat_ctx = chat_ctx.copy()
            self.chat_ctx_updates += 1
        error, self.chat_ctx_update_error = self.chat_ctx_update_error, None
        if error is not None:
            raise error

    async def update_tools(self, tools: list[llm.Tool]) -> None:
        if not self.closed:
            self._tools = llm.ToolContext(tools)

    def update_options(self, *, tool_choice: NotGivenOr[llm.ToolChoice | None] = NOT_GIVEN) -> None:
        if not self.closed and utils.is_given(tool_choice):
            self.tool_choice = tool_choice

    def push_audio(self, frame: rtc.AudioFrame) -> None:
        self.audio_frames_pushed += 1

    def push_video(self, frame: rtc.VideoFrame) -> None:
        self.video_frames_pushed += 1

    def commit_audio(self) -> None:
        self.commits += 1

    def clear_audio(self) -> None:
        self.clears += 1

    def interrupt(self) -> None:
        # like response.cancel: stops what is generating, a no-op otherwise
        self.interrupts += 1
        for task in self._generations:
            task.cancel()

    def truncate(
        self,
        *,
        message_id: str,
        modalities: list[Literal["text", "audio"]],
        audio_end_ms: int,
        audio_transcript: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        transcript = audio_transcript if utils.is_given(audio_transcript) else None
        self.truncations.append(
            RealtimeTruncation(message_id, tuple(modalities), audio_end_ms, transcript)
        )
        # the server keeps only what the user heard
        item = self._chat_ctx.get_by_id(message_id)
        if transcript is not None and isinstance(item, llm.ChatMessage):
            item.content = [transcript]
            item.interrupted = True

    def generate_reply(
        self,
        *,
        instructions: NotGivenOr[str] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        tools: NotGivenOr[list[llm.Tool]] = NOT_GIVEN,
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        given = instructions if utils.is_given(instructions) else None
        self._fake_model.instructions_seen.append(given or "")
        self._fake_model.chat_ctx_seen.append(self._chat_ctx.copy())
        return self._start_generation(self._fake_model.reply_for(given))

    def say(self, text: str | AsyncIterable[str]) -> asyncio.Future[llm.GenerationCreatedEvent]:
        if isinstance(text, str):
            self._fake_model.said.append(text)
        return self._start_generation(text)

    def _start_generation(
        self, text: str | AsyncIterable[str]
    ) -> asyncio.Future[llm.GenerationCreatedEvent]:
        fut: asyncio.Future[llm.GenerationCreatedEvent] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(llm.RealtimeError("The realtime session is closed."))
            return fut
        response_id = f"fake_rt_resp_{uuid.uuid4().hex[:8]}"
        message_id = f"fake_rt_item_{uuid.uuid4().hex[:8]}"
        text_ch = utils.aio.Chan[str]()
        audio_ch = utils.aio.Chan[rtc.AudioFrame]()
        message_ch = utils.aio.Chan[llm.MessageGeneration]()
        function_ch = utils.aio.Chan[llm.FunctionCall]()
        modalities: asyncio.Future[list[Literal["text", "audio"]]] = fut.get_loop().create_future()
        modalities.set_result(["audio", "text"])
        message_ch.send_nowait(
            llm.MessageGeneration(
                message_id=message_id,
                text_stream=text_ch,
                audio_stream=audio_ch,
                modalities=modalities,
            )
        )
        task = asyncio.create_task(
            self._generate(text, message_id, text_ch, audio_ch, (message_ch, function_ch)),
            name="FakeRealtimeSession.generation",
        )
        self._generations.add(task)
        task.add_done_callback(self._generations.discard)
        fut.set_result(
            llm.GenerationCreatedEvent(
                message_stream=message_ch,
                function_stream=function_ch,
                user_initiated=True,
                response_id=response_id,
            )
        )
        return fut

    async def _generate(
        self,
        text: str | AsyncIterable[str],
        message_id: str,
        text_ch: utils.aio.Chan[str],
        audio_ch: utils.aio.Chan[rtc.AudioFrame],
        response_chs: tuple[utils.aio.Chan[Any], ...],
    ) -> None:
        streamed = ""
        seconds = 0.0
        completed = False
        try:
            pieces: AsyncIterable[str] | list[str] = (
                split_words(text, self._fake_model.chunks) if isinstance(text, str) else text
            )
            if isinstance(pieces, list):
                for piece in pieces:
                    streamed, seconds = self._stream(piece, streamed, seconds, text_ch, audio_ch)
                    # yield between chunks so consumers see a stream rather than one burst
                    await asyncio.sleep(0)
            else:
                async for piece in pieces:
                    streamed, seconds = self._stream(piece, streamed, seconds, text_ch, audio_ch)
                    await asyncio.sleep(0)
                self._fake_model.said.append(streamed)
            # pad to the model's minimum, so even an empty reply has a playout
            missing = self._fake_model.audio_seconds_for(streamed) - seconds
            for frame in _silent_frames(missing):
                audio_ch.send_nowait(frame)
            completed = True
        finally:
            channels: tuple[utils.aio.Chan[Any], ...] = (text_ch, audio_ch, *response_chs)
            for ch in channels:
                ch.close()
            self._fake_model.spoken.append(streamed)
            if streamed and not self.closed:
                self._chat_ctx.add_message(
                    role="assistant", content=streamed, id=message_id, interrupted=not completed
                )

    def _stream(
        self,
        piece: str,
        streamed: str,
        seconds: float,
        text_ch: utils.aio.Chan[str],
        audio_ch: utils.aio.Chan[rtc.AudioFrame],
    ) -> tuple[str, float]:
        text_ch.send_nowait(piece)
        piece_seconds = self._fake_model.seconds_per_char * len(piece)
        for frame in _silent_frames(piece_seconds):
            audio_ch.send_nowait(frame)
        return streamed + piece, seconds + piece_seconds

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        tasks = list(self._generations)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def _silent_frames(seconds: float) -> list[rtc.AudioFrame]:
    """``seconds`` of 16-bit mono silence at ``REALTIME_SAMPLE_RATE`` in 20 ms frames."""
    samples = max(0, round(seconds * REALTIME_SAMPLE_RATE))
    frames = []
    while samples > 0:
        size = min(samples, _REALTIME_FRAME_SAMPLES)
        frames.append(
            rtc.AudioFrame(
                data=bytes(2 * size),
                sample_rate=REALTIME_SAMPLE_RATE,
                num_channels=1,
                samples_per_channel=size,
            )
        )
        samples -= size
    return frames
