"""The call-control commands (protocol v1.1): ``end-call``, ``interrupt``, ``cancel``,
``update-io``, ``update-instructions``, ``reset-instructions``, ``user-message``,
``get-history``, and speak's ``--end-call-after`` / ``--no-history``.

Two seams: a recording client (what each command sends, and how it prints each answer) and the
in-process agent of ``test_cli_sender`` (a real AgentSession with ContextPlugin on the relay:
what the agent does with it).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner, Result
from livekit import rtc
from livekit.agents import AgentSession
from pydantic import BaseModel

from imaginex_context_plugin import ContextClient, ContextPlugin, ErrorCode
from imaginex_context_plugin.cli import (
    CLI_IDENTITY,
    CLIENT_FACTORY_KEY,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    SenderSettings,
    main,
)
from imaginex_context_plugin.protocol import (
    SESSION_EVENT_TYPES,
    AckData,
    HistoryItem,
    IOState,
    Request,
    SpeechFinishedEvent,
    SuccessAck,
    error_ack,
    utc_timestamp,
)
from imaginex_context_plugin.sender import ContextError, prepare_request
from imaginex_context_plugin.testing import OfflineRoom
from tests.fakes import RecordingAudioOutput, RelayNetwork, start_session
from tests.helpers import wait_until
from tests.sender.test_cli_sender import CLEAN_ENV, InProcessClient, Seen, in_process_agent

ROOM = "shop"


class RecordingClient(ContextClient):
    """Records every request and answers it as ``answer`` says, without any room."""

    def __init__(
        self,
        settings: SenderSettings,
        sent: list[dict[str, Any]],
        answer: Callable[[dict[str, Any]], SuccessAck],
    ) -> None:
        super().__init__(OfflineRoom(settings.room))
        self._sent = sent
        self._answer = answer

    async def send(
        self, request: Request | BaseModel | Mapping[str, Any], *, timeout: float | None = None
    ) -> SuccessAck:
        obj = prepare_request(request)
        self._sent.append(obj)
        return self._answer(obj)

    async def wait_for_playout(
        self, request_id: str, *, timeout: float | None = None
    ) -> SpeechFinishedEvent:
        return SpeechFinishedEvent(
            id=request_id, speech_id="speech_1", interrupted=False, timestamp=utc_timestamp()
        )


def plain_ack(obj: dict[str, Any], **data: Any) -> SuccessAck:
    fields: dict[str, Any] = {
        "agent_code": None,
        "context_type": obj["type"],
        "room_id": ROOM,
        "timestamp": utc_timestamp(),
    }
    return SuccessAck(id=obj["id"], message="done", data=AckData(**fields, **data))


def recording(
    sent: list[dict[str, Any]],
    answer: Callable[[dict[str, Any]], SuccessAck] = plain_ack,
) -> Callable[[SenderSettings], Awaitable[ContextClient]]:
    async def factory(settings: SenderSettings) -> ContextClient:
        return RecordingClient(settings, sent, answer)

    return factory


def run(
    args: list[str], factory: Callable[[SenderSettings], Awaitable[ContextClient]] | None
) -> Result:
    obj = None if factory is None else {CLIENT_FACTORY_KEY: factory}
    return CliRunner().invoke(main, args, obj=obj, env=CLEAN_ENV)


def sent_by(args: list[str]) -> dict[str, Any]:
    """The one request the command sends (its random id left out)."""
    sent: list[dict[str, Any]] = []
    result = run(args, recording(sent))
    assert result.exit_code == EXIT_OK, result.output
    assert len(sent) == 1
    request = dict(sent[0])
    request.pop("id")
    return request


# ---------------------------------------------------------------------------------------------
# what each command sends


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["end-call"], {"type": "end_call", "after_speech": True}),
        (
            ["end-call", "--now", "--reason", "Order complete"],
            {"type": "end_call", "after_speech": False, "reason": "Order complete"},
        ),
        (["interrupt"], {"type": "interrupt", "force": False}),
        (["interrupt", "--force"], {"type": "interrupt", "force": True}),
        (["cancel", "promo-1"], {"type": "cancel", "target_id": "promo-1"}),
        (["update-io", "--no-user-audio"], {"type": "update_io", "user_audio": False}),
        (
            ["update-io", "--agent-audio", "--no-transcription"],
            {"type": "update_io", "agent_audio": True, "transcription": False},
        ),
        (
            ["update-instructions", "Answer in French."],
            {"type": "update_instructions", "instructions": "Answer in French.", "mode": "append"},
        ),
        (
            ["update-instructions", "--replace", "Be brief."],
            {"type": "update_instructions", "instructions": "Be brief.", "mode": "replace"},
        ),
        (["reset-instructions"], {"type": "reset_instructions"}),
        (
            ["user-message", "Change my address."],
            {"type": "user_message", "text": "Change my address.", "respond": True},
        ),
        (
            ["user-message", "--no-respond", "--interrupt", "Order 4411."],
            {"type": "user_message", "text": "Order 4411.", "respond": False, "interrupt": True},
        ),
        (["get-history"], {"type": "get_history", "limit": 50}),
        (["get-history", "--limit", "200"], {"type": "get_history", "limit": 200}),
        (
            ["speak", "--end-call-after", "--no-history", "Goodbye!"],
            {
                "type": "speak",
                "message": "Goodbye!",
                "allow_interruptions": True,
                "interrupt": False,
                "end_call_after": True,
                "add_to_history": False,
            },
        ),
    ],
)
def test_each_command_sends_its_request(args: list[str], expected: dict[str, Any]) -> None:
    command, *rest = args
    assert sent_by([command, "--room", ROOM, *rest]) == expected


def test_a_given_id_is_sent() -> None:
    sent: list[dict[str, Any]] = []
    result = run(["end-call", "--room", ROOM, "--id", "bye-1"], recording(sent))
    assert result.exit_code == EXIT_OK, result.output
    assert sent[0]["id"] == "bye-1"


# ---------------------------------------------------------------------------------------------
# what each answer prints


def test_update_io_prints_the_resulting_switches() -> None:
    def answer(obj: dict[str, Any]) -> SuccessAck:
        io = IOState(agent_audio=True, user_audio=False, transcription=True)
        return plain_ack(obj, io=io)

    result = run(["update-io", "--room", ROOM, "--no-user-audio"], recording([], answer))
    assert result.exit_code == EXIT_OK, result.output
    assert "agent_audio=on  user_audio=off  transcription=on" in result.stdout


def test_get_history_prints_one_line_per_item_oldest_first() -> None:
    def answer(obj: dict[str, Any]) -> SuccessAck:
        items = [
            HistoryItem(
                id="i1", role="user", text="Hi", interrupted=False, created_at="2024-01-01T00:00Z"
            ),
            HistoryItem(
                id="i2",
                role="assistant",
                text="Hello! How can",
                interrupted=True,
                created_at="2024-01-01T00:01Z",
            ),
        ]
        return plain_ack(obj, history=items, truncated=True)

    result = run(["get-history", "--room", ROOM], recording([], answer))
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert "items=2" in lines[0]
    assert "(truncated to fit one packet)" in lines[0]
    assert lines[1:] == [
        "2024-01-01T00:00Z  user: Hi",
        "2024-01-01T00:01Z  assistant: Hello! How can (interrupted)",
    ]


def test_get_history_json_prints_the_whole_ack() -> None:
    def answer(obj: dict[str, Any]) -> SuccessAck:
        return plain_ack(obj, history=[])

    result = run(["get-history", "--room", ROOM, "--json"], recording([], answer))
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["data"]["history"] == []


def test_interrupt_and_cancel_print_what_happened() -> None:
    def answer(obj: dict[str, Any]) -> SuccessAck:
        if obj["type"] == "interrupt":
            return plain_ack(obj, interrupted=False)
        return plain_ack(obj, target_id=obj["target_id"], cancelled="queued")

    interrupted = run(["interrupt", "--room", ROOM], recording([], answer))
    cancelled = run(["cancel", "--room", ROOM, "t-1"], recording([], answer))
    assert "interrupted=false" in interrupted.stdout
    assert "cancelled=queued" in cancelled.stdout


def test_user_message_wait_playout_reports_the_answer() -> None:
    result = run(
        ["user-message", "--room", ROOM, "--wait-playout", "Hello?"],
        recording([], lambda obj: plain_ack(obj, speech_id="speech_1")),
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "played out: speech_id=speech_1" in result.stdout


def test_a_refusal_exits_1_with_its_code() -> None:
    class Refusing(RecordingClient):
        async def send(
            self, request: Request | BaseModel | Mapping[str, Any], *, timeout: float | None = None
        ) -> SuccessAck:
            ack = error_ack(ErrorCode.NOT_FOUND, "No speech with id 'x' is queued or playing.", "c")
            raise ContextError(ack.error, ack.message, request_id="c", ack=ack, retryable=False)

    async def factory(settings: SenderSettings) -> ContextClient:
        return Refusing(settings, [], plain_ack)

    result = run(["cancel", "--room", ROOM, "x"], factory)
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: NOT_FOUND: No speech with id 'x'")


# ---------------------------------------------------------------------------------------------
# 2: usage errors, before connecting

BAD_ARGUMENTS: list[tuple[list[str], str]] = [
    (["end-call", "--room", ROOM, "--reason", " "], "'--reason': must contain visible text"),
    (["end-call", "--room", ROOM, "--reason", "r" * 257], "Field 'reason'"),
    (["end-call", "--room", ROOM, "--id", ""], "'--id': must not be empty"),
    (["end-call", "--room", "", "--now"], "'--room': must not be empty"),
    (["interrupt", "--room", ROOM, "--timeout", "0"], "Invalid value for '--timeout'"),
    (["interrupt", "--room", ROOM, "--force", "yes"], "unexpected extra argument"),
    (["cancel", "--room", ROOM], "Missing argument 'TARGET_ID'"),
    (["cancel", "--room", ROOM, " "], "'TARGET_ID': must not be empty"),
    (["cancel", "--room", ROOM, "t" * 129], "Field 'target_id' must be at most 128"),
    (["update-io", "--room", ROOM], "Give at least one of --agent-audio"),
    (["update-io", "--room", ROOM, "--mute"], "No such option '--mute'"),
    (["update-instructions", "--room", ROOM, "\u200b"], "must contain visible text"),
    (["update-instructions", "--room", ROOM, "x" * 16_000], "the limit is 15360 bytes"),
    (["update-instructions", "--room", ROOM], "Missing argument 'INSTRUCTIONS'"),
    (["reset-instructions", "--room", ROOM, "now"], "unexpected extra argument"),
    (["user-message", "--room", ROOM, " "], "'TEXT': must contain visible text"),
    (["user-message", "--room", ROOM, "--no-respond", "--wait-playout", "x"], "--wait-playout"),
    (["user-message", "--room", ROOM, "--playout-timeout", "nan", "x"], "not a finite number"),
    (["get-history", "--room", ROOM, "--limit", "0"], "Invalid value for '--limit'"),
    (["get-history", "--room", ROOM, "--limit", "201"], "Invalid value for '--limit'"),
    (["get-history", "--room", ROOM, "--limit", "ten"], "Invalid value for '--limit'"),
    (["subscribe", "--room", ROOM, "--events", "everything"], "'everything' is not an event"),
    (["subscribe", "--room", ROOM, "--events", ""], "'' is not an event"),
    (["subscribe", "--room", ROOM, "--events", "user_state,"], "'' is not an event"),
    (["subscribe", "--room", ROOM, "--events", "user-transcript"],
     "'user-transcript' is not an event (did you mean 'user_transcript'?)"),
    (["subscribe", "--room", ROOM, "--interim", "yes"], "unexpected extra argument"),
    (["unsubscribe", "--room", ROOM, "--id", " "], "'--id': must not be empty"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_usage_errors_found_before_connecting(
    args: list[str], message: str
) -> None:
    sent: list[dict[str, Any]] = []
    connected: list[SenderSettings] = []

    async def factory(settings: SenderSettings) -> ContextClient:
        connected.append(settings)
        return RecordingClient(settings, sent, plain_ack)

    result = run(args, factory)
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert connected == []


@pytest.mark.parametrize(
    "command",
    [
        ["end-call"],
        ["interrupt"],
        ["cancel", "t-1"],
        ["update-io", "--no-user-audio"],
        ["update-instructions", "Be brief."],
        ["reset-instructions"],
        ["user-message", "Hi"],
        ["get-history"],
        ["subscribe"],
        ["unsubscribe"],
    ],
)
def test_every_command_needs_a_livekit_url_on_the_real_path(command: list[str]) -> None:
    name, *rest = command
    result = run([name, "--room", ROOM, *rest], None)
    assert result.exit_code == EXIT_USAGE
    assert "LIVEKIT_URL" in result.stderr


def test_help_lists_the_call_control_commands_with_exit_statuses() -> None:
    overview = run(["--help"], None).stdout
    for name in (
        "end-call",
        "interrupt",
        "cancel",
        "update-io",
        "update-instructions",
        "reset-instructions",
        "user-message",
        "get-history",
        "subscribe",
        "unsubscribe",
    ):
        assert name in overview
        help_text = run([name, "--help"], None).stdout
        assert "Exit status:" in help_text
        assert "Examples:" in help_text


# ---------------------------------------------------------------------------------------------
# against the real receiver (the in-process agent of test_cli_sender)

EVERYTHING = {CLI_IDENTITY: {"*"}}


def run_agent(args: list[str], **plugin_kwargs: Any) -> Result:
    factory = in_process_agent(Seen(), **plugin_kwargs)
    return run(args, factory)


def test_update_io_is_applied_by_the_agent() -> None:
    result = run_agent(["update-io", "--room", ROOM, "--no-user-audio"], permissions=EVERYTHING)
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith("ok: ")
    assert "agent_audio=on  user_audio=off" in result.stdout


def test_user_message_is_answered_and_waited_for() -> None:
    result = run_agent(["user-message", "--room", ROOM, "--wait-playout", "Hello?"])
    assert result.exit_code == EXIT_OK, result.output
    assert "speech_id=" in result.stdout
    assert "played out" in result.stdout


def test_get_history_of_a_new_call_is_empty() -> None:
    result = run_agent(["get-history", "--room", ROOM], permissions=EVERYTHING)
    assert result.exit_code == EXIT_OK, result.output
    assert "items=0" in result.stdout


def test_an_unknown_cancel_target_exits_1_not_found() -> None:
    result = run_agent(["cancel", "--room", ROOM, "never-sent"])
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: NOT_FOUND: ")


def test_end_call_without_the_permission_exits_1_unauthorized() -> None:
    result = run_agent(["end-call", "--room", ROOM])
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: UNAUTHORIZED: ")
    assert "end_call" in result.stderr


def test_end_call_with_the_permission_exits_0() -> None:
    result = run_agent(["end-call", "--room", ROOM, "--now"], permissions=EVERYTHING)
    assert result.exit_code == EXIT_OK, result.output


# ---------------------------------------------------------------------------------------------
# subscribe / unsubscribe: the agent's live events, printed until the call ends


@dataclass
class Call:
    """What happens in the in-process agent's call once the command has subscribed."""

    then: Callable[[AgentSession[Any], ContextPlugin, rtc.Room], Awaitable[None]]
    before: list[str] = field(default_factory=list)
    """What the agent said before the command came."""
    seq_before: int | None = None
    """The agent's last ``seq`` once it had said ``before``."""
    subscribers_left: list[str] | None = None
    """Who was still subscribed when the command closed its client."""


async def speak_then_end(session: AgentSession[Any], plugin: ContextPlugin, _: rtc.Room) -> None:
    await session.say("Your order shipped.")
    plugin.ingest(
        json.dumps({"type": "end_call", "id": "bye", "reason": "Order complete"}),
        sender_identity=CLI_IDENTITY,
    )


def watched_call(call: Call) -> Callable[[SenderSettings], Awaitable[ContextClient]]:
    """An in-process agent that says ``call.before``, lets the command subscribe, then plays
    ``call.then``."""

    async def factory(settings: SenderSettings) -> ContextClient:
        network = RelayNetwork()
        session = await start_session(audio_output=RecordingAudioOutput(speed=20))
        agent_room = network.create_room(
            settings.room, "agent", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        )
        plugin = ContextPlugin(allowed_identities=[CLI_IDENTITY], permissions=EVERYTHING)
        await plugin.start(session, agent_room)
        if call.before:
            for text in call.before:
                await session.say(text)
            await asyncio.sleep(0.05)
        call.seq_before = plugin.last_seq
        sender_room = network.create_room(settings.room, settings.identity or CLI_IDENTITY)

        async def play() -> None:
            await wait_until(lambda: plugin.subscribers != [], "the subscription")
            await call.then(session, plugin, agent_room)

        task = asyncio.ensure_future(play())

        async def teardown() -> None:
            call.subscribers_left = plugin.subscribers
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await plugin.aclose()
            await session.aclose()
            await network.aclose()

        return InProcessClient(sender_room, settings, teardown)

    return factory


def test_subscribe_prints_the_call_until_it_ends() -> None:
    result = run(
        ["subscribe", "--room", ROOM, "--events", "agent_transcript,agent_state"],
        watched_call(Call(speak_then_end)),
    )
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "ok: Subscribed to session events  events=agent_transcript,agent_state,call_ended  seq="
    )
    assert "agent=" in lines[0]
    assert "pending=0" in lines[0]
    described = [line.split("  ", 1)[1] for line in lines[1:]]
    assert "agent_state: listening -> speaking" in described
    assert "agent: Your order shipped." in described
    assert described[-1] == "call_ended: Order complete"


def test_subscribe_json_prints_one_object_a_line_ack_first() -> None:
    result = run(
        ["subscribe", "--room", ROOM, "--data", "--json", "--interim", "--tool-arguments"],
        watched_call(Call(speak_then_end)),
    )
    assert result.exit_code == EXIT_OK, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert docs[0]["type"] == "ack"
    assert docs[0]["data"]["events"] == list(SESSION_EVENT_TYPES)
    kinds = [doc["type"] for doc in docs[1:]]
    assert {"agent_state", "agent_transcript", "conversation_item"} <= set(kinds)
    assert kinds[-1] == "call_ended"
    assert all(doc["timestamp"].endswith("Z") for doc in docs[1:])


def test_subscribe_ends_with_exit_1_when_the_agent_leaves_without_ending() -> None:
    async def leave(_: AgentSession[Any], __: ContextPlugin, agent_room: rtc.Room) -> None:
        await agent_room.disconnect()

    result = run(["subscribe", "--room", ROOM], watched_call(Call(leave)))
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: AGENT_NOT_FOUND: Agent 'agent' left the room")


def test_subscribe_exits_0_on_ctrl_c_and_unsubscribes() -> None:
    async def interrupt(_: AgentSession[Any], __: ContextPlugin, ___: rtc.Room) -> None:
        # Ctrl-C once the command has printed the agent's ack, as a person would: the agent
        # registers the subscription a moment before the ack reaches the command. CliRunner's
        # stdout is this thread's sys.stdout while the command runs.
        printed = sys.stdout.buffer  # type: ignore[union-attr]
        await wait_until(
            lambda: b"ok: Subscribed" in printed.getvalue(), "the command printed the ack"
        )
        signal.raise_signal(signal.SIGINT)

    call = Call(interrupt)
    result = run(["subscribe", "--room", ROOM], watched_call(call))
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith("ok: Subscribed to session events")
    assert call.subscribers_left == []


def test_subscribe_without_the_permission_exits_1_unauthorized() -> None:
    result = run_agent(["subscribe", "--room", ROOM])
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.startswith("error: UNAUTHORIZED: ")
    assert "'subscribe' permission" in result.stderr


def test_unsubscribe_without_a_subscription_says_so() -> None:
    result = run_agent(["unsubscribe", "--room", ROOM, "--id", "u-1"])
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.startswith("ok: Unsubscribed from session events  id=u-1")
    assert "removed=false" in result.stdout
