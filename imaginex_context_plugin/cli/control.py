"""The call-control commands (protocol v1.1): ``end-call``, ``interrupt``, ``cancel``,
``update-io``, ``update-instructions``, ``reset-instructions``, ``user-message`` and
``get-history``; each one request, sent as the sender commands send (:mod:`.sender`)."""

from __future__ import annotations

from typing import Any

import click

from ..protocol import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_REASON_LENGTH
from .parameters import name, playout_timeout_option, request_id_option, visible_text
from .sender import SENDER_EPILOG, run_sender, sender_options, with_id


@click.command("end-call", epilog=SENDER_EPILOG)
@click.option("--now", is_flag=True, help="Cut what is playing and drop the queue, then end.")
@click.option(
    "--reason",
    callback=visible_text,
    help=f"Why (at most {MAX_REASON_LENGTH} characters); sent in call_ended and the log.",
)
@request_id_option
@sender_options
@click.pass_context
def end_call(
    ctx: click.Context, /, now: bool, reason: str | None, request_id: str | None, **options: Any
) -> None:
    """End the call: the agent's session shuts down and the room is deleted.

    By default what the agent is saying and what is queued finishes first.

    \b
    Examples:
      imaginex-context end-call --room shop-42 --reason "Order complete"
      imaginex-context end-call --room shop-42 --now
    """
    request: dict[str, Any] = {"type": "end_call", "after_speech": not now}
    if reason is not None:
        request["reason"] = reason
    run_sender(ctx, options, with_id(request, request_id))


@click.command(epilog=SENDER_EPILOG)
@click.option(
    "--force", is_flag=True, help="Also stop speech that does not allow interruptions."
)
@request_id_option
@sender_options
@click.pass_context
def interrupt(
    ctx: click.Context, /, force: bool, request_id: str | None, **options: Any
) -> None:
    """Stop what the agent is saying now, and what is queued.

    Without --force, speech sent with --no-interruptions is refused (BUSY) and nothing is cut.

    \b
    Examples:
      imaginex-context interrupt --room shop-42
    """
    run_sender(ctx, options, with_id({"type": "interrupt", "force": force}, request_id))


@click.command(epilog=SENDER_EPILOG)
@click.argument("target_id", callback=name)
@request_id_option
@sender_options
@click.pass_context
def cancel(
    ctx: click.Context, /, target_id: str, request_id: str | None, **options: Any
) -> None:
    """Drop the speech started by the request TARGET_ID (sent with the same --identity).

    Removed if still queued, cut if playing; an unknown or finished id is refused (NOT_FOUND).

    \b
    Examples:
      imaginex-context speak --room shop-42 --id promo-1 "Today only: 20% off."
      imaginex-context cancel --room shop-42 promo-1
    """
    run_sender(ctx, options, with_id({"type": "cancel", "target_id": target_id}, request_id))


@click.command("update-io", epilog=SENDER_EPILOG)
@click.option(
    "--agent-audio/--no-agent-audio", default=None, help="Unmute / mute the agent's voice."
)
@click.option(
    "--user-audio/--no-user-audio", default=None, help="Listen to the user again / stop."
)
@click.option(
    "--transcription/--no-transcription",
    default=None,
    help="Turn transcription output on / off.",
)
@request_id_option
@sender_options
@click.pass_context
def update_io(
    ctx: click.Context,
    /,
    agent_audio: bool | None,
    user_audio: bool | None,
    transcription: bool | None,
    request_id: str | None,
    **options: Any,
) -> None:
    """Turn the agent's voice, listening to the user or transcription on or off.

    Switches not given stay as they are; the ack reports the state of every switch.

    \b
    Examples:
      imaginex-context update-io --room shop-42 --no-user-audio
      imaginex-context update-io --room shop-42 --user-audio --agent-audio
    """
    switches = {
        "agent_audio": agent_audio,
        "user_audio": user_audio,
        "transcription": transcription,
    }
    given = {switch: on for switch, on in switches.items() if on is not None}
    if not given:
        raise click.UsageError(
            "Give at least one of --agent-audio, --user-audio or --transcription "
            "(or their --no- forms).",
            ctx,
        )
    run_sender(ctx, options, with_id({"type": "update_io", **given}, request_id))


@click.command("update-instructions", epilog=SENDER_EPILOG)
@click.argument("instructions", callback=visible_text)
@click.option("--replace", is_flag=True, help="Replace the agent's instructions (default: add).")
@request_id_option
@sender_options
@click.pass_context
def update_instructions(
    ctx: click.Context, /, instructions: str, replace: bool, request_id: str | None, **options: Any
) -> None:
    """Steer the current agent with INSTRUCTIONS, added to its own (or, --replace, instead).

    \b
    Examples:
      imaginex-context update-instructions --room shop-42 "Answer in French."
    """
    request = {
        "type": "update_instructions",
        "instructions": instructions,
        "mode": "replace" if replace else "append",
    }
    run_sender(ctx, options, with_id(request, request_id))


@click.command("reset-instructions", epilog=SENDER_EPILOG)
@request_id_option
@sender_options
@click.pass_context
def reset_instructions(ctx: click.Context, /, request_id: str | None, **options: Any) -> None:
    """Give the current agent its own instructions back.

    \b
    Examples:
      imaginex-context reset-instructions --room shop-42
    """
    run_sender(ctx, options, with_id({"type": "reset_instructions"}, request_id))


@click.command("user-message", epilog=SENDER_EPILOG)
@click.argument("text", callback=visible_text)
@click.option("--no-respond", is_flag=True, help="Only add it; the agent does not answer now.")
@click.option("--interrupt", is_flag=True, help="Stop the agent's current speech first.")
@click.option("--wait-playout", is_flag=True, help="Wait until the agent's answer has played.")
@playout_timeout_option("the answer")
@request_id_option
@sender_options
@click.pass_context
def user_message(
    ctx: click.Context,
    /,
    text: str,
    no_respond: bool,
    interrupt: bool,
    wait_playout: bool,
    playout_timeout: float,
    request_id: str | None,
    **options: Any,
) -> None:
    """Add TEXT as the user's own turn; the agent answers it.

    \b
    Examples:
      imaginex-context user-message --room shop-42 "I'd like to change my address."
      imaginex-context user-message --room shop-42 --no-respond "My order number is 4411."
    """
    if no_respond and wait_playout:
        raise click.UsageError("--wait-playout needs an answer: drop --no-respond.", ctx)
    request = {"type": "user_message", "text": text, "respond": not no_respond}
    if interrupt:
        request["interrupt"] = True
    playout = playout_timeout if wait_playout else None
    run_sender(ctx, options, with_id(request, request_id), playout_timeout=playout)


@click.command("get-history", epilog=SENDER_EPILOG)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_HISTORY_LIMIT),
    default=DEFAULT_HISTORY_LIMIT,
    show_default=True,
    help="How many of the newest conversation items.",
)
@sender_options
@click.pass_context
def get_history(ctx: click.Context, /, limit: int, **options: Any) -> None:
    """Print the newest conversation items, oldest first (time, role, text).

    \b
    Examples:
      imaginex-context get-history --room shop-42 --limit 10
      imaginex-context get-history --room shop-42 --json | jq '.data.history'
    """
    run_sender(ctx, options, {"type": "get_history", "limit": limit})


