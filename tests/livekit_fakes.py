"""In-process fakes that let tests run the real LiveKit Agents runtime offline.

Nothing here is a mock: each fake is a small subclass of the real base class, so the real
``AgentSession`` and ``rtc.Room`` code runs around it, with no LiveKit server, no model API
keys and no local models.

Session side:

- ``ScriptedLLM``: an ``llm.LLM`` that answers each call with the next scripted string,
  streamed in a few chunks, and records the ``ChatContext`` (and per-turn instructions)
  each call saw.
- ``RecordingTTS``: a non-streaming ``tts.TTS`` (the session wraps it in a StreamAdapter,
  as usual) that synthesises silence whose length follows the text and records each text.
- ``RecordingAudioOutput``: a ``voice.io.AudioOutput`` sink that "plays" frames against the
  event-loop clock (``speed`` > 1 plays faster than real time), reports playback
  started/finished exactly as ``io.py`` asks of a sink, and records each segment.
- ``FakeRealtimeModel``: an ``llm.RealtimeModel`` (speech-to-speech, no TTS needed) whose
  ``FakeRealtimeSession`` answers ``generate_reply`` with text and silent audio, reads a
  verbatim-speech instruction back word for word, and records instructions and the chat
  context it held.
- ``start_session()``: builds and starts a real ``AgentSession`` wired to those fakes.

Room side:

- ``RelayNetwork``: an in-memory LiveKit "server". It creates ``LinkedRoom`` objects (a
  subclass of the real ``rtc.Room``) whose ``LinkedLocalParticipant`` (a subclass of the
  real ``rtc.LocalParticipant``) publishes data, performs and answers RPC and sets
  attributes without the native FFI. Events reach the other rooms through the real
  ``Room.emit`` on later loop iterations, as with the real SDK. Only data packets, RPC,
  attributes and join/leave are simulated; tracks and data streams are not.

Participants are built from real protobufs with handle id 0, which ``FfiHandle`` treats as
``INVALID_HANDLE``: disposing it (also at garbage collection) never reaches the FFI.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    Agent,
    AgentSession,
    APIConnectOptions,
    NotGivenOr,
    llm,
    tts,
    utils,
)
from livekit.agents.llm.chat_context import DYNAMIC_INSTRUCTIONS_MESSAGE_ID
from livekit.agents.voice import io
from livekit.agents.voice.generation import INSTRUCTIONS_MESSAGE_ID
from livekit.rtc._proto import handle_pb2, participant_pb2, room_pb2
from livekit.rtc.log import logger as rtc_logger
from livekit.rtc.participant import PublishDataError, RpcHandler

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Sequence

# the limit the SDK documents for RPC request and response payloads
MAX_RPC_PAYLOAD_BYTES = 15_360
# what perform_rpc waits for when the caller passes no response_timeout
DEFAULT_RPC_RESPONSE_TIMEOUT = 15.0

_F = TypeVar("_F", bound=RpcHandler)


# --------------------------------------------------------------------------- LLM


# NoReturn: no events beyond the base class's metrics_collected/error
class ScriptedLLM(llm.LLM[NoReturn]):
    """An LLM that replies with ``replies`` in order, then ``default_reply`` forever.

    ``calls`` holds a copy of the ``ChatContext`` of every call and ``instructions`` the
    per-turn instructions of the same call (``generate_reply(instructions=...)``), or None.
    ``replies`` is public so a test can queue more answers while the session runs.
    """

    def __init__(
        self, replies: Sequence[str] = (), *, default_reply: str = "ok", chunks: int = 3
    ) -> None:
        super().__init__()
        self.replies: list[str] = list(replies)
        self.default_reply = default_reply
        self.chunks = max(1, chunks)
        self.calls: list[llm.ChatContext] = []
        self.instructions: list[str | None] = []

    @property
    def model(self) -> str:
        return "scripted"

    @property
    def provider(self) -> str:
        return "livekit_fakes"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> ScriptedLLMStream:
        # the session goes on editing its context after the call, so keep a snapshot
        self.calls.append(chat_ctx.copy())
        self.instructions.append(_turn_instructions(chat_ctx))
        reply = self.replies.pop(0) if self.replies else self.default_reply
        return ScriptedLLMStream(
            self,
            reply=reply,
            chunks=self.chunks,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
        )


class ScriptedLLMStream(llm.LLMStream):
    """Streams one scripted reply as a few ``ChatChunk``s."""

    def __init__(
        self,
        scripted_llm: ScriptedLLM,
        *,
        reply: str,
        chunks: int,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(scripted_llm, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._reply = reply
        self._chunks = chunks

    async def _run(self) -> None:
        request_id = f"scripted-{uuid.uuid4().hex[:8]}"
        for piece in _split_words(self._reply, self._chunks):
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=piece))
            )
            # yield between chunks so consumers see a stream rather than one burst
            await asyncio.sleep(0)


def _turn_instructions(chat_ctx: llm.ChatContext) -> str | None:
    # generate_reply(instructions=...) appends them as a trailing system message
    # (AgentActivity._pipeline_reply_task); the agent's own instructions live under fixed
    # ids at the front. A system message a test appended itself is indistinguishable.
    if not chat_ctx.items:
        return None
    last = chat_ctx.items[-1]
    if (
        isinstance(last, llm.ChatMessage)
        and last.role == "system"
        and last.id not in (INSTRUCTIONS_MESSAGE_ID, DYNAMIC_INSTRUCTIONS_MESSAGE_ID)
    ):
        return last.text_content
    return None


def _split_words(text: str, parts: int) -> list[str]:
    """Split ``text`` at spaces into at most ``parts`` pieces that join back to ``text``."""
    words = text.split(" ")
    size = max(1, -(-len(words) // parts))
    groups = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [g + " " if i < len(groups) - 1 else g for i, g in enumerate(groups)]


# --------------------------------------------------------------------------- TTS


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
        return "livekit_fakes"

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


# --------------------------------------------------------------------------- audio output


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


# --------------------------------------------------------------------------- session


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


# --------------------------------------------------------------------------- rooms


@dataclass(frozen=True)
class PublishedData:
    """One data packet as it went through the ``RelayNetwork``."""

    room: str
    sender: str | None
    """Identity of the publisher; None for data sent with the server API."""
    payload: bytes
    topic: str
    destinations: tuple[str, ...]
    """The destination identities asked for; empty means everyone else in the room."""
    reliable: bool


def _owned(info: participant_pb2.ParticipantInfo) -> participant_pb2.OwnedParticipant:
    # handle id 0 is INVALID_HANDLE: FfiHandle.dispose() skips it, so no FFI call at GC
    return participant_pb2.OwnedParticipant(handle=handle_pb2.FfiOwnedHandle(id=0), info=info)


class RelayNetwork:
    """An in-memory LiveKit server relaying between ``LinkedRoom`` objects.

    Rooms are grouped by room name; within a name every connected room sees the others
    as remote participants. ``published`` records every data packet, client or server.
    """

    def __init__(self) -> None:
        self.published: list[PublishedData] = []
        self._rooms: dict[str, list[LinkedRoom]] = {}
        self._room_sids: dict[str, str] = {}
        self._ids = itertools.count(1)

    def create_room(
        self,
        room_name: str,
        identity: str,
        *,
        kind: participant_pb2.ParticipantKind.ValueType = (
            rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
        ),
        attributes: dict[str, str] | None = None,
        name: str = "",
        metadata: str = "",
        connected: bool = True,
    ) -> LinkedRoom:
        """A room joined as ``identity``; with ``connected=False`` it joins on ``connect()``.

        Must be called with the event loop running (``rtc.Room`` binds to it).
        """
        info = participant_pb2.ParticipantInfo(
            sid=f"PA_{next(self._ids)}",
            identity=identity,
            name=name,
            metadata=metadata,
            attributes=attributes or {},
            kind=kind,
            state=participant_pb2.PARTICIPANT_STATE_ACTIVE,
        )
        room = LinkedRoom(self, room_name, info)
        if connected:
            room._join()
        return room

    def rooms(self, room_name: str) -> list[LinkedRoom]:
        """The rooms connected under ``room_name``, in joining order."""
        return list(self._rooms.get(room_name, []))

    async def send_server_data(
        self,
        room_name: str,
        payload: bytes | str,
        *,
        topic: str = "",
        destination_identities: Sequence[str] = (),
        reliable: bool = True,
    ) -> None:
        """Send data as the server API does: receivers see ``participant=None``."""
        self._publish(room_name, None, payload, topic, destination_identities, reliable)
        await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Disconnect every room still connected."""
        for rooms in list(self._rooms.values()):
            for room in list(rooms):
                await room.disconnect()

    # -- used by LinkedRoom / LinkedLocalParticipant

    def _peers(self, room: LinkedRoom) -> list[LinkedRoom]:
        return [r for r in self._rooms.get(room.linked_name, []) if r is not room]

    def _add(self, room: LinkedRoom) -> str:
        members = self._rooms.setdefault(room.linked_name, [])
        identity = room.participant_info.identity
        if any(r.participant_info.identity == identity for r in members):
            raise ValueError(f"{identity!r} is already in room {room.linked_name!r}")
        for peer in members:
            info = participant_pb2.ParticipantInfo()
            info.CopyFrom(room.participant_info)
            peer._deliver(peer._on_remote_joined, info)
        members.append(room)
        return self._room_sids.setdefault(room.linked_name, f"RM_{next(self._ids)}")

    def _remove(self, room: LinkedRoom, reason: participant_pb2.DisconnectReason.ValueType) -> None:
        members = self._rooms.get(room.linked_name, [])
        if room in members:
            members.remove(room)
        for peer in members:
            peer._deliver(peer._on_remote_left, room.participant_info.identity, reason)

    def _publish(
        self,
        room_name: str,
        sender: LinkedRoom | None,
        payload: bytes | str,
        topic: str,
        destinations: Sequence[str],
        reliable: bool,
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        sender_identity = sender.participant_info.identity if sender is not None else None
        self.published.append(
            PublishedData(
                room=room_name,
                sender=sender_identity,
                payload=data,
                topic=topic,
                destinations=tuple(destinations),
                reliable=reliable,
            )
        )
        kind = rtc.DataPacketKind.KIND_RELIABLE if reliable else rtc.DataPacketKind.KIND_LOSSY
        for room in self._rooms.get(room_name, []):
            if room is sender:
                continue
            if destinations and room.participant_info.identity not in destinations:
                continue
            room._deliver(room._on_data, sender_identity, data, kind, topic)

    def _set_attributes(self, room: LinkedRoom, attributes: dict[str, str]) -> None:
        info = room.participant_info
        old = dict(info.attributes)
        new = dict(old)
        for key, value in attributes.items():
            if value:
                new[key] = value
            else:
                new.pop(key, None)  # an empty value deletes the key, as on the server
        changed = {k: new.get(k, "") for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if not changed:
            return
        info.attributes.clear()
        info.attributes.update(new)
        # every participant hears about it, the one that changed included
        for member in self._rooms.get(room.linked_name, []):
            member._deliver(member._on_attributes_changed, info.identity, new, changed)

    async def _perform_rpc(self, caller: LinkedRoom, call: rtc.RpcCallInfo) -> str:
        if not caller.isconnected():
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.SEND_FAILED)
        if len(call.payload.encode()) > MAX_RPC_PAYLOAD_BYTES:
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.REQUEST_PAYLOAD_TOO_LARGE)
        dest = next(
            (
                r
                for r in self._peers(caller)
                if r.participant_info.identity == call.destination_identity
            ),
            None,
        )
        if dest is None:
            # answered at once; a real caller may only get CONNECTION_TIMEOUT after
            # max_round_trip_latency (7 s) when nobody acknowledges the request
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND)

        invocation = rtc.RpcInvocationData(
            request_id=str(uuid.uuid4()),
            caller_identity=caller.participant_info.identity,
            payload=call.payload,
            response_timeout=(
                call.response_timeout
                if call.response_timeout is not None
                else DEFAULT_RPC_RESPONSE_TIMEOUT
            ),
            method=call.method,
        )
        # the handler runs as a task of the destination room, as the real SDK runs it;
        # disconnect() drains these tasks (the caller then gets RECIPIENT_DISCONNECTED)
        task = dest._loop.create_task(dest.local_participant._answer_rpc(invocation))
        dest._rpc_invocation_tasks.add(task)
        task.add_done_callback(dest._rpc_invocation_tasks.discard)
        # a caller cancelled mid-call leaves the handler running; its outcome is then
        # nobody's, so retrieve it here to keep "exception never retrieved" out of the log
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.wait([task])
        return task.result()


class LinkedLocalParticipant(rtc.LocalParticipant):
    """The real ``LocalParticipant`` with its FFI-backed calls routed through the network.

    Supported: ``publish_data``, ``perform_rpc`` (interceptors included),
    ``register_rpc_method`` / ``unregister_rpc_method`` and ``set_attributes``. The rest
    (tracks, data streams, metadata, ...) still needs a real server.
    """

    def __init__(self, room: LinkedRoom, owned_info: participant_pb2.OwnedParticipant) -> None:
        super().__init__(room._room_queue, owned_info)
        self._linked_room = room

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: Sequence[str] = (),
        topic: str = "",
    ) -> None:
        room = self._linked_room
        if not room.isconnected():
            raise PublishDataError("the room is not connected")
        room.network._publish(
            room.linked_name, room, payload, topic, destination_identities, reliable
        )
        await asyncio.sleep(0)  # the real call awaits the FFI's acknowledgement

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        # the local view changes when the server's event comes back, as in the real SDK
        self._linked_room.network._set_attributes(self._linked_room, attributes)
        await asyncio.sleep(0)

    def register_rpc_method(
        self, method_name: str, handler: _F | None = None
    ) -> _F | Callable[[_F], _F]:
        # same dict as the real method, without telling the FFI
        def register(handler_func: _F) -> _F:
            self._rpc_handlers[method_name] = handler_func
            return handler_func

        return register(handler) if handler is not None else register

    def unregister_rpc_method(self, method: str) -> None:
        self._rpc_handlers.pop(method, None)

    async def _perform_rpc_ffi(self, call: rtc.RpcCallInfo) -> str:
        return await self._linked_room.network._perform_rpc(self._linked_room, call)

    async def _answer_rpc(self, invocation: rtc.RpcInvocationData) -> str:
        """Answer one invocation as ``_handle_rpc_method_invocation`` does, minus the FFI."""
        try:
            # the real chain: interceptors, UNSUPPORTED_METHOD, deadline, disconnect
            response = await self._run_incoming_chain(invocation)
        except rtc.RpcError as e:
            # the caller gets a copy rebuilt from the wire, not the handler's object
            raise rtc.RpcError(e.code, e.message, e.data) from None
        except Exception:
            # logged where and as the SDK logs it, for tests that watch the "livekit" logger
            rtc_logger.exception(
                "Uncaught error returned by RPC handler for %s. Returning APPLICATION_ERROR",
                invocation.method,
            )
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.APPLICATION_ERROR) from None
        payload = response or ""
        if len(payload.encode()) > MAX_RPC_PAYLOAD_BYTES:
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.RESPONSE_PAYLOAD_TOO_LARGE)
        return payload


class LinkedRoom(rtc.Room):
    """A real ``rtc.Room`` connected to a ``RelayNetwork`` instead of a LiveKit server.

    Before ``connect()`` it looks like an unconnected real room; after it, it is connected
    with ``name`` the room name and the other rooms of that name as remote participants.
    """

    def __init__(
        self, network: RelayNetwork, room_name: str, info: participant_pb2.ParticipantInfo
    ) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        self.network = network
        self.linked_name = room_name
        # this participant as the network knows it: what peers see when they meet it
        self.participant_info = info
        self._linked = False

    @property
    def local_participant(self) -> LinkedLocalParticipant:
        participant = super().local_participant
        assert isinstance(participant, LinkedLocalParticipant)
        return participant

    def isconnected(self) -> bool:
        # the real check also wants an FFI room handle, which this room never has
        return self._linked and self._connection_state != rtc.ConnectionState.CONN_DISCONNECTED

    async def connect(
        self, url: str = "", token: str = "", options: rtc.RoomOptions | None = None
    ) -> None:
        """Join the network. Like rtc 1.1.21, emits no ``connected`` event."""
        if self.isconnected():
            return
        self._join()
        await asyncio.sleep(0)

    async def disconnect(
        self,
        *,
        reason: participant_pb2.DisconnectReason.ValueType = (
            rtc.DisconnectReason.CLIENT_INITIATED
        ),
    ) -> None:
        if not self.isconnected():
            return
        self.network._remove(self, reason)
        await self._drain_rpc_invocation_tasks()
        # the same ending as the real disconnect()
        self.local_participant._info.disconnect_reason = reason
        self._connection_state = rtc.ConnectionState.CONN_DISCONNECTED
        self.emit("connection_state_changed", self._connection_state)
        self.emit("disconnected", reason)

    def _join(self) -> None:
        # what the real connect() sets from the server's answer; it emits nothing
        sid = self.network._add(self)
        self._info = room_pb2.RoomInfo(sid=sid, name=self.linked_name)
        self._resolve_first_sid(sid)
        self._local_participant = LinkedLocalParticipant(self, _owned(self.participant_info))
        self._remote_participants.clear()
        for peer in self.network._peers(self):
            self._create_remote_participant(_owned(peer.participant_info))
        self._connection_state = rtc.ConnectionState.CONN_CONNECTED
        self._linked = True

    def _deliver(self, handler: Callable[..., None], *args: Any) -> None:
        # events come in on later loop iterations, in the order they were sent
        self._loop.call_soon(self._run_if_connected, handler, args)

    def _run_if_connected(self, handler: Callable[..., None], args: tuple[Any, ...]) -> None:
        if self.isconnected():
            handler(*args)

    def _on_remote_joined(self, info: participant_pb2.ParticipantInfo) -> None:
        if info.identity in self._remote_participants:
            return  # met already when this room (re)joined
        participant = self._create_remote_participant(_owned(info))
        self.emit("participant_connected", participant)

    def _on_remote_left(
        self, identity: str, reason: participant_pb2.DisconnectReason.ValueType
    ) -> None:
        participant = self._remote_participants.pop(identity, None)
        if participant is not None:
            participant._info.disconnect_reason = reason
            self.emit("participant_disconnected", participant)

    def _on_attributes_changed(
        self, identity: str, attributes: dict[str, str], changed: dict[str, str]
    ) -> None:
        participant = self._retrieve_participant(identity)
        if participant is None:
            return
        participant._info.attributes.clear()
        participant._info.attributes.update(attributes)
        self.emit("participant_attributes_changed", changed, participant)

    def _on_data(
        self,
        sender: str | None,
        data: bytes,
        kind: room_pb2.DataPacketKind.ValueType,
        topic: str,
    ) -> None:
        # like the real room: the sender as this room knows it, None for the server API
        participant = self._remote_participants.get(sender) if sender is not None else None
        self.emit(
            "data_received",
            rtc.DataPacket(data=data, kind=kind, participant=participant, topic=topic),
        )


# --------------------------------------------------------------------------- realtime model

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
        return "livekit_fakes"

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
                _split_words(text, self._fake_model.chunks) if isinstance(text, str) else text
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
