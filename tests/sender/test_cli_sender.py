"""``imaginex-context speak`` / ``add-context``: output and exit status.

The commands build their client through the public factory seam
(``main(obj={CLIENT_FACTORY_KEY: factory})``); the factory here starts a real AgentSession with
ContextPlugin on an in-memory relay inside the command's own event loop, and hands back a
client in the same relay. Only "cannot connect" uses the real connection path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import rtc

from imaginex_context_plugin import ContextClient, ContextPlugin
from imaginex_context_plugin.cli import (
    CLI_IDENTITY,
    CLIENT_FACTORY_KEY,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    SenderSettings,
    main,
)
from tests.fakes import RecordingAudioOutput, RecordingTTS, RelayNetwork, start_session

AGENT_CODE = "A12345678"
SECRET = "shared-secret-between-backend-and-agent"
# the commands must not pick up the caller's environment
CLEAN_ENV: dict[str, str | None] = {
    "LIVEKIT_URL": None,
    "LIVEKIT_API_KEY": None,
    "LIVEKIT_API_SECRET": None,
    "IMAGINEX_AGENT_CODE": None,
    "IMAGINEX_CONTEXT_SECRET": None,
}


@dataclass
class Seen:
    """What the in-process agent saw, recorded before it shut down."""

    settings: SenderSettings | None = None
    said: list[str] = field(default_factory=list)
    context: list[tuple[str | None, str]] = field(default_factory=list)
    applied: int = 0


class InProcessClient(ContextClient):
    """A client whose ``aclose`` also stops the in-process agent it talks to."""

    def __init__(
        self,
        room: rtc.Room,
        settings: SenderSettings,
        teardown: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(room, **settings.options)
        self._teardown = teardown

    async def aclose(self) -> None:
        await super().aclose()
        await self._teardown()


def in_process_agent(
    seen: Seen, *, silent_agent: bool = False, **plugin_kwargs: Any
) -> Callable[[SenderSettings], Awaitable[ContextClient]]:
    plugin_kwargs.setdefault("agent_code", AGENT_CODE)
    plugin_kwargs.setdefault("allowed_identities", [CLI_IDENTITY])

    async def factory(settings: SenderSettings) -> ContextClient:
        seen.settings = settings
        network = RelayNetwork()
        tts = RecordingTTS()
        session = await start_session(tts_model=tts, audio_output=RecordingAudioOutput(speed=20))
        agent_room = network.create_room(
            settings.room, "agent", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        )
        plugin = ContextPlugin(**plugin_kwargs)
        await plugin.start(session, agent_room)
        if silent_agent:  # an agent participant without the plugin: it never answers
            network.create_room(
                settings.room, "mute", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            )
        sender_room = network.create_room(settings.room, settings.identity or "backend")

        async def teardown() -> None:
            seen.said = list(tts.texts)
            seen.applied = plugin.stats.applied
            seen.context = [(e.key, e.role) for e in plugin.context_store.describe()]
            await plugin.aclose()
            await session.aclose()
            await network.aclose()

        return InProcessClient(sender_room, settings, teardown)

    return factory


def run(
    args: list[str], seen: Seen | None = None, *, silent_agent: bool = False, **plugin_kwargs: Any
) -> Result:
    obj = None
    if seen is not None:
        factory = in_process_agent(seen, silent_agent=silent_agent, **plugin_kwargs)
        obj = {CLIENT_FACTORY_KEY: factory}
    return CliRunner().invoke(main, args, obj=obj, env=CLEAN_ENV)


# ---------------------------------------------------------------------------------------------
# 0: acknowledged


def test_speak_prints_the_ack_and_exits_0() -> None:
    seen = Seen()
    result = run(["speak", "--room", "shop", "Your order has shipped!"], seen)

    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith("ok: Speech triggered successfully  id=")
    assert "speech_id=" in result.stdout
    assert seen.applied == 1
    assert seen.settings is not None
    assert seen.settings.options["via"] == "rpc"
    assert seen.settings.identity == CLI_IDENTITY


def test_speak_over_data_with_json_prints_the_ack_as_json() -> None:
    seen = Seen()
    result = run(["speak", "--room", "shop", "--data", "--json", "--id", "j-1", "Hello!"], seen)

    assert result.exit_code == EXIT_OK, result.output
    ack = json.loads(result.stdout)
    assert ack["success"] is True
    assert ack["id"] == "j-1"
    assert ack["data"]["context_type"] == "speak"
    assert ack["data"]["agent_code"] == AGENT_CODE
    assert seen.settings is not None
    assert seen.settings.options["via"] == "data"


def test_speak_wait_playout_reports_the_end_of_the_speech() -> None:
    seen = Seen()
    human = run(["speak", "--room", "shop", "--wait-playout", "Thanks for waiting."], seen)
    as_json = run(["speak", "--room", "shop", "--wait-playout", "--json", "Again."], Seen())

    assert human.exit_code == EXIT_OK, human.output
    assert "played out after" in human.stdout
    assert seen.said == ["Thanks for waiting."]
    assert as_json.exit_code == EXIT_OK, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["ack"]["success"] is True
    assert doc["speech_finished"]["interrupted"] is False
    assert doc["speech_finished"]["speech_id"] == doc["ack"]["data"]["speech_id"]


def test_add_context_with_key_and_role() -> None:
    seen = Seen()
    result = run(
        [
            "add-context",
            "--room",
            "shop",
            "--key",
            "customer",
            "--role",
            "developer",
            "--json",
            "Customer John Smith is a premium member.",
        ],
        seen,
    )

    assert result.exit_code == EXIT_OK, result.output
    ack = json.loads(result.stdout)
    assert ack["data"]["context_type"] == "add_context"
    assert ack["data"]["key"] == "customer"
    assert seen.context == [("customer", "developer")]
    assert seen.said == []


def test_options_and_environment_reach_the_client() -> None:
    seen = Seen()
    result = CliRunner().invoke(
        main,
        [
            "add-context",
            "--room",
            "shop",
            "--identity",
            "crm",
            "--timeout",
            "2.5",
            "--retries",
            "4",
            "--agent-wait",
            "1",
            "VIP.",
        ],
        obj={CLIENT_FACTORY_KEY: in_process_agent(seen, secret=SECRET, allowed_identities=[])},
        env={**CLEAN_ENV, "IMAGINEX_AGENT_CODE": AGENT_CODE, "IMAGINEX_CONTEXT_SECRET": SECRET},
    )

    assert result.exit_code == EXIT_OK, result.output  # signed, so trusted without the identity
    assert seen.settings == SenderSettings(
        room="shop",
        identity="crm",
        options={
            "agent_code": AGENT_CODE,
            "via": "rpc",
            "secret": SECRET,
            "timeout": 2.5,
            "retries": 4,
            "agent_timeout": 1.0,
        },
    )


# ---------------------------------------------------------------------------------------------
# 1: refused


def test_an_error_ack_exits_1_and_prints_the_code() -> None:
    result = run(["speak", "--room", "shop", "--identity", "stranger", "Let me in."], Seen())

    assert result.exit_code == EXIT_REFUSED
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: UNAUTHORIZED: This sender is not allowed to send messages to this agent."
    )


def test_an_error_ack_with_json_prints_it_on_stdout() -> None:
    result = run(["add-context", "--room", "shop", "--identity", "stranger", "--json", "x"], Seen())

    assert result.exit_code == EXIT_REFUSED
    answer = json.loads(result.stdout)
    assert answer["success"] is False
    assert answer["error"] == "UNAUTHORIZED"


def test_another_agent_code_exits_1() -> None:
    # the agent itself refuses a request naming another code
    refused = run(
        ["speak", "--room", "shop", "--agent-identity", "agent", "--agent-code", "B00000000", "x"],
        Seen(),
    )
    # no participant publishes that code
    missing = run(
        ["speak", "--room", "shop", "--agent-code", "B00000000", "--agent-wait", "0.05", "x"],
        Seen(),
    )
    assert refused.exit_code == EXIT_REFUSED
    assert refused.stderr.startswith("error: AGENT_NOT_FOUND: Agent with code 'B00000000'")
    assert missing.exit_code == EXIT_REFUSED
    assert missing.stderr.startswith("error: AGENT_NOT_FOUND: No participant with agent code")


# ---------------------------------------------------------------------------------------------
# 2: usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["speak", "hello"], "Missing option '--room'"),
        (["speak", "--room", "shop"], "Missing argument 'TEXT'"),
        (["add-context", "--room", "shop", "--role", "boss", "x"], "Invalid value for '--role'"),
        (["speak", "--room", "shop", "--interrupt", "--if-idle", "x"], "contradict"),
        (["speak", "--room", "shop", "--timeout", "0", "x"], "Invalid value for '--timeout'"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run(args, Seen())
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr


SPEAK = ["speak", "--room", "shop"]
ADD = ["add-context", "--room", "shop"]
BAD_ARGUMENTS: list[tuple[list[str], str]] = [
    (["speak", "--room", "", "hi"], "'--room': must not be empty"),
    (["speak", "--room", "   ", "hi"], "'--room': must not be empty"),
    (["speak", "--room", "sh\x00op", "hi"], "'--room': must not contain control"),
    ([*SPEAK, ""], "'TEXT': must contain visible text"),
    ([*SPEAK, " \t\n "], "'TEXT': must contain visible text"),
    ([*SPEAK, "\u200b\u200d\ufeff\u2060"], "'TEXT': must contain visible text"),
    ([*SPEAK, "\u00a0\u2003\u200e"], "'TEXT': must contain visible text"),
    ([*ADD, "\u2028"], "'TEXT': must contain visible text"),
    ([*SPEAK, "x" * 16_000], "the limit is 15360 bytes"),
    ([*SPEAK, "--secret", SECRET, '"' * 7_000], "the limit is 15360 bytes"),
    ([*SPEAK, "--agent-wait", "nan", "hi"], "'--agent-wait': 'nan' is not a finite number"),
    ([*SPEAK, "--agent-wait", "inf", "hi"], "'--agent-wait': 'inf' is not a finite number"),
    ([*SPEAK, "--agent-wait", "-1", "hi"], "Invalid value for '--agent-wait'"),
    ([*SPEAK, "--timeout", "nan", "hi"], "'--timeout': 'nan' is not a finite number"),
    ([*SPEAK, "--timeout", "-0.5", "hi"], "Invalid value for '--timeout'"),
    ([*SPEAK, "--timeout", "1e999", "hi"], "is not a finite number"),
    ([*SPEAK, "--wait-playout", "--playout-timeout", "nan", "hi"], "'--playout-timeout'"),
    ([*SPEAK, "--playout-timeout", "0", "hi"], "Invalid value for '--playout-timeout'"),
    ([*SPEAK, "--retries", "-1", "hi"], "Invalid value for '--retries'"),
    ([*SPEAK, "--retries", "nan", "hi"], "Invalid value for '--retries'"),
    ([*ADD, "--ttl", "nan", "x"], "'--ttl': 'nan' is not a finite number"),
    ([*ADD, "--ttl", "-3", "x"], "Invalid value for '--ttl'"),
    ([*ADD, "--ttl", "0", "x"], "Invalid value for '--ttl'"),
    ([*ADD, "--ttl", "604801", "x"], "Field 'ttl_s' is out of range"),
    ([*SPEAK, "--identity", "", "hi"], "'--identity': must not be empty"),
    ([*SPEAK, "--identity", " ", "hi"], "'--identity': must not be empty"),
    ([*SPEAK, "--agent-code", "", "hi"], "Invalid value for '--agent-code'"),
    ([*SPEAK, "--agent-identity", "\t", "hi"], "'--agent-identity': must not be empty"),
    ([*SPEAK, "--id", "", "hi"], "'--id': must not be empty"),
    ([*SPEAK, "--id", "k" * 129, "hi"], "Field 'id' must be at most 128 characters"),
    ([*ADD, "--key", " ", "x"], "'--key': must not be empty"),
    ([*ADD, "--key", "k" * 129, "x"], "Field 'key' must be at most 128 characters"),
    ([*SPEAK, "--secret", "", "hi"], "Invalid value for '--secret'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_usage_errors_found_before_connecting(
    args: list[str], message: str
) -> None:
    seen = Seen()
    result = run(args, seen)

    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert seen.settings is None  # the client factory was never called


@pytest.mark.parametrize(
    ("room", "url", "text"),
    [
        ("", "ws://127.0.0.1:1", "hi"),
        ("shop", "ws://127.0.0.1:1", "\u200b"),
        ("shop", "127.0.0.1:7880", "hi"),
        ("shop", "ftp://127.0.0.1:1", "hi"),
    ],
)
def test_bad_arguments_on_the_real_connection_path_exit_2(room: str, url: str, text: str) -> None:
    # no seam: an attempt to connect to port 1 would end in exit status 4 (or a traceback)
    args = ["speak", "--room", room, "--url", url, "--api-key", "k", "--api-secret", "s", text]
    result = run(args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert isinstance(result.exception, SystemExit)


@given(
    st.text(
        alphabet=st.sampled_from(" \t\n\r\u00a0\u2000\u200b\u200c\u200d\u2060\ufeff\u200e\u2029"),
        max_size=40,
    )
)
@settings(max_examples=50, deadline=None)
def test_invisible_text_is_never_sent(text: str) -> None:
    seen = Seen()
    result = run(["add-context", "--room", "shop", text], seen)
    assert result.exit_code == EXIT_USAGE
    assert seen.settings is None


@pytest.mark.parametrize(
    "text", ["hi", " x ", "\u200bok", "日本", "🙂", "\u0301a", "\u3164", "\u0301", "\u2800"]
)
def test_text_with_something_visible_is_sent(text: str) -> None:
    # one visible-text rule, the protocol's: what the agent takes, the command sends
    seen = Seen()
    result = run(["add-context", "--room", "shop", text], seen)
    assert result.exit_code == EXIT_OK, result.output
    assert seen.applied == 1


def test_no_livekit_url_is_a_usage_error() -> None:
    result = run(["speak", "--room", "shop", "hello"])
    assert result.exit_code == EXIT_USAGE
    assert "LIVEKIT_URL" in result.stderr


# ---------------------------------------------------------------------------------------------
# 3: no ack in time, 4: cannot connect


def test_no_ack_in_time_exits_3() -> None:
    result = run(
        [
            "speak",
            "--room",
            "shop",
            "--data",
            "--agent-identity",
            "mute",
            "--timeout",
            "0.05",
            "--retries",
            "1",
            "hello",
        ],
        Seen(),
        silent_agent=True,
    )
    assert result.exit_code == EXIT_TIMEOUT
    assert result.stderr.startswith("error: TIMEOUT: No ack from agent 'mute' within 0.05 s")


def test_no_livekit_server_exits_4() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(
        [
            "speak",
            "--room",
            "shop",
            "--url",
            f"ws://127.0.0.1:{port}",
            "--api-key",
            "devkey",
            "--api-secret",
            SECRET,
            "hello",
        ]
    )
    assert result.exit_code == EXIT_UNAVAILABLE
    assert "error: LIVEKIT_UNAVAILABLE: Could not connect to LiveKit" in result.stderr


@pytest.mark.parametrize(
    ("api_key", "api_secret", "warning"),
    [
        # livekit-server --dev's own key pair: nobody chose it, nothing to say
        ("devkey", "secret", None),
        ("devkey", "not-so-long", "warning: the LiveKit API secret is 11 bytes long; use 32"),
        ("mykey", "secret", "warning: the LiveKit API secret is 6 bytes long; use 32"),
        ("devkey", SECRET, None),
    ],
)
def test_the_api_secrets_length_is_mentioned_once_and_livekits_dev_key_not_at_all(
    api_key: str, api_secret: str, warning: str | None
) -> None:
    """The installed command, as a process: PyJWT's two-line warning, once per token signed,
    never shows; a short secret of the user's own gets one plain line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV and k != "PYTHONWARNINGS"}
    env.update(LIVEKIT_URL=f"ws://127.0.0.1:{port}", LIVEKIT_API_KEY=api_key)
    env["LIVEKIT_API_SECRET"] = api_secret
    done = subprocess.run(
        [str(Path(sys.executable).with_name("imaginex-context")), "speak", "--room", "shop", "hi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr
    assert "InsecureKeyLengthWarning" not in done.stderr
    assert "HMAC key" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    if warning is None:
        assert lines == []
    else:
        assert len(lines) == 1
        assert lines[0].startswith(warning)
    assert "error: LIVEKIT_UNAVAILABLE: Could not connect to LiveKit" in done.stderr


# ---------------------------------------------------------------------------------------------
# help


def test_help_shows_examples_and_exit_statuses() -> None:
    top = CliRunner().invoke(main, ["--help"])
    speak_help = CliRunner().invoke(main, ["speak", "--help"])
    add_help = CliRunner().invoke(main, ["add-context", "-h"])

    assert "speak" in top.stdout
    assert "add-context" in top.stdout
    for result in (speak_help, add_help):
        assert result.exit_code == 0
        assert "Examples:" in result.stdout
        assert "Exit status:" in result.stdout
        assert "LIVEKIT_URL" in result.stdout
        assert "--rpc / --data" in result.stdout
