"""``start_session()``: a real, started ``AgentSession`` on the kit's fakes, without a room."""

from __future__ import annotations

from typing import Any

from livekit.agents import NOT_GIVEN, Agent, AgentSession, llm, tts
from livekit.agents.voice import io

from .audio import RecordingAudioOutput
from .llm import ScriptedLLM
from .tts import RecordingTTS


async def start_session(
    agent: Agent | None = None,
    *,
    llm_model: llm.LLM[Any] | llm.RealtimeModel | None = None,
    tts_model: tts.TTS[Any] | None = None,
    audio_output: io.AudioOutput | None = None,
    text_only: bool = False,
    no_tts: bool = False,
    **session_kwargs: Any,
) -> AgentSession[Any]:
    """Build and start a real ``AgentSession`` on the fakes, without a room.

    ``llm_model`` defaults to a ``ScriptedLLM`` and may be a realtime model (e.g.
    ``FakeRealtimeModel``); ``tts_model`` defaults to a ``RecordingTTS``, and ``no_tts=True``
    gives the session no TTS at all (as with a speech-to-speech model).
    ``audio_output`` defaults to a ``RecordingAudioOutput(speed=1.0)``; ``text_only=True``
    sets no audio output instead, so speech is text only and never reaches the TTS.
    ``vad=None`` and ``turn_detection: None`` keep the session from loading local models.
    Other keyword arguments go to ``AgentSession``; a ``turn_handling`` given there replaces
    the default one entirely. Close it with ``await session.aclose()``.
    """
    if text_only and audio_output is not None:
        raise ValueError("text_only sessions take no audio_output")
    if no_tts and tts_model is not None:
        raise ValueError("no_tts sessions take no tts_model")
    session_kwargs.setdefault("vad", None)
    # no turn detector model, and no resume_false_interruption: it needs a pausable sink
    # and would log a warning at start()
    session_kwargs.setdefault(
        "turn_handling",
        {"turn_detection": None, "interruption": {"resume_false_interruption": False}},
    )
    session: AgentSession[Any] = AgentSession(
        llm=llm_model if llm_model is not None else ScriptedLLM(),
        tts=NOT_GIVEN if no_tts else tts_model if tts_model is not None else RecordingTTS(),
        **session_kwargs,
    )
    if not text_only:
        # outputs must be in place before start(), which otherwise looks for a room
        session.output.audio = audio_output if audio_output is not None else RecordingAudioOutput()
    await session.start(agent if agent is not None else Agent(instructions="You are a test."))
    return session

