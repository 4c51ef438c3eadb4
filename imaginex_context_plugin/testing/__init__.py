"""Test your own agent with the plugin: a real ``AgentSession`` offline, no server, no API keys.

Nothing here is a mock: each fake is a small subclass of a public LiveKit Agents base class, so
the real session code runs around it, with no LiveKit server, no model API keys and no local
models.

- :class:`ScriptedLLM`: an ``llm.LLM`` that answers each call with the next scripted string,
  streamed in a few chunks, and records the ``ChatContext`` (and per-turn instructions) each
  call saw; past the script, ``default_reply`` answers (:func:`reply_from_context`: from what
  the plugin added, for a demo or a worker without a model).
- :class:`RecordingTTS`: a non-streaming ``tts.TTS`` (the session wraps it in a StreamAdapter,
  as usual) that synthesises silence whose length follows the text and records each text.
- :class:`RecordingAudioOutput`: a ``voice.io.AudioOutput`` sink that "plays" frames against
  the event-loop clock (``speed`` > 1 plays faster than real time), reports playback
  started/finished exactly as a real sink must, and records each :class:`PlayedSegment`.
- :func:`start_session`: builds and starts a real ``AgentSession`` wired to those fakes.
- :class:`OfflineRoom`: a real ``rtc.Room`` that never connects and reports the name you give
  it, to start the plugin on without a server.

Feed the plugin with :meth:`ContextPlugin.ingest` (the exact path room bytes take) and catch
its answers with an ``AckTransport`` subclass; ``docs/testing.md`` shows a complete test.
"""

from __future__ import annotations

from .audio import PlayedSegment, RecordingAudioOutput
from .llm import ScriptedLLM, ScriptedLLMStream, reply_from_context
from .room import OfflineRoom
from .session import start_session
from .tts import RecordingChunkedStream, RecordingTTS

__all__ = [
    "OfflineRoom",
    "PlayedSegment",
    "RecordingAudioOutput",
    "RecordingChunkedStream",
    "RecordingTTS",
    "ScriptedLLM",
    "ScriptedLLMStream",
    "reply_from_context",
    "start_session",
]
