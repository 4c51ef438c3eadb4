"""In-process fakes that let tests run the real LiveKit Agents runtime offline, one per module.

Nothing here is a mock: each fake is a small subclass of the real base class.

- session side, from the public kit ``imaginex_context_plugin.testing`` (re-exported here so
  tests import every fake from one place): ``ScriptedLLM``, ``RecordingTTS``,
  ``RecordingAudioOutput``, ``start_session``;
- ``llm``: ``UnreachableLLM``, a model whose provider is down;
- ``realtime``: ``FakeRealtimeModel`` / ``FakeRealtimeSession``, a speech-to-speech model;
- ``network``: ``RelayNetwork``, an in-memory LiveKit server relaying between ``LinkedRoom``
  objects (real ``rtc.Room`` subclasses). It needs the SDK's private protobuf modules, so it
  stays with the tests.
"""

from __future__ import annotations

from imaginex_context_plugin.testing import (
    PlayedSegment,
    RecordingAudioOutput,
    RecordingChunkedStream,
    RecordingTTS,
    ScriptedLLM,
    ScriptedLLMStream,
    start_session,
)

from .llm import UnreachableLLM
from .network import (
    DEFAULT_RPC_RESPONSE_TIMEOUT,
    MAX_RPC_PAYLOAD_BYTES,
    LinkedLocalParticipant,
    LinkedRoom,
    PublishedData,
    RelayNetwork,
)
from .realtime import (
    REALTIME_SAMPLE_RATE,
    VERBATIM_MARKER,
    FakeRealtimeModel,
    FakeRealtimeSession,
    RealtimeTruncation,
)

__all__ = [
    "DEFAULT_RPC_RESPONSE_TIMEOUT",
    "MAX_RPC_PAYLOAD_BYTES",
    "REALTIME_SAMPLE_RATE",
    "VERBATIM_MARKER",
    "FakeRealtimeModel",
    "FakeRealtimeSession",
    "LinkedLocalParticipant",
    "LinkedRoom",
    "PlayedSegment",
    "PublishedData",
    "RealtimeTruncation",
    "RecordingAudioOutput",
    "RecordingChunkedStream",
    "RecordingTTS",
    "RelayNetwork",
    "ScriptedLLM",
    "ScriptedLLMStream",
    "UnreachableLLM",
    "start_session",
]
