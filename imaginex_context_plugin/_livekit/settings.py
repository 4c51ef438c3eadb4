"""Where the LiveKit server is, and the API key pair used on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlparse

from .._env import LIVEKIT_URL_ENV
from ..errors import ConfigError

URL_SCHEMES: Final = ("ws", "wss", "http", "https")
"""The URL schemes LiveKit's SDKs accept."""
DEV_API_KEY: Final = "devkey"
DEV_API_SECRET: Final = "secret"
"""The key pair ``livekit-server --dev`` serves when given no keys: well known, chosen by nobody."""
MIN_API_SECRET_BYTES: Final = 32
"""Tokens are HMAC-SHA256; RFC 7518 (3.2) asks for a key at least as long as the hash."""


def short_api_secret_note(api_key: str, api_secret: str) -> str | None:
    """One plain sentence when ``api_secret`` is shorter than :data:`MIN_API_SECRET_BYTES`,
    or None: long enough, or LiveKit's development pair, where a warning would only be noise."""
    if (api_key, api_secret) == (DEV_API_KEY, DEV_API_SECRET):
        return None
    length = len(api_secret.encode("utf-8"))
    if length >= MIN_API_SECRET_BYTES:
        return None
    return (
        f"the LiveKit API secret is {length} bytes long; use {MIN_API_SECRET_BYTES} or more "
        "(LiveKit's tokens are signed with HMAC-SHA256)."
    )


def is_livekit_url(url: str) -> bool:
    """Whether ``url`` is a ``ws(s)://`` or ``http(s)://`` URL with a host."""
    parsed = urlparse(url)
    return parsed.scheme in URL_SCHEMES and bool(parsed.netloc)


@dataclass(frozen=True)
class LiveKitSettings:
    """Where the LiveKit server is and the API key pair used on it.

    Raises:
        ConfigError: If ``url`` is not a ``ws(s)://`` or ``http(s)://`` URL.
    """

    url: str
    api_key: str
    api_secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not is_livekit_url(self.url):
            raise ConfigError(
                f"{LIVEKIT_URL_ENV} must be a ws://, wss://, http:// or https:// URL "
                f"(got '{self.url}')."
            )
