"""The demo is the README's first command: it must keep showing the behaviour it promises."""

from __future__ import annotations

from click.testing import CliRunner

from imaginex_context_plugin.cli import main
from imaginex_context_plugin.cli.demo import run_demo


async def test_demo_shows_every_promised_behaviour() -> None:
    lines: list[str] = []
    summary = await run_demo(out=lines.append, pace_s=0.05)
    acks = {(a["id"], a.get("duplicate", False)): a for a in summary["acks"] if a["type"] == "ack"}

    assert acks[("ctx-1", False)]["success"] is True
    assert acks[("say-1", False)]["success"] is True
    assert acks[("say-1", True)]["success"] is True  # the retry: acked, not spoken again
    assert acks[("x-1", False)]["error"] == "UNAUTHORIZED"
    errors = [a for a in summary["acks"] if a["type"] == "ack" and a["id"] is None]
    assert [a["error"] for a in errors] == ["VALIDATION_ERROR", "VALIDATION_ERROR"]
    assert any(a["type"] == "speech_finished" for a in summary["acks"])

    said = summary["said"]
    assert said.count("Your order #1234 has shipped!") == 1
    assert "I am not allowed to say this." not in said
    assert said[0] == "I don't know anything about you yet."
    assert "premium member" in said[1]
    assert "enterprise plan" in said[3]
    assert "free shipping" in said[4]  # trigger_reply, with the one-turn context
    assert acks[("say-2", False)]["data"]["method"] == "generate_reply"
    assert said[5] == "(as instructed) Thank John for upgrading."
    assert said[-1] == "I don't know anything about you yet."  # the one-turn context is gone
    assert summary["knowledge"] == []
    assert any("agent says" in line for line in lines)


def test_demo_command_runs() -> None:
    result = CliRunner().invoke(main, ["demo", "--pace", "0"])
    assert result.exit_code == 0, result.output
    assert "crm-backend sends" in result.output
    assert "UNAUTHORIZED" in result.output


def test_demo_uses_only_public_seams() -> None:
    # the demo is what users copy: no private SDK module (livekit.rtc._proto, ...) in it
    import ast
    import inspect

    from imaginex_context_plugin.cli import demo

    imported = [
        node.module or ""
        for node in ast.walk(ast.parse(inspect.getsource(demo)))
        if isinstance(node, ast.ImportFrom)
    ]
    private = [
        name
        for name in imported
        if name.startswith("livekit.") and any(part.startswith("_") for part in name.split("."))
    ]
    assert private == []


async def test_the_avatar_variant_reports_what_the_avatar_played() -> None:
    lines: list[str] = []
    summary = await run_demo(out=lines.append, pace_s=0.05, avatar=True, avatar_speed=10.0)
    finished = [a for a in summary["acks"] if a["type"] == "speech_finished"]
    reports = [line for line in lines if "reported to the agent" in line]
    # every speech of the backend's ended after the avatar's report, with the position it gave
    assert finished
    assert len(reports) >= len(finished)
    reported = [float(line.split(" s, reported")[0].split()[-1]) for line in reports]
    for event in finished:
        if not event["interrupted"]:
            assert event["played_s"] > 0
            assert any(abs(event["played_s"] - r) < 0.006 for r in reported), event
    (cut,) = [a for a in finished if a["id"] == "say-3"]
    assert cut["interrupted"] is True
    assert summary["said"].count("Your order #1234 has shipped!") == 1


def test_demo_command_runs_with_an_avatar() -> None:
    result = CliRunner().invoke(main, ["demo", "--pace", "0", "--avatar"])
    assert result.exit_code == 0, result.output
    assert "avatar" in result.output
    assert "reported to the agent" in result.output
