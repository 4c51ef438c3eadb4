"""Sending a pre-recorded clip for ``speak(audio=...)`` (protocol v1.3).

The clip goes first, as a LiveKit byte stream to the agent alone on ``AUDIO_STREAM_TOPIC``
(data streams carry it beyond the 15 KiB packet limit, split and reassembled by LiveKit), under
a stream id chosen here; the ``speak`` request then names that id and the clip's SHA-256, so a
signed request vouches for the clip too. The agent keeps a clip for a minute waiting for its
``speak``; a retry of the same request reuses the clip already sent.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import uuid
from dataclasses import dataclass
from typing import Final

from livekit import rtc

from ..errors import ErrorCode
from ..protocol import AUDIO_STREAM_TOPIC, MAX_CLIP_BYTES
from ..request_errors import ContextError

CLIP_CHUNK_BYTES: Final = 64 * 1024
"""Bytes handed to the stream writer at a time (LiveKit splits them into packets itself)."""

# the first bytes of the formats the agent's decoder reads, for a clip given as bytes
_MAGIC: Final = (
    (b"RIFF", "audio/wav"),
    (b"ID3", "audio/mpeg"),
    (b"\xff\xfb", "audio/mpeg"),
    (b"\xff\xf3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
)


@dataclass(frozen=True)
class AudioClip:
    """A clip to play: its encoded bytes and their MIME type."""

    data: bytes
    mime_type: str

    @classmethod
    def of(cls, audio: bytes | str | os.PathLike[str], mime_type: str | None = None) -> AudioClip:
        """A clip from bytes (WAV, MP3, Ogg/Opus, FLAC, AAC ...) or a file's path.

        Raises:
            ContextError: ``PAYLOAD_TOO_LARGE`` over ``MAX_CLIP_BYTES``, ``VALIDATION_ERROR``
                for an empty clip.
            OSError: The file cannot be read.
        """
        if isinstance(audio, bytes | bytearray):
            data = bytes(audio)
            guessed = next((m for magic, m in _MAGIC if data.startswith(magic)), None)
        else:
            path = os.fspath(audio)
            with open(path, "rb") as file:
                data = file.read(MAX_CLIP_BYTES + 1)
            guessed = mimetypes.guess_type(path)[0]
        if not data:
            raise ContextError(
                ErrorCode.VALIDATION_ERROR, "The audio clip is empty.", retryable=False
            )
        if len(data) > MAX_CLIP_BYTES:
            raise ContextError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"The audio clip is larger than {MAX_CLIP_BYTES:,} bytes, the most an agent "
                "takes.",
                retryable=False,
            )
        return cls(data, mime_type or guessed or "application/octet-stream")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


async def send_clip(room: rtc.Room, agent: str, clip: AudioClip) -> dict[str, str]:
    """Stream ``clip`` to ``agent``; returns the request's ``audio`` field.

    Raises:
        ContextError: ``LIVEKIT_UNAVAILABLE`` when the stream could not be sent.
    """
    stream_id = f"imaginex-clip-{uuid.uuid4().hex}"
    try:
        writer = await room.local_participant.stream_bytes(
            "clip",
            total_size=len(clip.data),
            mime_type=clip.mime_type,
            stream_id=stream_id,
            destination_identities=[agent],
            topic=AUDIO_STREAM_TOPIC,
        )
        for start in range(0, len(clip.data), CLIP_CHUNK_BYTES):
            await writer.write(clip.data[start : start + CLIP_CHUNK_BYTES])
        await writer.aclose()
    except Exception as exc:
        raise ContextError(
            ErrorCode.LIVEKIT_UNAVAILABLE,
            "The audio clip could not be streamed to the agent.",
            retryable=True,
        ) from exc
    return {"stream_id": stream_id, "sha256": clip.sha256}
