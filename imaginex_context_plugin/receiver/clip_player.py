"""Pre-recorded clips for ``speak{audio}`` (protocol v1.3): received as LiveKit byte streams,
decoded, and played through the same path as TTS speech.

A sender first streams the clip (any format ``livekit-agents`` decodes: WAV, MP3, Ogg/Opus,
FLAC, AAC ...) on ``AUDIO_STREAM_TOPIC`` to the agent, then sends ``speak`` naming the stream's
id. Data streams carry it beyond the 15 KiB packet limit, and on the same reliable channel as
the request, so the clip is there (or nearly) when the request is applied.

Each clip is read by a task of its own, kept in memory and decoded as soon as it is complete
(``livekit.agents.utils.codecs.AudioStreamDecoder``, PyAV), so that applying the ``speak`` only
hands the frames to ``AgentSession.say(audio=...)``: the session plays them through the audio
output exactly as it plays TTS audio (an avatar lip-syncs them), with the same modes, ack and
playout events. Everything is bounded: ``MAX_CLIP_BYTES`` encoded, ``MAX_CLIP_S`` decoded,
``MAX_PENDING_CLIPS`` waiting (``MAX_CLIPS_PER_SENDER`` from one participant), each kept
``CLIP_KEEP_S`` at most for its ``speak``. Only participants the plugin could take a message
from send clips (an allowed identity, or anyone when signed messages are accepted: the signed
request then vouches for the clip with its ``sha256``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from livekit import rtc
from livekit.agents.utils.codecs import AudioStreamDecoder

from ..errors import ErrorCode
from ..log import logger
from ..protocol import AUDIO_STREAM_TOPIC, MAX_CLIP_BYTES, MAX_CLIP_S, AudioClipRef

MAX_PENDING_CLIPS: Final = 4
"""Most clips received (or being received) and not yet played, from everyone."""
MAX_CLIPS_PER_SENDER: Final = 2
"""Most of them from one participant."""
CLIP_KEEP_S: Final = 60.0
"""Seconds a received clip waits for the ``speak`` that plays it before it is dropped."""
CLIP_WAIT_S: Final = 5.0
"""Seconds a ``speak`` waits for its clip to finish arriving (it is usually there already)."""
CLIP_ARRIVAL_S: Final = 1.0
"""Seconds a ``speak`` waits for a clip not seen at all yet: the stream travels ahead of the
request on the same reliable channel, so one not there by then was not sent."""
DECODE_SAMPLE_RATE: Final = 48_000
"""Clips are decoded to mono at this rate unless the session's audio output asks for another."""


class ClipRefused(Exception):
    """The ``speak``'s clip cannot be played; ``code`` and ``message`` are the error ack's."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class _Clip:
    sender: str
    stream_id: str
    done: asyncio.Future[list[rtc.AudioFrame]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    sha256: str | None = None
    task: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None


class Clips:
    """The clips senders streamed to this agent, until a ``speak`` plays them.

    Args:
        accepts: Whether a participant may send clips (the plugin's trust rule).
        sample_rate: The rate clips are decoded to (read when a clip completes: the session's
            audio output may be set after the plugin starts).
    """

    def __init__(
        self, *, accepts: Callable[[str], bool], sample_rate: Callable[[], int | None]
    ) -> None:
        self._accepts = accepts
        self._sample_rate = sample_rate
        self._clips: dict[tuple[str, str], _Clip] = {}
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._clips)

    # ------------------------------------------------------------------------------------------
    # receiving (the room's byte stream handler: sync, it only starts the reading task)

    def on_byte_stream(self, reader: rtc.ByteStreamReader, participant_identity: str) -> None:
        try:
            self._receive(reader, participant_identity)
        except Exception:  # a room callback must never raise
            logger.exception("unexpected error receiving an audio clip")

    def _receive(self, reader: rtc.ByteStreamReader, sender: str) -> None:
        info = reader.info
        refusal = None
        if self._closed or not self._accepts(sender):
            refusal = "not trusted"
        elif info.size is not None and info.size > MAX_CLIP_BYTES:
            refusal = "too large"
        elif len(self._clips) >= MAX_PENDING_CLIPS or (
            sum(1 for s, _ in self._clips if s == sender) >= MAX_CLIPS_PER_SENDER
        ):
            refusal = "too many waiting"
        key = (sender, info.stream_id)
        if refusal is None and key in self._clips:
            refusal = "stream id reused"
        if refusal is not None:
            logger.info(
                "audio clip refused",
                extra={"sender": sender, "stream_id": info.stream_id, "why": refusal},
            )
            _discard(reader)
            if refusal == "too large":  # a speak naming it says so, rather than "not found"
                clip = self._hold(sender, info.stream_id)
                clip.done.set_exception(_too_large())
            return
        clip = self._hold(sender, info.stream_id)
        clip.task = asyncio.get_running_loop().create_task(
            self._read(clip, reader), name="imaginex_context.clip"
        )

    def _hold(self, sender: str, stream_id: str) -> _Clip:
        clip = _Clip(sender, stream_id)
        clip.done.add_done_callback(_retrieve)  # never "exception was never retrieved"
        self._clips[(sender, stream_id)] = clip
        clip.expiry = asyncio.get_running_loop().call_later(CLIP_KEEP_S, self._expire, clip)
        return clip

    async def _read(self, clip: _Clip, reader: rtc.ByteStreamReader) -> None:
        data = bytearray()
        try:
            async for chunk in reader:
                data += chunk
                if len(data) > MAX_CLIP_BYTES:
                    raise _too_large()
            clip.sha256 = hashlib.sha256(data).hexdigest()
            frames = await decode(bytes(data), reader.info.mime_type, self._sample_rate())
            clip.done.set_result(frames)
        except ClipRefused as exc:
            _discard(reader)
            if not clip.done.done():
                clip.done.set_exception(exc)
        except asyncio.CancelledError:
            _discard(reader)
            if not clip.done.done():
                clip.done.set_exception(ClipRefused(ErrorCode.NOT_READY, _SHUTTING_DOWN))
            raise
        except Exception:  # a stream that broke off, a reader that failed
            logger.info(
                "audio clip could not be received",
                exc_info=True,
                extra={"sender": clip.sender, "stream_id": clip.stream_id},
            )
            if not clip.done.done():
                clip.done.set_exception(
                    ClipRefused(ErrorCode.VALIDATION_ERROR, "The audio clip did not arrive whole.")
                )

    def _expire(self, clip: _Clip) -> None:
        if self._clips.get((clip.sender, clip.stream_id)) is clip:
            self._forget(clip)
            logger.info(
                "audio clip expired unplayed",
                extra={"sender": clip.sender, "stream_id": clip.stream_id},
            )

    def _forget(self, clip: _Clip) -> None:
        self._clips.pop((clip.sender, clip.stream_id), None)
        if clip.expiry is not None:
            clip.expiry.cancel()
        if clip.task is not None and not clip.task.done():
            clip.task.cancel()

    # ------------------------------------------------------------------------------------------
    # playing (the applier, for a speak naming a clip)

    async def take(self, sender: str | None, ref: AudioClipRef) -> list[rtc.AudioFrame]:
        """The decoded frames of the clip ``sender`` streamed as ``ref.stream_id`` (waiting up
        to ``CLIP_WAIT_S`` for it to finish arriving); the clip is used up either way.

        Raises:
            ClipRefused: No such clip from this sender, too large, too long, not decodable,
                not whole, or not the clip ``ref.sha256`` names.
        """
        clip = self._clips.get((sender, ref.stream_id)) if sender is not None else None
        if clip is None:
            # the stream's first chunk may still be on its way: give it a moment
            clip = await self._arrival(sender, ref.stream_id)
        try:
            frames = await asyncio.wait_for(asyncio.shield(clip.done), CLIP_WAIT_S)
        except asyncio.TimeoutError:
            raise ClipRefused(
                ErrorCode.VALIDATION_ERROR,
                f"The audio clip did not finish arriving within {CLIP_WAIT_S:g} s.",
            ) from None
        finally:
            self._forget(clip)
        if ref.sha256 is not None and ref.sha256 != clip.sha256:
            raise ClipRefused(
                ErrorCode.VALIDATION_ERROR, "The audio clip is not the one 'audio.sha256' names."
            )
        return frames

    async def _arrival(self, sender: str | None, stream_id: str) -> _Clip:
        if sender is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CLIP_ARRIVAL_S
            while loop.time() < deadline:
                await asyncio.sleep(0.02)
                clip = self._clips.get((sender, stream_id))
                if clip is not None:
                    return clip
        raise ClipRefused(
            ErrorCode.VALIDATION_ERROR,
            "No audio clip with this 'audio.stream_id' arrived from you: stream it to the agent "
            f"on the '{AUDIO_STREAM_TOPIC}' topic before the speak.",
        )

    async def aclose(self) -> None:
        """Drop every clip and stop reading. Idempotent."""
        self._closed = True
        tasks = [c.task for c in self._clips.values() if c.task is not None]
        for clip in list(self._clips.values()):
            self._forget(clip)
        await asyncio.gather(*tasks, return_exceptions=True)


async def decode(data: bytes, mime_type: str, sample_rate: int | None) -> list[rtc.AudioFrame]:
    """Decode a clip to mono frames with livekit-agents' decoder, refusing one longer than
    ``MAX_CLIP_S`` or one it cannot read.

    Raises:
        ClipRefused: Not audio the decoder reads, or too long.
    """
    rate = sample_rate or DECODE_SAMPLE_RATE
    decoder = AudioStreamDecoder(
        sample_rate=rate, num_channels=1, format=mime_type if "/" in mime_type else None
    )
    frames: list[rtc.AudioFrame] = []
    samples = 0
    limit = int(MAX_CLIP_S * rate)
    try:
        decoder.push(data)
        decoder.end_input()
        async for frame in decoder:
            samples += frame.samples_per_channel
            if samples > limit:
                raise ClipRefused(
                    ErrorCode.VALIDATION_ERROR,
                    f"The audio clip is longer than {MAX_CLIP_S:g} s, the most an agent plays.",
                )
            frames.append(frame)
    except ClipRefused:
        raise
    except Exception:
        logger.info("audio clip could not be decoded", exc_info=True)
        frames = []
    finally:
        await decoder.aclose()
    if not frames:
        raise ClipRefused(
            ErrorCode.VALIDATION_ERROR,
            "The audio clip could not be decoded: send WAV, MP3, Ogg/Opus, FLAC or AAC audio.",
        )
    return frames


async def replay(frames: list[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    """The frames as the audio stream ``AgentSession.say(audio=...)`` plays."""
    for frame in frames:
        yield frame


_SHUTTING_DOWN: Final = "The agent is shutting down."


def _too_large() -> ClipRefused:
    return ClipRefused(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"The audio clip is larger than {MAX_CLIP_BYTES:,} bytes, the most an agent takes.",
    )


def _discard(reader: rtc.ByteStreamReader) -> None:
    close = getattr(reader, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.debug("could not close an audio clip's reader", exc_info=True)


def _retrieve(future: asyncio.Future[list[rtc.AudioFrame]]) -> None:
    if not future.cancelled():
        future.exception()
