"""``OfflineRoom``: a real ``rtc.Room`` that never connects, with a name of your choosing."""

from __future__ import annotations

import asyncio

from livekit import rtc


class OfflineRoom(rtc.Room):
    """A real, never-connected ``rtc.Room`` that reports ``name``: somewhere to start the plugin.

    ``ContextPlugin.start(session, room)`` needs a room; without a server this one stands for it.
    The plugin echoes its name as ``room_id`` in acks and checks requests' ``room_id`` against it.
    Feed messages with ``ContextPlugin.ingest()`` and catch the answers with an ``AckTransport``
    subclass: nothing is ever published, since the room is not connected.
    """

    def __init__(self, name: str, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop=loop)
        self._offline_name = name

    @property
    def name(self) -> str:
        return self._offline_name
