"""Watching the call: ``subscribe`` prints the agent's live session events until the call ends,
``unsubscribe`` ends another command's subscription."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, TypeVar

import click

from ..errors import did_you_mean
from ..protocol import (
    SESSION_EVENT_TYPES,
    AgentStateEvent,
    AgentTranscriptEvent,
    ContextDroppedEvent,
    ContextUsedEvent,
    ConversationItemEvent,
    Event,
    EventsLostEvent,
    SessionEventType,
    SnapshotEvent,
    SpeechFailedEvent,
    SpeechFinishedEvent,
    SpeechStartedEvent,
    SuccessAck,
    ToolCallEvent,
    UserStateEvent,
    UserTranscriptEvent,
)
from ..sender import ALL_EVENTS, ContextError, check_request_size, prepare_request
from .parameters import request_id_option
from .sender import (
    EXIT_OK,
    SENDER_EPILOG,
    client_factory,
    report_error,
    run_sender,
    sender_options,
    settings_from,
    with_id,
)

_Printed = TypeVar("_Printed", SuccessAck, Event)

_WATCH_EPILOG: Final = """\b
Connection: --url/--api-key/--api-secret, or LIVEKIT_URL, LIVEKIT_API_KEY,
LIVEKIT_API_SECRET. The command joins the room as a data-only sender, subscribes,
prints each event as it comes (with --json: one JSON object a line, the subscribe
ack first), and unsubscribes as it leaves. The agent must grant this identity the
'subscribe' permission (ContextPlugin(permissions=...)).

\b
Exit status:
  0  the call ended (call_ended was printed), or Ctrl-C
  1  the agent refused the subscription (the error code is printed), no agent
     was found, or the agent left the room without ending the call
  2  usage error
  3  no ack in time
  4  LiveKit could not be reached, or the room went away
"""


def _event_names(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> list[SessionEventType]:
    """``--events a,b``: known session event names, each once, in the given order."""
    if value is None:
        return list(ALL_EVENTS)
    names: list[SessionEventType] = []
    for raw in value.split(","):
        name = raw.strip()
        if name not in SESSION_EVENT_TYPES:
            hint = did_you_mean(name, SESSION_EVENT_TYPES)
            raise click.BadParameter(
                f"{name!r} is not an event{hint}; use: {', '.join(SESSION_EVENT_TYPES)}.",
                ctx,
                param,
            )
        if name not in names:
            names.append(name)  # type: ignore[arg-type]  # checked against the Literal's values
    return names


@click.command(epilog=_WATCH_EPILOG)
@click.option(
    "--events",
    "event_names",
    callback=_event_names,
    metavar="NAMES",
    help=f"Comma-separated events to watch: {', '.join(SESSION_EVENT_TYPES)}. "
    "[default: all] call_ended comes anyway.",
)
@click.option("--interim", is_flag=True, help="Also interim (not final) user transcripts.")
@click.option(
    "--tool-arguments", is_flag=True, help="Also each tool call's arguments (personal data)."
)
@click.option(
    "--since",
    "since_seq",
    type=click.IntRange(min=0),
    metavar="SEQ",
    help="Resume: first replay what the agent still holds after this seq (the last one seen; "
    "printed when the command stops), then go live. If the agent no longer holds it all: "
    "events_lost, then a fresh snapshot.",
)
@sender_options
@click.pass_context
def subscribe(
    ctx: click.Context,
    /,
    event_names: list[SessionEventType],
    interim: bool,
    tool_arguments: bool,
    since_seq: int | None,
    **options: Any,
) -> None:
    """Watch the call: print the agent's live session events until the call ends.

    \b
    Examples:
      imaginex-context subscribe --room shop-42
      imaginex-context subscribe --room shop-42 --events user_transcript,agent_transcript
      imaginex-context subscribe --room shop-42 --json | jq -c 'select(.type == "user_transcript")'
      imaginex-context subscribe --room shop-42 --since 1234
    """
    settings = settings_from(options)
    request: dict[str, Any] = {
        "type": "subscribe",
        "events": event_names,
        "interim": interim,
        "tool_arguments": tool_arguments,
    }
    if since_seq is not None:
        request["since_seq"] = since_seq
    try:
        check_request_size(prepare_request(request, agent_code=settings.options.get("agent_code")))
    except ContextError as exc:
        raise click.UsageError(exc.message, ctx) from None
    factory = client_factory(ctx, settings, verbose=options["verbose"])
    as_json: bool = options["as_json"]

    last_seq: list[int | None] = [since_seq]  # what to resume after, however the watch ends

    async def watch() -> int:
        try:
            client = await factory(settings)
        except ContextError as exc:
            return report_error(exc, as_json)
        try:
            async with (
                client,
                client.subscribe(
                    events=event_names,
                    interim=interim,
                    tool_arguments=tool_arguments,
                    since_seq=since_seq,
                ) as events,
            ):
                _echo(events.ack, as_json, _subscribed_line)
                last_seq[0] = events.last_seq
                async for event in events:
                    _echo(event, as_json, _event_line)
                    last_seq[0] = events.last_seq
        except ContextError as exc:
            return report_error(exc, as_json)
        return EXIT_OK

    try:
        code = asyncio.run(watch())
    except KeyboardInterrupt:
        # asyncio.run cancelled the watch first, so the subscription was closed (unsubscribed)
        code = EXIT_OK
        if last_seq[0] is not None and not as_json:
            click.echo(f"last seq: {last_seq[0]} (resume with --since {last_seq[0]})", err=True)
    ctx.exit(code)


def _echo(model: _Printed, as_json: bool, line: Callable[[_Printed], str]) -> None:
    """One line on stdout: ``model`` as JSON, or as ``line`` writes it for a person."""
    click.echo(model.model_dump_json() if as_json else line(model))


def _subscribed_line(ack: SuccessAck) -> str:
    line = f"ok: {ack.message}  events={','.join(ack.data.events or ())}"
    snapshot = ack.data.snapshot
    if snapshot is not None:  # v1.3: where the call stands, and where the events continue
        line += (
            f"  seq={snapshot.seq} agent={snapshot.state.agent_state} "
            f"messages={len(snapshot.items)} pending={len(snapshot.pending_speeches)}"
        )
    if ack.data.replayed is not None:
        line += f"  replaying={ack.data.replayed}"
    return line


def _event_line(event: Event) -> str:
    line = f"{event.timestamp}  {_describe(event)}"
    if event.dropped:
        line += f"  ({event.dropped} events dropped before this one)"
    if event.replay:
        line += "  (replayed)"
    return line


def _describe(event: Event) -> str:
    """One event as a line a person reads."""
    if isinstance(event, UserTranscriptEvent):
        return f"user: {event.text}" + ("" if event.final else " (interim)")
    if isinstance(event, AgentTranscriptEvent):
        return f"agent: {event.text}" + (" (interrupted)" if event.interrupted else "")
    if isinstance(event, AgentStateEvent | UserStateEvent):
        return f"{event.type}: {event.old_state} -> {event.new_state}"
    if isinstance(event, ConversationItemEvent):
        if event.item_type == "agent_handoff":
            return f"conversation_item: handoff to {event.new_agent}"
        cut = " (interrupted)" if event.interrupted else ""
        return f"conversation_item: {event.role}: {event.text}{cut}"
    if isinstance(event, ToolCallEvent):
        arguments = f" {event.arguments}" if event.arguments is not None else ""
        return f"tool_call: {event.name} {event.status}{arguments}"
    if isinstance(event, SpeechStartedEvent):
        return f"speech_started: {event.speech_id} (request {event.id})"
    if isinstance(event, SpeechFinishedEvent):
        cut = " (interrupted)" if event.interrupted else ""
        return f"speech_finished: {event.speech_id} (request {event.id}){cut}"
    if isinstance(event, SpeechFailedEvent):
        return f"speech_failed: {event.speech_id} (request {event.id}): {event.reason}"
    if isinstance(event, ContextUsedEvent):
        return (
            f"context_used: {event.key or event.entry_id} (request {event.request_id}) "
            f"by model call {event.llm_call.index}"
        )
    if isinstance(event, ContextDroppedEvent):
        return (
            f"context_dropped: {event.key or event.entry_id} (request {event.request_id}): "
            f"{event.reason}"
        )
    if isinstance(event, EventsLostEvent):
        return f"events_lost: {event.from_seq}..{event.to_seq} (a snapshot follows)"
    if isinstance(event, SnapshotEvent):
        return (
            f"snapshot: agent {event.state.agent_state}, user {event.state.user_state}, "
            f"{len(event.items)} messages, {len(event.pending_speeches)} speeches pending"
        )
    return f"call_ended: {event.reason}"


@click.command(epilog=SENDER_EPILOG)
@request_id_option
@sender_options
@click.pass_context
def unsubscribe(ctx: click.Context, /, request_id: str | None, **options: Any) -> None:
    """End this identity's subscription (another command's `subscribe` with the same
    --identity stops receiving events). Prints whether there was one (removed=true/false).

    \b
    Examples:
      imaginex-context unsubscribe --room shop-42
    """
    run_sender(ctx, options, with_id({"type": "unsubscribe"}, request_id))
