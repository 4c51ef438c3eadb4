"""The command line on protocol v1.3, against an in-process agent on the real AgentSession:
``subscribe --since`` resumes (what was missed first, marked, then live), ``speak --audio``
streams and plays a clip, ``--start-within`` and the clip are checked before connecting."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from livekit import rtc
from livekit.agents import AgentSession

from imaginex_context_plugin import ContextPlugin
from imaginex_context_plugin.cli import CLI_IDENTITY, CLIENT_FACTORY_KEY, EXIT_OK, main
from tests.fakes import RecordingTTS
from tests.sender.test_cli_control import Call, watched_call
from tests.sender.test_cli_sender import CLEAN_ENV, Seen, run
from tests.sender.test_client_v1_3 import wav_clip

ROOM = "shop"
EVERYTHING = {CLI_IDENTITY: {"*"}}


async def end_once_subscribed(_: AgentSession[Any], plugin: ContextPlugin, __: rtc.Room) -> None:
    await asyncio.sleep(0.1)
    plugin.ingest(
        json.dumps({"type": "end_call", "id": "bye", "reason": "done"}),
        sender_identity=CLI_IDENTITY,
    )


def invoke(args: list[str], factory: Any) -> Result:
    return CliRunner().invoke(main, args, obj={CLIENT_FACTORY_KEY: factory}, env=CLEAN_ENV)


def test_subscribe_since_replays_what_was_missed_then_goes_live() -> None:
    result = invoke(
        ["subscribe", "--room", ROOM, "--events", "agent_transcript", "--since", "0"],
        watched_call(Call(end_once_subscribed, before=["First.", "Second."])),
    )
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert "replaying=2" in lines[0]
    assert lines[1].endswith("agent: First.  (replayed)")
    assert lines[2].endswith("agent: Second.  (replayed)")
    assert lines[-1].split("  ", 1)[1] == "call_ended: done"


def test_subscribe_since_json_carries_the_seq_and_the_replay_mark() -> None:
    call = Call(end_once_subscribed, before=["Only."])
    result = invoke(
        ["subscribe", "--room", ROOM, "--events", "agent_transcript", "--since", "0", "--json"],
        watched_call(call),
    )
    assert result.exit_code == EXIT_OK, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    ack, replayed, ended = docs[0], docs[1], docs[-1]
    assert ack["data"]["replayed"] == 1
    assert ack["data"]["snapshot"]["seq"] == call.seq_before
    assert (replayed["type"], replayed["text"], replayed["replay"]) == (
        "agent_transcript", "Only.", True
    )
    assert 0 < replayed["seq"] <= call.seq_before < ended["seq"]


def test_speak_audio_streams_and_plays_the_clip(tmp_path: Path) -> None:
    path = tmp_path / "chime.wav"
    path.write_bytes(wav_clip(0.3))
    seen = Seen()
    result = run(
        ["speak", "--room", ROOM, "--audio", str(path), "--wait-playout", "--json"], seen
    )
    assert result.exit_code == EXIT_OK, result.output
    doc = json.loads(result.stdout)
    assert doc["ack"]["data"]["method"] == "say"
    assert doc["speech_finished"]["played_s"] == pytest.approx(0.3, abs=0.05)
    assert seen.said == []  # no TTS: the clip played


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["speak", "--room", ROOM], "Missing argument 'TEXT' (or an --audio clip to play)"),
        (["speak", "--room", ROOM, "--start-within", "0", "Hi"], "'--start-within'"),
        (["speak", "--room", ROOM, "--start-within", "3601", "Hi"], "'--start-within'"),
        (["speak", "--room", ROOM, "--audio", "/nonexistent.wav"], "'--audio'"),
        (["subscribe", "--room", ROOM, "--since", "-1"], "'--since'"),
    ],
)
def test_v1_3_options_are_checked_before_connecting(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args, env=CLEAN_ENV)
    assert result.exit_code == 2
    assert message in result.stderr


def test_an_empty_clip_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    result = CliRunner().invoke(main, ["speak", "--room", ROOM, "--audio", str(path)])
    assert result.exit_code == 2
    assert "The audio clip is empty." in result.stderr
    _ = RecordingTTS
