"""Gateway configuration: api-secrets from the environment or a file, LiveKit settings, tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from livekit import api

from imaginex_context_plugin._livekit import gateway_token
from imaginex_context_plugin.gateway import (
    ApiSecrets,
    ConfigError,
    GatewayConfig,
    LiveKitBackend,
    LiveKitSettings,
    create_app,
)
from imaginex_context_plugin.gateway.http.messages import MessageWriter, Outgoing
from imaginex_context_plugin.gateway.state.redis_state import RedisState
from imaginex_context_plugin.security import SignatureVerifier

LIVEKIT_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "devsecret-0123456789abcdef0123456789abcdef",
}


# ---------------------------------------------------------------------------------------------
# api-secrets


def test_the_env_secret_may_address_any_agent_code() -> None:
    secrets = ApiSecrets(secret="s3cret-value")
    principal = secrets.authenticate("s3cret-value")
    assert principal is not None
    assert principal.name == "default"
    assert principal.may_address("A12345678")
    assert principal.may_address("ANYTHING")


@pytest.mark.parametrize("presented", [None, "", "s3cret-valu", "s3cret-value ", "S3CRET-VALUE"])
def test_anything_but_the_exact_secret_is_refused(presented: str | None) -> None:
    assert ApiSecrets(secret="s3cret-value").authenticate(presented) is None


def test_non_ascii_secrets_compare_without_error() -> None:
    secrets = ApiSecrets(secret="clé-secrète")
    assert secrets.authenticate("clé-secrète") is not None
    assert secrets.authenticate("cle-secrete") is None


def test_codes_sharing_a_secret_form_one_tenant() -> None:
    secrets = ApiSecrets(per_agent={"A1": "alpha", "A2": "alpha", "B1": "beta"})
    alpha = secrets.authenticate("alpha")
    beta = secrets.authenticate("beta")
    assert alpha is not None
    assert beta is not None
    assert alpha.agent_codes == frozenset({"A1", "A2"})
    assert beta.agent_codes == frozenset({"B1"})
    assert alpha.name != beta.name
    assert not alpha.may_address("B1")
    assert secrets.authenticate("gamma") is None


def test_the_env_secret_and_a_file_work_together() -> None:
    secrets = ApiSecrets(secret="master", per_agent={"A1": "alpha"})
    master = secrets.authenticate("master")
    assert master is not None
    assert master.may_address("B9")
    alpha = secrets.authenticate("alpha")
    assert alpha is not None
    assert not alpha.may_address("B9")


def test_repr_never_shows_a_secret() -> None:
    secrets = ApiSecrets(secret="master-xyz", per_agent={"A1": "alpha-xyz"})
    assert "xyz" not in repr(secrets)
    settings = LiveKitSettings(url="ws://h:7880", api_key="k", api_secret="lk-secret-xyz")
    assert "xyz" not in repr(settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "No api-secret is configured"),
        ({"secret": "  "}, "IMAGINEX_API_SECRET is set but empty"),
        ({"per_agent": {"A1": ""}}, "The secret for agent code 'A1' is empty"),
        ({"per_agent": {"A 1": "x"}}, "not usable in a URL path"),
        ({"per_agent": {"A/1": "x"}}, "not usable in a URL path"),
    ],
)
def test_unusable_secrets_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ApiSecrets(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# secrets files


def test_a_secrets_file_of_lines(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(
        "# tenants\n\nA12345678 = alpha-secret\nSALES_AGENT=beta=with=equals\n", encoding="utf-8"
    )
    secrets = ApiSecrets.from_file(path)
    alpha = secrets.authenticate("alpha-secret")
    beta = secrets.authenticate("beta=with=equals")
    assert alpha is not None
    assert alpha.agent_codes == frozenset({"A12345678"})
    assert beta is not None
    assert beta.agent_codes == frozenset({"SALES_AGENT"})


def test_a_secrets_file_in_json(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text('{"A12345678": "alpha", "SUPPORT_AGENT": "alpha"}', encoding="utf-8")
    principal = ApiSecrets.from_file(path).authenticate("alpha")
    assert principal is not None
    assert principal.agent_codes == frozenset({"A12345678", "SUPPORT_AGENT"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("A1 hunter2-secret\n", r"line 1: expected 'agent_code=secret'"),
        ("A1=\n", r"line 1: expected 'agent_code=secret'"),
        ("=hunter2-secret\n", r"line 1: expected 'agent_code=secret'"),
        ("A1=x\n# c\nA1=hunter2-secret\n", r"line 3: agent code 'A1' is listed twice"),
        ("# nothing\n", "lists no agent codes"),
        ('{"A1": "x", "A1": "hunter2-secret"}', "lists agent code 'A1' twice"),
        ('{"A1": 5}', "must be a JSON object"),
        ('{"A1": "hunter2-secret"', "is not valid JSON"),
        ('{"A1": ' + "[" * 5_000 + "]" * 5_000 + "}", "is not valid JSON"),
        ("{}", "lists no agent codes"),
    ],
)
def test_malformed_secrets_files_say_where_without_the_secret(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "secrets"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        ApiSecrets.from_file(path)
    assert "hunter2" not in str(caught.value)


def test_a_missing_secrets_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read the secrets file"):
        ApiSecrets.from_file(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# the environment


def test_everything_missing_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_env({})
    message = str(caught.value)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "IMAGINEX_API_SECRET"):
        assert name in message


def test_empty_variables_count_as_missing() -> None:
    with pytest.raises(ConfigError, match="LIVEKIT_API_KEY"):
        GatewayConfig.from_env({**LIVEKIT_ENV, "LIVEKIT_API_KEY": "", "IMAGINEX_API_SECRET": "s"})


def test_a_complete_environment() -> None:
    config = GatewayConfig.from_env(
        {**LIVEKIT_ENV, "IMAGINEX_API_SECRET": "s", "IMAGINEX_SIGNING_SECRET": "sig"}
    )
    assert config.livekit.url == "ws://127.0.0.1:7880"
    assert config.signing_secret == "sig"
    assert config.secrets.authenticate("s") is not None
    assert "sig" not in repr(config)


def test_a_secrets_file_replaces_the_env_secret(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("A1=alpha\n", encoding="utf-8")
    config = GatewayConfig.from_env({**LIVEKIT_ENV, "IMAGINEX_API_SECRETS_FILE": str(path)})
    assert config.secrets.authenticate("alpha") is not None
    assert config.signing_secret is None


@pytest.mark.parametrize("url", ["localhost:7880", "ftp://host", "ws://", "127.0.0.1"])
def test_a_livekit_url_that_is_not_a_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="LIVEKIT_URL must be"):
        GatewayConfig.from_env({**LIVEKIT_ENV, "LIVEKIT_URL": url, "IMAGINEX_API_SECRET": "s"})


# ---------------------------------------------------------------------------------------------
# the token the gateway joins rooms with


def test_the_gateway_joins_as_a_visible_sender_and_may_only_send_data() -> None:
    settings = LiveKitSettings(
        url=LIVEKIT_ENV["LIVEKIT_URL"],
        api_key=LIVEKIT_ENV["LIVEKIT_API_KEY"],
        api_secret=LIVEKIT_ENV["LIVEKIT_API_SECRET"],
    )
    token = gateway_token(settings, identity="imaginex-gateway", room="room_123")
    claims = api.TokenVerifier(settings.api_key, settings.api_secret).verify(token)
    assert claims.identity == "imaginex-gateway"
    grants = claims.video
    assert grants is not None
    assert grants.room_join is True
    assert grants.room == "room_123"
    # hidden would make a real server strip its identity from its RPCs: no answer could return
    assert grants.hidden is False
    assert claims.kind == "agent"
    assert grants.can_publish is False
    assert grants.can_publish_data is True
    assert grants.room_admin is None
    assert grants.room_list is None


def test_the_gateway_package_exports_what_all_lists() -> None:
    import imaginex_context_plugin.gateway as gateway

    assert gateway.__all__ == sorted(gateway.__all__, key=lambda n: (not n.isupper(), n))
    for name in gateway.__all__:
        assert hasattr(gateway, name), name


# ---------------------------------------------------------------------------------------------
# replicas: Redis, signing, the sender


def test_redis_comes_from_the_environment_or_the_option() -> None:
    env = {**LIVEKIT_ENV, "IMAGINEX_API_SECRET": "s", "IMAGINEX_SIGNING_SECRET": "sig"}
    from_env = GatewayConfig.from_env({**env, "IMAGINEX_REDIS_URL": "redis://127.0.0.1:1/0"})
    given = GatewayConfig.from_env(env, redis_url="redis://127.0.0.1:2/0")
    assert from_env.redis_url == "redis://127.0.0.1:1/0"
    assert given.redis_url == "redis://127.0.0.1:2/0"
    assert GatewayConfig.from_env(env).redis_url is None
    # a Redis URL may carry a password
    assert "redis://" not in repr(from_env)


def test_replicas_without_a_signing_secret_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_env(
            {**LIVEKIT_ENV, "IMAGINEX_API_SECRET": "s", "IMAGINEX_REDIS_URL": "redis://x/0"}
        )
    assert "need a signing secret (IMAGINEX_SIGNING_SECRET" in str(caught.value)
    assert "retry that reaches it through another replica" in str(caught.value)


def test_create_app_refuses_shared_state_without_a_signing_secret() -> None:
    backend = LiveKitBackend(
        LiveKitSettings("ws://127.0.0.1:1", "devkey", LIVEKIT_ENV["LIVEKIT_API_SECRET"])
    )
    with pytest.raises(ConfigError, match="need a signing secret"):
        create_app(backend, ApiSecrets(secret="s"), state=RedisState("redis://127.0.0.1:1/0"))


@pytest.mark.parametrize("sender", ["", " ", "gate\nway", "\u200b", "x" * 129])
def test_an_unusable_sender_is_refused_before_anything_is_sent(sender: str) -> None:
    backend = LiveKitBackend(
        LiveKitSettings("ws://127.0.0.1:1", "devkey", LIVEKIT_ENV["LIVEKIT_API_SECRET"])
    )
    with pytest.raises(ValueError, match="sender must be 1 to 128 visible characters"):
        create_app(backend, ApiSecrets(secret="s"), signing_secret="sig", sender=sender)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [("imaginex-gateway", "imaginex-gateway"), ("crm-gateway", "crm-gateway"), (None, None)],
)
def test_the_writer_signs_with_the_sender(sender: str | None, expected: str | None) -> None:
    writer = MessageWriter(signing_secret="sig", sender=sender)
    packet = json.loads(writer.write(Outgoing("speak", {"type": "speak", "message": "Hi"}),
                                     "id-1", "A1", "room-1"))
    assert packet.get("sender") == expected
    verifier = SignatureVerifier("sig")
    assert verifier.verify(
        packet["body"], packet["timestamp"], packet["signature"], sender=expected
    ) is None
    # unsigned, nothing names a sender: the participant identity is the sender
    assert "sender" not in json.loads(
        MessageWriter(signing_secret=None, sender=sender).write(
            Outgoing("speak", {"type": "speak", "message": "Hi"}), "id-1", "A1", None
        )
    )


def test_without_the_redis_package_replicas_say_how_to_get_it() -> None:
    # redis is an optional dependency: the gateway imports without it, and asking for the
    # Redis state names the extra to install (a child process, so this one keeps its redis)
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import imaginex_context_plugin.gateway as gateway\n"
        "from imaginex_context_plugin.errors import ConfigError\n"
        "assert gateway.create_app and gateway.MemoryState\n"
        "try:\n"
        "    gateway.RedisState\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'imaginex-context-plugin[redis]'" in result.stdout


def test_the_writer_validates_once_per_fan_out_and_writes_each_room_as_from_scratch() -> None:
    """The request is validated once and copied per room: each room's text is exactly what a
    fresh writer makes of it, and another request, id or code is never served the last one."""
    speak = Outgoing("speak", {"type": "speak", "message": "Hé \u2014 hi", "priority": "high"})
    context = Outgoing("add-context", {"type": "add_context", "context": "Gold."})
    writer = MessageWriter(signing_secret=None)
    calls = [
        (speak, "id-1", "A1", "room-1"),
        (speak, "id-1", "A1", "room-2"),
        (speak, "id-1", "A1", None),
        (speak, "id-2", "A1", "room-1"),
        (speak, "id-2", "B2", "room-1"),
        (context, "id-2", "B2", "room-1"),
        (speak, "id-1", "A1", "room-3"),
    ]
    for outgoing, request_id, code, room in calls:
        fresh = MessageWriter(signing_secret=None).write(outgoing, request_id, code, room)
        assert writer.write(outgoing, request_id, code, room) == fresh
        obj = json.loads(fresh)
        assert (obj["id"], obj["agent_code"], obj.get("room_id")) == (request_id, code, room)
