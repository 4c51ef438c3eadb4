"""Where the LiveKit server is, and the API key pair used on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlparse

from .._env import LIVEKIT_URL_ENV
from ..errors import ConfigError

URL_SCHEMES: Final = ("ws", "wss", "http", "https")
"""The URL schemes LiveKit's SDKs accept."""


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
