"""An events stream (``GET .../events``, server-sent events) read in the background, shared by
the gateway tests and the live suite."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

SseEvent = tuple[int | None, str, dict[str, Any]]
"""One event as it came: its ``id`` (the ``seq``; None: none sent), its name, its data."""


class Sse:
    """One open events stream, read in the background: (id, event, data) as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[SseEvent] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        ident: int | None = None
        name = ""
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                ident = int(line[len("id: ") :])
            elif line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                self.events.append((ident, name, json.loads(line[len("data: ") :])))
                ident, name = None, ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The data of every ``kind`` event so far, in order."""
        return [data for _, name, data in self.events if name == kind]

    def texts(self) -> list[str]:
        """The text of every ``agent_transcript`` so far, in order."""
        return [data["text"] for data in self.of("agent_transcript")]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.response.close()
