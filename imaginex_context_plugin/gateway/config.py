"""Gateway configuration: the api-secrets callers present, and the LiveKit server behind it.

Two ways to configure secrets, usable together:

- ``IMAGINEX_API_SECRET``: one secret that may address every agent code;
- a secrets file (``--secrets-file`` or ``IMAGINEX_API_SECRETS_FILE``) mapping agent codes to
  secrets, one tenant per distinct secret. It is either a JSON object
  ``{"A12345678": "secret", ...}`` or lines of ``agent_code=secret`` (blank lines and lines
  starting with ``#`` are ignored). Agent codes listed there are the gateway's registry: a code
  the caller's secret does not list is ``AGENT_NOT_FOUND``.

Every problem is reported as a :class:`ConfigError` whose message says what to fix, and never
contains a secret.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .._env import (
    API_SECRET_ENV,
    API_SECRETS_FILE_ENV,
    LIVEKIT_API_KEY_ENV,
    LIVEKIT_API_SECRET_ENV,
    LIVEKIT_ENV,
    LIVEKIT_URL_ENV,
    REDIS_URL_ENV,
    SIGNING_SECRET_ENV,
    env_or,
)
from .._livekit.settings import LiveKitSettings
from ..errors import ConfigError
from .state.gateway_state import REPLICAS_NEED_SIGNING

DEFAULT_PRINCIPAL: Final = "default"
"""Name of the principal authenticated by ``IMAGINEX_API_SECRET`` (rate limits, logs)."""

@dataclass(frozen=True)
class Principal:
    """Who a valid api-secret identifies.

    Attributes:
        name: A label for rate limiting and logs (``"default"`` or ``"tenant-N"``), never
            derived from the secret itself.
        agent_codes: The agent codes this secret may address; ``None`` means any code.
    """

    name: str
    agent_codes: frozenset[str] | None

    def may_address(self, agent_code: str) -> bool:
        return self.agent_codes is None or agent_code in self.agent_codes


class ApiSecrets:
    """The api-secrets the gateway accepts, checked in constant time.

    Args:
        secret: A secret valid for every agent code (``IMAGINEX_API_SECRET``).
        per_agent: Agent code -> secret. Codes sharing a secret form one tenant.

    Raises:
        ConfigError: If no secret is given, or one is empty.
    """

    def __init__(
        self, *, secret: str | None = None, per_agent: Mapping[str, str] | None = None
    ) -> None:
        entries: list[tuple[bytes, Principal]] = []
        if secret is not None:
            if not secret.strip():
                raise ConfigError(f"{API_SECRET_ENV} is set but empty.")
            entries.append((secret.encode("utf-8"), Principal(DEFAULT_PRINCIPAL, None)))
        tenants: dict[str, set[str]] = {}
        for code, tenant_secret in (per_agent or {}).items():
            _check_code(code)
            if not tenant_secret.strip():
                raise ConfigError(f"The secret for agent code '{code}' is empty.")
            tenants.setdefault(tenant_secret, set()).add(code)
        for n, (tenant_secret, codes) in enumerate(tenants.items(), start=1):
            entries.append(
                (tenant_secret.encode("utf-8"), Principal(f"tenant-{n}", frozenset(codes)))
            )
        if not entries:
            raise ConfigError(
                f"No api-secret is configured: set {API_SECRET_ENV}, or give a secrets file "
                f"(--secrets-file or {API_SECRETS_FILE_ENV})."
            )
        self._entries = entries

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, secret: str | None = None) -> ApiSecrets:
        """Load ``agent_code -> secret`` pairs from a file (see the module docstring).

        Raises:
            ConfigError: If the file cannot be read or is malformed.
        """
        return cls(secret=secret, per_agent=load_secrets_file(path))

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal a presented api-secret identifies, or None if it matches none.

        Every configured secret is compared, with ``hmac.compare_digest``, so the time taken
        does not tell which secret (or how much of one) matched.
        """
        if not presented:
            return None
        # aiohttp hands over header bytes that are not UTF-8 as lone surrogates; surrogatepass
        # encodes them to bytes no configured (valid UTF-8) secret can equal, instead of raising
        candidate = presented.encode("utf-8", "surrogatepass")
        found: Principal | None = None
        for secret, principal in self._entries:
            if hmac.compare_digest(secret, candidate) and found is None:
                found = principal
        return found

    @property
    def principals(self) -> list[Principal]:
        return [principal for _, principal in self._entries]

    def __repr__(self) -> str:
        return f"ApiSecrets(principals={[p.name for p in self.principals]})"


def load_secrets_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a secrets file: a JSON object, or ``agent_code=secret`` lines.

    Error messages name the file and line but never repeat a line's content, which holds a
    secret.

    Raises:
        ConfigError: If the file cannot be read, is malformed, lists a code twice or none.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the secrets file {os.fspath(path)}: {exc.strerror or exc}."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"The secrets file {os.fspath(path)} is not UTF-8 text.") from None
    pairs = _parse_json(path, text) if text.lstrip().startswith("{") else _parse_lines(path, text)
    if not pairs:
        raise ConfigError(f"The secrets file {os.fspath(path)} lists no agent codes.")
    return pairs


def _parse_json(path: str | os.PathLike[str], text: str) -> dict[str, str]:
    def no_duplicates(items: list[tuple[str, object]]) -> dict[str, object]:
        seen: dict[str, object] = {}
        for key, value in items:
            if key in seen:
                raise ConfigError(
                    f"The secrets file {os.fspath(path)} lists agent code '{key}' twice."
                )
            seen[key] = value
        return seen

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise ConfigError(f"The secrets file {os.fspath(path)} is not valid JSON.") from None
    if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
        raise ConfigError(
            f"The secrets file {os.fspath(path)} must be a JSON object of "
            '"agent_code": "secret" strings.'
        )
    return {str(k): str(v) for k, v in obj.items()}


def _parse_lines(path: str | os.PathLike[str], text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        code, sep, secret = stripped.partition("=")
        code, secret = code.strip(), secret.strip()
        if not sep or not code or not secret:
            raise ConfigError(f"{os.fspath(path)}, line {number}: expected 'agent_code=secret'.")
        if code in pairs:
            raise ConfigError(
                f"{os.fspath(path)}, line {number}: agent code '{code}' is listed twice."
            )
        pairs[code] = secret
    return pairs


def _check_code(code: str) -> None:
    if not code or code != code.strip() or "/" in code or any(c.isspace() for c in code):
        raise ConfigError(
            f"Agent code {code!r} is not usable in a URL path: no spaces, no '/', not empty."
        )


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the ``imaginex-context gateway`` command reads from its environment.

    Attributes:
        livekit: The LiveKit server and key pair.
        secrets: The accepted api-secrets.
        signing_secret: Signs every message for the agents (``IMAGINEX_SIGNING_SECRET``).
        redis_url: Redis shared by gateway replicas (``IMAGINEX_REDIS_URL``); None: a lone
            gateway, its state in memory. Replicas need ``signing_secret``.

    Raises:
        ConfigError: ``redis_url`` is set without ``signing_secret``.
    """

    livekit: LiveKitSettings
    secrets: ApiSecrets
    signing_secret: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)  # may hold a password

    def __post_init__(self) -> None:
        if self.redis_url and not self.signing_secret:
            raise ConfigError(REPLICAS_NEED_SIGNING)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        secrets_file: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
    ) -> GatewayConfig:
        """Read the configuration, reporting every missing variable at once.

        Args:
            environ: The environment to read; ``os.environ`` when omitted.
            secrets_file: A secrets file; defaults to ``IMAGINEX_API_SECRETS_FILE``.
            redis_url: Redis shared by replicas; defaults to ``IMAGINEX_REDIS_URL``.

        Raises:
            ConfigError: If something is missing or malformed.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env_or(None, name, env)

        if secrets_file is None:
            secrets_file = get(API_SECRETS_FILE_ENV)
        missing = [
            name
            for name in LIVEKIT_ENV
            if get(name) is None
        ]
        api_secret = get(API_SECRET_ENV)
        if api_secret is None and secrets_file is None:
            missing.append(f"{API_SECRET_ENV} (or a secrets file: --secrets-file)")
        if missing:
            raise ConfigError(
                "The gateway is not configured. Missing environment variables: "
                + ", ".join(missing)
                + "."
            )
        livekit = LiveKitSettings(
            url=env[LIVEKIT_URL_ENV],
            api_key=env[LIVEKIT_API_KEY_ENV],
            api_secret=env[LIVEKIT_API_SECRET_ENV],
        )
        if secrets_file is not None:
            secrets = ApiSecrets.from_file(secrets_file, secret=api_secret)
        else:
            secrets = ApiSecrets(secret=api_secret)
        return cls(
            livekit=livekit,
            secrets=secrets,
            signing_secret=get(SIGNING_SECRET_ENV),
            redis_url=redis_url or get(REDIS_URL_ENV),
        )
