"""An in-memory LiveKit "server" relaying between real ``rtc.Room`` objects.

``RelayNetwork`` creates ``LinkedRoom`` objects (a subclass of the real ``rtc.Room``) whose
``LinkedLocalParticipant`` (a subclass of the real ``rtc.LocalParticipant``) publishes data,
performs and answers RPC and sets attributes without the native FFI. Events reach the other
rooms through the real ``Room.emit`` on later loop iterations, as with the real SDK. Only data
packets, RPC, attributes and join/leave are simulated; tracks and data streams are not.

Participants are built from real protobufs with handle id 0, which ``FfiHandle`` treats as
``INVALID_HANDLE``: disposing it (also at garbage collection) never reaches the FFI. That needs
the SDK's private ``livekit.rtc._proto`` modules, which is why this fake stays in the tests and
is not part of the public ``imaginex_context_plugin.testing`` kit.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from livekit import rtc
from livekit.rtc._proto import handle_pb2, participant_pb2, room_pb2
from livekit.rtc.log import logger as rtc_logger
from livekit.rtc.participant import PublishDataError, RpcHandler

# the limit the SDK documents for RPC request and response payloads
MAX_RPC_PAYLOAD_BYTES = 15_360
# what perform_rpc waits for when the caller passes no response_timeout
DEFAULT_RPC_RESPONSE_TIMEOUT = 15.0

_F = TypeVar("_F", bound=RpcHandler)


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
        hidden: bool = False,
    ) -> LinkedRoom:
        """A room joined as ``identity``; with ``connected=False`` it joins on ``connect()``.

        ``hidden``: as a real server treats a hidden participant (checked on livekit-server
        1.13): nobody sees it join, its data packets arrive without a participant, and its RPCs
        arrive with an empty caller identity while their answers never get back to it.
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
        room.hidden = hidden
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
        if not room.hidden:
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
        if room.hidden:
            return
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
        if sender is not None and sender.hidden:
            sender_identity = None  # the server strips a hidden participant's identity
        for room in self._rooms.get(room_name, []):
            if room is sender:
                continue
            if destinations and room.participant_info.identity not in destinations:
                continue
            room._deliver(room._on_data, sender_identity, data, kind, topic)

    def _open_stream(
        self, sender: LinkedRoom, info: rtc.ByteStreamInfo, destinations: Sequence[str]
    ) -> list[LinkedByteStreamReader]:
        """A reader for every peer the stream goes to, handed to its handler in order."""
        readers = []
        for room in self._rooms.get(sender.linked_name, []):
            elsewhere = destinations and room.participant_info.identity not in destinations
            if room is sender or elsewhere:
                continue
            reader = LinkedByteStreamReader(info)
            readers.append(reader)
            room._deliver(room._on_byte_stream, reader, sender.participant_info.identity)
        return readers

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
            caller_identity="" if caller.hidden else caller.participant_info.identity,
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
        if caller.hidden:
            # the answer is addressed to "" and never arrives; a real caller gives up after
            # max_round_trip_latency (7 s), here at once
            raise rtc.RpcError._built_in(rtc.RpcError.ErrorCode.CONNECTION_TIMEOUT)
        return task.result()


class LinkedLocalParticipant(rtc.LocalParticipant):
    """The real ``LocalParticipant`` with its FFI-backed calls routed through the network.

    Supported: ``publish_data``, ``perform_rpc`` (interceptors included),
    ``register_rpc_method`` / ``unregister_rpc_method``, ``set_attributes`` and
    ``stream_bytes`` (to the peers' ``register_byte_stream_handler`` handlers, in order with
    the data packets). The rest (tracks, text streams, metadata, ...) still needs a real server.
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

    async def stream_bytes(  # type: ignore[override]
        self,
        name: str,
        *,
        total_size: int | None = None,
        mime_type: str = "application/octet-stream",
        attributes: dict[str, str] | None = None,
        stream_id: str | None = None,
        destination_identities: Sequence[str] | None = None,
        topic: str = "",
    ) -> LinkedByteStreamWriter:
        room = self._linked_room
        if not room.isconnected():
            raise PublishDataError("the room is not connected")
        info = rtc.ByteStreamInfo(
            stream_id=stream_id or f"PS_{uuid.uuid4().hex[:12]}",
            mime_type=mime_type,
            topic=topic,
            timestamp=int(time.time() * 1000),
            size=total_size,
            attributes=dict(attributes or {}),
            name=name,
        )
        readers = room.network._open_stream(room, info, destination_identities or ())
        await asyncio.sleep(0)
        return LinkedByteStreamWriter(room, info, readers)

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
        self.hidden = False
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
            if not peer.hidden:
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

    def _on_byte_stream(self, reader: LinkedByteStreamReader, sender: str) -> None:
        handler = self._byte_stream_handlers.get(reader.info.topic)
        if handler is not None:  # as the real room: no handler, the stream is dropped
            handler(reader, sender)  # type: ignore[arg-type]

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


class LinkedByteStreamReader:
    """An incoming byte stream on the relay: iterate it for its chunks, as ``ByteStreamReader``."""

    def __init__(self, info: rtc.ByteStreamInfo) -> None:
        self.info = info
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def push(self, chunk: bytes | None) -> None:
        self._chunks.put_nowait(chunk)

    def __aiter__(self) -> LinkedByteStreamReader:
        return self

    async def __anext__(self) -> bytes:
        if self.closed:
            raise StopAsyncIteration
        chunk = await self._chunks.get()
        if chunk is None:
            self.closed = True
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        self.closed = True


class LinkedByteStreamWriter:
    """The sending end: chunks reach every reader in later loop iterations, in order."""

    def __init__(
        self, room: LinkedRoom, info: rtc.ByteStreamInfo, readers: list[LinkedByteStreamReader]
    ) -> None:
        self._room = room
        self.info = info
        self._readers = readers
        self.written = 0

    async def write(self, data: bytes) -> None:
        self.written += len(data)
        for reader in self._readers:
            self._room._loop.call_soon(reader.push, bytes(data))
        await asyncio.sleep(0)

    async def aclose(self, *, reason: str = "", attributes: dict[str, str] | None = None) -> None:
        for reader in self._readers:
            self._room._loop.call_soon(reader.push, None)
        await asyncio.sleep(0)
