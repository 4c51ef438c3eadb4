"""The one packet-size rule: a message and its answer must fit one LiveKit packet (15 KiB)."""

from __future__ import annotations

from .protocol import MAX_PAYLOAD_BYTES


def oversize(payload: str | bytes) -> int | None:
    """The encoded size of ``payload`` when it is over ``MAX_PAYLOAD_BYTES``, else None.

    Each caller words its own refusal (the receiver, the sender, the gateway speak to different
    people), but they all measure the same thing: UTF-8 bytes on the wire.
    """
    size = len(payload) if isinstance(payload, bytes) else len(payload.encode("utf-8"))
    return size if size > MAX_PAYLOAD_BYTES else None
