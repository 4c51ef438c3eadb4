"""What the sender's room says back: acks, speech and session events, and who joined or left.

:class:`RoomEvents` is the client's one listener on the room. It hands acks to the requests
waiting for them, ``speech_finished`` to the callers waiting for playout, session events to
the open subscriptions, tells the agent
locator when the roster changed, and fails whatever waits on an agent that left or a room that
went away. Its handlers run synchronously on the room's event loop and never raise.
"""

from __future__ import annotations

from collections.abc import Callable

from livekit import rtc
from livekit.rtc.room import EventTypes

from .. import protocol
from ..log import logger
from ..protocol import ACK_TOPIC, ErrorAck, SpeechFailedEvent, SpeechFinishedEvent, SuccessAck
from .locator import AgentLocator
from .subscription import EventSinks
from .waiters import PendingAcks, PlayoutWaiters, gone, unavailable

DISCONNECTED_MESSAGE = "The client was disconnected from the room."


class RoomEvents:
    """Routes the room's events to the client's waiters; :meth:`detach` unhooks every listener.

    Args:
        room: The sender's room; listening starts at once.
        locator: Told about every roster change, so a waiting lookup looks again.
        pending: The requests waiting for their ack.
        playouts: The callers waiting for the end of a speech.
        sinks: The open subscriptions, fed the agent's session events.
    """

    def __init__(
        self,
        room: rtc.Room,
        *,
        locator: AgentLocator,
        pending: PendingAcks,
        playouts: PlayoutWaiters,
        sinks: EventSinks,
    ) -> None:
        self._room = room
        self._locator = locator
        self._pending = pending
        self._playouts = playouts
        self._sinks = sinks
        # kept by event so that detach() removes exactly what was added
        self._listeners: dict[EventTypes, Callable[..., None]] = {
            "data_received": self._on_data_received,
            "participant_connected": lambda _: locator.changed(),
            "participant_disconnected": self._on_participant_disconnected,
            "participant_attributes_changed": lambda *_: locator.changed(),
            "disconnected": lambda _: self.fail_everything(DISCONNECTED_MESSAGE),
        }
        for event, listener in self._listeners.items():
            room.on(event, listener)

    def detach(self) -> None:
        """Stop listening (the client is closing)."""
        for event, listener in self._listeners.items():
            self._room.off(event, listener)

    def fail_everything(self, message: str) -> None:
        """Fail every request and playout wait with ``LIVEKIT_UNAVAILABLE`` and ``message``."""
        self._locator.changed()
        self._pending.fail(unavailable(message))
        self._playouts.fail(unavailable(message))
        self._sinks.fail(unavailable(message))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self._locator.changed()
        left = participant.identity
        # retryable: the next attempt waits for the agent to come back
        self._pending.fail(gone(left, "answering", retryable=True), agent=left)
        self._playouts.fail(gone(left, "the speech finished", retryable=False), agent=left)
        self._sinks.agent_left(left)

    def _on_data_received(self, packet: rtc.DataPacket) -> None:
        if packet.topic != ACK_TOPIC or packet.participant is None:
            return
        sender = packet.participant.identity
        try:
            message = protocol.parse_server_message(packet.data)
        except ValueError:  # pydantic's ValidationError is one
            logger.debug("ignored a malformed packet on the ack topic", extra={"sender": sender})
            return
        if isinstance(message, SuccessAck | ErrorAck):
            self._pending.on_ack(message, sender)
            return
        if isinstance(message, SpeechFinishedEvent | SpeechFailedEvent):
            self._playouts.on_finished(message, sender)
        # every event (a speech's too) to the subscriptions that asked for its kind
        self._sinks.on_event(message, sender)
