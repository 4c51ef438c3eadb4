"""``fixtures/protocol.json``: the protocol's pinned examples, read by these tests and by the
TypeScript client's tests (``js/test``), so both languages are held to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

PATH: Final = Path(__file__).resolve().parent.parent / "fixtures" / "protocol.json"
FIXTURES: Final[dict[str, Any]] = json.loads(PATH.read_text(encoding="utf-8"))


def _named(section: str, name: str) -> dict[str, Any]:
    (entry,) = [entry for entry in FIXTURES[section] if entry["name"] == name]
    return dict(entry)


def signature(name: str) -> dict[str, Any]:
    """A signature vector: secret, timestamp, body, sender, message, signature, envelope."""
    return _named("signatures", name)


def wire(name: str) -> dict[str, Any]:
    """The JSON a pinned server message is on the wire."""
    return dict(_named("server_messages", name)["wire"])
