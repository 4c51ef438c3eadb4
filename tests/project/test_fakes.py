"""Proof that the fakes drive the real LiveKit runtime correctly.

The fakes are those of ``tests.fakes``, the public ``imaginex_context_plugin.testing`` kit
included.

Every test runs the real ``AgentSession`` or real ``rtc.Room`` code around the fakes, so a
change in livekit-agents' behaviour that the fakes rely on shows up here first.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import TYPE_CHECKING, Any

import pytest
from livekit import rtc
from livekit.agents import Agent
from livekit.agents.voice import io
from livekit.rtc.participant import PublishDataError

from tests.fakes import (
    DEFAULT_RPC_RESPONSE_TIMEOUT,
    LinkedLocalParticipant,
    RecordingAudioOutput,
    RecordingTTS,
    RelayNetwork,
    ScriptedLLM,
    start_session,
)
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from livekit.rtc.room import EventTypes



def silence(seconds: float, sample_rate: int = 24_000) -> rtc.AudioFrame:
    samples = round(seconds * sample_rate)
    return rtc.AudioFrame(
        data=bytes(2 * samples),
        sample_rate=sample_rate,
        num_channels=1,
        samples_per_channel=samples,
    )


# --------------------------------------------------------------------------- audio output


async def test_audio_output_plays_a_flushed_segment_in_scaled_time() -> None:
    audio = RecordingAudioOutput(speed=10.0)
    started: list[io.PlaybackStartedEvent] = []
    audio.on("playback_started", started.append)

    t0 = time.monotonic()
    for _ in range(5):
        await audio.capture_frame(silence(0.1))
    audio.flush()
    ev = await audio.wait_for_playout()
    elapsed = time.monotonic() - t0

    assert len(started) == 1
    assert not ev.interrupted
    assert ev.playback_position == pytest.approx(0.5)
    # 0.5 s of audio at 10x speed
    assert 0.04 <= elapsed < 0.45
    assert len(audio.segments) == 1
    assert audio.segments[0].played == pytest.approx(0.5)
    assert audio.segments[0].started_at == started[0].created_at


async def test_audio_output_clear_buffer_cuts_the_segment() -> None:
    audio = RecordingAudioOutput(speed=1.0)
    await audio.capture_frame(silence(2.0))
    audio.flush()
    await asyncio.sleep(0.1)

    audio.clear_buffer()
    ev = await asyncio.wait_for(audio.wait_for_playout(), 0.5)

    assert ev.interrupted
    # stopped where the playhead was: after the 0.1 s sleep, well before the 2 s end
    assert 0.09 < ev.playback_position < 1.5
    assert audio.segments[-1].interrupted
    assert audio.segments[-1].captured == pytest.approx(2.0)
    assert not audio.playing


async def test_audio_output_clear_before_flush_drops_the_rest() -> None:
    audio = RecordingAudioOutput(speed=1.0)
    await audio.capture_frame(silence(1.0))
    audio.clear_buffer()
    await audio.capture_frame(silence(1.0))  # dropped: the segment was cleared
    audio.flush()
    ev = await asyncio.wait_for(audio.wait_for_playout(), 0.5)

    assert ev.interrupted
    assert ev.playback_position < 0.1
    assert audio.segments[-1].captured == pytest.approx(1.0)


async def test_audio_output_idle_calls_report_nothing() -> None:
    audio = RecordingAudioOutput()
    finished: list[io.PlaybackFinishedEvent] = []
    audio.on("playback_finished", finished.append)

    audio.clear_buffer()
    audio.flush()
    await asyncio.sleep(0.01)

    assert finished == []
    assert audio.captured_playout_segments == 0


# --------------------------------------------------------------------------- session


async def test_say_plays_through_tts_and_audio_output() -> None:
    tts_model = RecordingTTS()
    audio = RecordingAudioOutput(speed=1.0)
    started: list[io.PlaybackStartedEvent] = []
    finished: list[io.PlaybackFinishedEvent] = []
    audio.on("playback_started", started.append)
    audio.on("playback_finished", finished.append)
    session = await start_session(tts_model=tts_model, audio_output=audio)
    try:
        handle = session.say("Hello there.", allow_interruptions=False)
        await asyncio.wait_for(handle.wait_for_playout(), 2.0)

        assert handle.done()
        assert not handle.interrupted
        assert tts_model.texts == ["Hello there."]
        assert len(audio.segments) == 1
        segment = audio.segments[0]
        assert not segment.interrupted
        assert segment.played == segment.captured
        # the session's StreamAdapter may add a 10 ms end marker
        assert segment.captured >= tts_model.duration_for("Hello there.")
        assert [ev.created_at for ev in started] == [segment.started_at]
        assert [ev.playback_position for ev in finished] == [segment.played]
        assert session.history.messages()[-1].text_content == "Hello there."
    finally:
        await session.aclose()


async def test_say_in_a_text_only_session_skips_the_tts() -> None:
    tts_model = RecordingTTS()
    session = await start_session(tts_model=tts_model, text_only=True)
    try:
        handle = session.say("Just text.")
        await asyncio.wait_for(handle.wait_for_playout(), 2.0)

        assert not handle.interrupted
        assert tts_model.texts == []
        assert session.output.audio is None
        assert session.history.messages()[-1].text_content == "Just text."
    finally:
        await session.aclose()


async def test_interrupt_cuts_playout() -> None:
    tts_model = RecordingTTS(seconds_per_char=0.1)  # about 4 s of audio
    audio = RecordingAudioOutput(speed=1.0)
    session = await start_session(tts_model=tts_model, audio_output=audio)
    try:
        t0 = time.monotonic()
        handle = session.say("This sentence is long enough to be cut.", allow_interruptions=True)
        await wait_until(lambda: audio.playing)
        await asyncio.sleep(0.1)

        await session.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), 1.0)

        assert handle.interrupted
        assert time.monotonic() - t0 < 2.5
        segment = audio.segments[-1]
        assert segment.interrupted
        assert 0.05 < segment.played < segment.captured
    finally:
        await session.aclose()


async def test_uninterruptible_speech_refuses_interrupt() -> None:
    tts_model = RecordingTTS(seconds_per_char=0.1)  # about 0.27 s at 10x
    audio = RecordingAudioOutput(speed=10.0)
    session = await start_session(tts_model=tts_model, audio_output=audio)
    try:
        handle = session.say("Do not stop me now, please.", allow_interruptions=False)
        await wait_until(lambda: audio.playing)

        with pytest.raises(RuntimeError):
            session.interrupt()
        await asyncio.wait_for(handle.wait_for_playout(), 2.0)

        assert not handle.interrupted
        assert not audio.segments[-1].interrupted
    finally:
        await session.aclose()


async def test_generate_reply_sees_context_added_through_update_chat_ctx() -> None:
    llm_model = ScriptedLLM(["Hi Ada. Nice to meet you."])
    tts_model = RecordingTTS()
    agent = Agent(instructions="Be brief.")
    session = await start_session(
        agent, llm_model=llm_model, tts_model=tts_model, audio_output=RecordingAudioOutput(speed=4)
    )
    try:
        ctx = agent.chat_ctx.copy()
        ctx.add_message(role="user", content="My name is Ada.", id="ctx-1")
        await agent.update_chat_ctx(ctx)

        handle = session.generate_reply(instructions="Greet the user by name.")
        await asyncio.wait_for(handle.wait_for_playout(), 2.0)

        assert not handle.interrupted
        assert len(llm_model.calls) == 1
        seen = llm_model.calls[0]
        assert seen.get_by_id("ctx-1") is not None
        assert [m.text_content for m in seen.messages()][:2] == ["Be brief.", "My name is Ada."]
        assert llm_model.instructions == ["Greet the user by name."]
        assert "".join(tts_model.texts).replace(" ", "") == "HiAda.Nicetomeetyou."
        assert session.history.messages()[-1].text_content == "Hi Ada. Nice to meet you."
    finally:
        await session.aclose()


async def test_scripted_llm_falls_back_to_the_default_reply() -> None:
    llm_model = ScriptedLLM(["first"], default_reply="fallback")
    session = await start_session(llm_model=llm_model, text_only=True)
    try:
        for _ in range(2):
            await asyncio.wait_for(session.generate_reply().wait_for_playout(), 2.0)

        replies = [m.text_content for m in session.history.messages() if m.role == "assistant"]
        assert replies == ["first", "fallback"]
        assert llm_model.instructions == [None, None]
    finally:
        await session.aclose()


# --------------------------------------------------------------------------- rooms


@pytest.fixture
async def network() -> AsyncIterator[RelayNetwork]:
    net = RelayNetwork()
    yield net
    await net.aclose()


def collect(room: rtc.Room, event: EventTypes) -> asyncio.Queue[Any]:
    """Queue every ``event`` the room emits (callbacks must be sync: Room.on refuses async)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    room.on(event, lambda *args: queue.put_nowait(args[0] if len(args) == 1 else args))
    return queue


async def test_linked_room_looks_connected(network: RelayNetwork) -> None:
    room = network.create_room(
        "r1",
        "agent-1",
        kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT,
        attributes={"role": "agent"},
    )

    assert isinstance(room, rtc.Room)
    assert room.isconnected()
    assert room.name == "r1"
    assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
    assert (await room.sid).startswith("RM_")
    lp = room.local_participant
    assert isinstance(lp, rtc.LocalParticipant)
    assert isinstance(lp, LinkedLocalParticipant)
    assert lp.identity == "agent-1"
    assert lp.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert lp.attributes == {"role": "agent"}


async def test_data_travels_with_the_sender_identity(network: RelayNetwork) -> None:
    agent_room = network.create_room(
        "r1", "agent-1", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, attributes={"a": "1"}
    )
    user_room = network.create_room("r1", "user-1")
    agent_inbox = collect(agent_room, "data_received")
    user_inbox = collect(user_room, "data_received")

    await user_room.local_participant.publish_data(b"hello", topic="chat")
    await agent_room.local_participant.publish_data("hey", topic="reply", reliable=False)

    to_agent: rtc.DataPacket = await asyncio.wait_for(agent_inbox.get(), 1.0)
    assert to_agent.data == b"hello"
    assert to_agent.topic == "chat"
    assert to_agent.kind == rtc.DataPacketKind.KIND_RELIABLE
    assert isinstance(to_agent.participant, rtc.RemoteParticipant)
    assert to_agent.participant.identity == "user-1"
    assert to_agent.participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    # the packet names the same object the room lists
    assert to_agent.participant is agent_room.remote_participants["user-1"]

    to_user: rtc.DataPacket = await asyncio.wait_for(user_inbox.get(), 1.0)
    assert to_user.data == b"hey"
    assert to_user.kind == rtc.DataPacketKind.KIND_LOSSY
    assert to_user.participant is not None
    assert to_user.participant.identity == "agent-1"
    assert to_user.participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    assert to_user.participant.attributes == {"a": "1"}

    assert [(p.sender, p.payload, p.topic) for p in network.published] == [
        ("user-1", b"hello", "chat"),
        ("agent-1", b"hey", "reply"),
    ]


async def test_data_arrives_on_a_later_loop_iteration_in_order(network: RelayNetwork) -> None:
    sender = network.create_room("r1", "sender")
    receiver = network.create_room("r1", "receiver")
    received: list[bytes] = []
    receiver.on("data_received", lambda p: received.append(p.data))

    first = asyncio.ensure_future(sender.local_participant.publish_data(b"first"))
    await asyncio.sleep(0)
    # the packet has gone out, but it reaches the receiver only on a later iteration
    assert [p.payload for p in network.published] == [b"first"]
    assert received == []
    await first
    await wait_until(lambda: received == [b"first"])

    received.clear()
    for i in range(10):
        await sender.local_participant.publish_data(f"{i}")
    await wait_until(lambda: len(received) == 10)

    assert received == [f"{i}".encode() for i in range(10)]


async def test_destination_identities_filter_receivers(network: RelayNetwork) -> None:
    agent_room = network.create_room("r1", "agent")
    user1 = network.create_room("r1", "user-1")
    user2 = network.create_room("r1", "user-2")
    other_room = network.create_room("r2", "user-3")
    inbox1 = collect(user1, "data_received")
    inbox2 = collect(user2, "data_received")
    inbox3 = collect(other_room, "data_received")

    await agent_room.local_participant.publish_data(b"only-1", destination_identities=["user-1"])
    await agent_room.local_participant.publish_data(b"all")

    assert (await asyncio.wait_for(inbox1.get(), 1.0)).data == b"only-1"
    assert (await asyncio.wait_for(inbox1.get(), 1.0)).data == b"all"
    # per-destination order: if user-2 had got "only-1" it would come first
    assert (await asyncio.wait_for(inbox2.get(), 1.0)).data == b"all"
    assert inbox2.empty()
    assert inbox3.empty()  # another room name never hears it
    assert network.published[0].destinations == ("user-1",)


async def test_server_data_has_no_participant(network: RelayNetwork) -> None:
    agent_room = network.create_room("r1", "agent")
    user_room = network.create_room("r1", "user")
    agent_inbox = collect(agent_room, "data_received")
    user_inbox = collect(user_room, "data_received")

    await network.send_server_data("r1", b"to-agent", topic="srv", destination_identities=["agent"])
    await network.send_server_data("r1", b"to-all")

    packet: rtc.DataPacket = await asyncio.wait_for(agent_inbox.get(), 1.0)
    assert (packet.data, packet.participant, packet.topic) == (b"to-agent", None, "srv")
    assert (await asyncio.wait_for(agent_inbox.get(), 1.0)).data == b"to-all"
    assert (await asyncio.wait_for(user_inbox.get(), 1.0)).data == b"to-all"
    assert network.published[0].sender is None


async def test_rpc_round_trip_with_sync_and_async_handlers(network: RelayNetwork) -> None:
    agent_room = network.create_room("r1", "agent")
    user_room = network.create_room("r1", "user")
    seen: list[rtc.RpcInvocationData] = []

    async def echo(data: rtc.RpcInvocationData) -> str:
        seen.append(data)
        await asyncio.sleep(0)
        return f"{data.caller_identity}:{data.payload}"

    def shout(data: rtc.RpcInvocationData) -> str:
        return data.payload.upper()

    agent_room.local_participant.register_rpc_method("echo", echo)
    agent_room.local_participant.register_rpc_method("shout", shout)

    lp = user_room.local_participant
    assert await lp.perform_rpc(destination_identity="agent", method="echo", payload="x") == (
        "user:x"
    )
    assert await lp.perform_rpc(destination_identity="agent", method="shout", payload="hi") == "HI"

    assert seen[0].caller_identity == "user"
    assert seen[0].method == "echo"
    assert seen[0].request_id
    assert seen[0].response_timeout == DEFAULT_RPC_RESPONSE_TIMEOUT


async def _raise_rpc_error(data: rtc.RpcInvocationData) -> str:
    raise rtc.RpcError(4001, "nope", "details")


def _raise_value_error(data: rtc.RpcInvocationData) -> str:
    raise ValueError("boom")


async def _too_slow(data: rtc.RpcInvocationData) -> str:
    await asyncio.sleep(5)
    return "late"


@pytest.mark.parametrize(
    ("destination", "method", "expected_code"),
    [
        ("nobody", "ok", rtc.RpcError.ErrorCode.RECIPIENT_NOT_FOUND),
        ("agent", "missing", rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD),
        ("agent", "unregistered", rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD),
        ("agent", "rpc_error", 4001),
        ("agent", "value_error", rtc.RpcError.ErrorCode.APPLICATION_ERROR),
        ("agent", "slow", rtc.RpcError.ErrorCode.RESPONSE_TIMEOUT),
    ],
)
async def test_rpc_errors_map_like_the_sdk(
    network: RelayNetwork, destination: str, method: str, expected_code: int
) -> None:
    agent_lp = network.create_room("r1", "agent").local_participant
    user_lp = network.create_room("r1", "user").local_participant
    agent_lp.register_rpc_method("ok", lambda data: "ok")
    agent_lp.register_rpc_method("unregistered", lambda data: "ok")
    agent_lp.unregister_rpc_method("unregistered")
    agent_lp.register_rpc_method("rpc_error", _raise_rpc_error)
    agent_lp.register_rpc_method("value_error", _raise_value_error)
    agent_lp.register_rpc_method("slow", _too_slow)

    with pytest.raises(rtc.RpcError) as info:
        await user_lp.perform_rpc(
            destination_identity=destination, method=method, payload="", response_timeout=0.1
        )

    assert info.value.code == expected_code
    if expected_code == 4001:
        assert (info.value.message, info.value.data) == ("nope", "details")


async def test_rpc_to_a_recipient_that_disconnects(network: RelayNetwork) -> None:
    agent_room = network.create_room("r1", "agent")
    user_room = network.create_room("r1", "user")
    entered = asyncio.Event()

    async def hang(data: rtc.RpcInvocationData) -> str:
        entered.set()
        await asyncio.Event().wait()
        return "never"

    agent_room.local_participant.register_rpc_method("hang", hang)
    call = asyncio.ensure_future(
        user_room.local_participant.perform_rpc(
            destination_identity="agent", method="hang", payload=""
        )
    )
    await asyncio.wait_for(entered.wait(), 1.0)
    await agent_room.disconnect()

    with pytest.raises(rtc.RpcError) as info:
        await asyncio.wait_for(call, 1.0)
    assert info.value.code == rtc.RpcError.ErrorCode.RECIPIENT_DISCONNECTED


async def test_attributes_and_membership_events(network: RelayNetwork) -> None:
    agent_room = network.create_room("r1", "agent", attributes={"state": "idle", "x": "1"})
    joined = collect(agent_room, "participant_connected")
    user_room = network.create_room("r1", "user", attributes={"lang": "en"})

    # the newcomer meets everyone present at once; the others hear about it as an event
    assert list(user_room.remote_participants) == ["agent"]
    newcomer: rtc.RemoteParticipant = await asyncio.wait_for(joined.get(), 1.0)
    assert newcomer.identity == "user"
    assert newcomer.attributes == {"lang": "en"}
    assert agent_room.remote_participants["user"] is newcomer

    changes = collect(user_room, "participant_attributes_changed")
    own_changes = collect(agent_room, "participant_attributes_changed")
    await agent_room.local_participant.set_attributes({"state": "busy", "x": ""})

    changed, participant = await asyncio.wait_for(changes.get(), 1.0)
    assert changed == {"state": "busy", "x": ""}  # an empty value deletes the key
    assert participant is user_room.remote_participants["agent"]
    assert participant.attributes == {"state": "busy"}
    _, own = await asyncio.wait_for(own_changes.get(), 1.0)
    assert own is agent_room.local_participant
    assert agent_room.local_participant.attributes == {"state": "busy"}

    left = collect(agent_room, "participant_disconnected")
    disconnected = collect(user_room, "disconnected")
    await user_room.disconnect()

    assert not user_room.isconnected()
    with pytest.raises(PublishDataError):
        await user_room.local_participant.publish_data(b"too late")
    assert await asyncio.wait_for(disconnected.get(), 1.0) == rtc.DisconnectReason.CLIENT_INITIATED
    gone: rtc.RemoteParticipant = await asyncio.wait_for(left.get(), 1.0)
    assert gone.identity == "user"
    assert gone.disconnect_reason == rtc.DisconnectReason.CLIENT_INITIATED
    assert "user" not in agent_room.remote_participants
    assert [r.local_participant.identity for r in network.rooms("r1")] == ["agent"]


async def test_room_that_connects_later(network: RelayNetwork) -> None:
    agent_room = network.create_room("r1", "agent", connected=False)
    network.create_room("r1", "user")
    connected_events = collect(agent_room, "connected")
    state_events = collect(agent_room, "connection_state_changed")

    assert not agent_room.isconnected()
    assert agent_room.name == ""
    with pytest.raises(Exception, match="before connecting"):
        _ = agent_room.local_participant

    # a plugin started before the connection can only poll for it
    waiter = asyncio.ensure_future(wait_until(agent_room.isconnected))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await agent_room.connect()
    await asyncio.wait_for(waiter, 1.0)

    assert agent_room.name == "r1"
    assert agent_room.local_participant.identity == "agent"
    assert list(agent_room.remote_participants) == ["user"]
    # rtc 1.1.21's connect() emits neither event
    assert connected_events.empty()
    assert state_events.empty()


async def test_participants_are_collected_without_ffi_errors(network: RelayNetwork) -> None:
    # FfiHandle(0) is INVALID_HANDLE; with filterwarnings=error an exception in __del__
    # would surface as PytestUnraisableExceptionWarning
    for i in range(3):
        room = network.create_room("gc", f"p{i}")
        await room.local_participant.publish_data(b"x")
    await network.aclose()
    del room
    gc.collect()
