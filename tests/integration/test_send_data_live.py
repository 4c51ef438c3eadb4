"""``DataSender`` (the gateway's ``RoomService.SendData``) against a real ``livekit-server``:
packets reach a real ``rtc.Room``, a room's token is signed once and reused until half its
lifetime, and LiveKit's refusals come back as ``TwirpError``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from livekit import api, rtc

from devtools.livekit_server import ServerInfo
from imaginex_context_plugin._livekit.room_service import TOKEN_TTL
from imaginex_context_plugin._livekit.send_data import DataSender
from imaginex_context_plugin.gateway import LiveKitSettings
from tests.integration.live import participant_token, room_name

TOPIC = "send-data-test"
WARM_UP = "send-data-warm-up"
WAIT_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def listener(lk: ServerInfo, room: str) -> AsyncIterator[asyncio.Queue[rtc.DataPacket]]:
    """A participant ``listener`` in ``room``, ready for server-API packets; yields those it
    receives on ``TOPIC``."""
    received: asyncio.Queue[rtc.DataPacket] = asyncio.Queue()
    ready = asyncio.Event()
    peer = rtc.Room()

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == TOPIC:
            received.put_nowait(packet)
        elif packet.topic == WARM_UP:
            ready.set()

    peer.on("data_received", on_data)
    await peer.connect(lk.url, participant_token(lk, room, "listener"))
    # a packet sent right after the join can arrive before the participant's data channel is
    # open, and is lost: knock (with a sender of its own) until one gets through
    knocker = DataSender(settings(lk))
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready.is_set():
            assert time.monotonic() < deadline, "the listener never received a packet"
            await knocker.send(
                room,
                b"knock",
                destination_identities=["listener"],
                topic=WARM_UP,
                timeout=WAIT_S,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.2)
        yield received
    finally:
        await knocker.aclose()
        peer.off("data_received", on_data)
        await peer.disconnect()


def settings(lk: ServerInfo, *, secret: str | None = None) -> LiveKitSettings:
    return LiveKitSettings(url=lk.url, api_key=lk.api_key, api_secret=secret or lk.api_secret)


async def test_packets_reach_the_room_and_each_room_signs_one_token_per_half_lifetime(
    livekit: ServerInfo,
) -> None:
    clock = Clock()
    sender = DataSender(settings(livekit), clock=clock)
    first, second = room_name("send-data-a"), room_name("send-data-b")
    try:
        async with listener(livekit, first) as in_first, listener(livekit, second) as in_second:
            for n in range(3):
                await sender.send(
                    first,
                    f"a{n}".encode(),
                    destination_identities=["listener"],
                    topic=TOPIC,
                    timeout=WAIT_S,
                )
            await sender.send(
                second, b"b0", destination_identities=["listener"], topic=TOPIC, timeout=WAIT_S
            )
            assert sender.tokens_signed == 2

            clock.now += TOKEN_TTL.total_seconds() / 2 - 1
            await sender.send(
                first, b"a3", destination_identities=["listener"], topic=TOPIC, timeout=WAIT_S
            )
            assert sender.tokens_signed == 2
            clock.now += 2  # past half the lifetime: signed again, and still accepted
            await sender.send(
                first, b"a4", destination_identities=["listener"], topic=TOPIC, timeout=WAIT_S
            )
            assert sender.tokens_signed == 3

            got_first = [(await asyncio.wait_for(in_first.get(), WAIT_S)).data for _ in range(5)]
            got_second = (await asyncio.wait_for(in_second.get(), WAIT_S)).data
    finally:
        await sender.aclose()
        await sender.aclose()  # idempotent

    assert got_first == [b"a0", b"a1", b"a2", b"a3", b"a4"]
    assert got_second == b"b0"


async def test_a_token_for_one_room_is_never_used_for_another(livekit: ServerInfo) -> None:
    """LiveKit accepts a SendData token for the room it names only; every room gets its own."""
    sender = DataSender(settings(livekit))
    rooms = [room_name(f"send-data-{n}") for n in range(3)]
    try:
        for room in rooms:
            async with listener(livekit, room) as received:
                await sender.send(
                    room,
                    room.encode(),
                    destination_identities=["listener"],
                    topic=TOPIC,
                    timeout=WAIT_S,
                )
                assert (await asyncio.wait_for(received.get(), WAIT_S)).data == room.encode()
    finally:
        await sender.aclose()
    assert sender.tokens_signed == 3


async def test_livekit_refusals_are_twirp_errors(livekit: ServerInfo) -> None:
    forged = DataSender(settings(livekit, secret="not-the-api-secret-but-long-enough-for-hs256"))
    sender = DataSender(settings(livekit))
    room = room_name("send-data-refused")
    try:
        async with listener(livekit, room):
            with pytest.raises(api.TwirpError) as refused:
                await forged.send(
                    room, b"x", destination_identities=["listener"], topic=TOPIC, timeout=WAIT_S
                )
            assert refused.value.status == 401
            with pytest.raises(api.TwirpError) as no_room:
                await sender.send(
                    room_name("send-data-nowhere"),
                    b"x",
                    destination_identities=["listener"],
                    topic=TOPIC,
                    timeout=WAIT_S,
                )
            # no node holds the room: LiveKit v1.13 says 503 "unavailable", not 404
            assert no_room.value.code == api.TwirpErrorCode.UNAVAILABLE
            assert no_room.value.status == 503
    finally:
        await forged.aclose()
        await sender.aclose()
