"""The sender commands' common ground, and the first two of them: ``speak`` and ``add-context``.

Every sender command checks what it can offline (the request the agent would refuse is refused
here, before joining the room), then joins the room as a data-only sender through a client
factory (:data:`CLIENT_FACTORY_KEY` is the seam tests use), sends one request, prints the ack
and leaves with an exit status that says how it went. :func:`client_options` is the one mapping
from the commands' options to :class:`~..sender.ContextClient`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, get_args

import click

from .._env import (
    AGENT_CODE_ENV,
    CONTEXT_SECRET_ENV,
    LIVEKIT_API_KEY_ENV,
    LIVEKIT_API_SECRET_ENV,
    LIVEKIT_URL_ENV,
)
from .._livekit.settings import is_livekit_url
from ..errors import ErrorCode
from ..protocol import (
    DEFAULT_CONTEXT_ROLE,
    DEFAULT_START_WITHIN_S,
    MAX_CLIP_BYTES,
    MAX_CLIP_S,
    MAX_START_WITHIN_S,
    ContextRole,
    SuccessAck,
)
from ..sender import (
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VIA,
    ClientOptions,
    ContextClient,
    ContextError,
    PlayoutTimeoutError,
    SpeakResult,
    SpeechFailedError,
    check_request_size,
    prepare_request,
)
from ..sender.clips import AudioClip
from .parameters import (
    FiniteFloatRange,
    api_secret_warning_once,
    name,
    not_empty,
    playout_timeout_option,
    request_id_option,
    visible_text,
)

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
"""The agent refused the request (an error ack), or no agent was found in the room."""
EXIT_USAGE: Final = 2  # click's own exit status for usage errors
EXIT_TIMEOUT: Final = 3
"""No ack in time (or, with --wait-playout, the speech did not end in time)."""
EXIT_UNAVAILABLE: Final = 4
"""LiveKit could not be reached."""

CLI_IDENTITY: Final = "imaginex-context-cli"
"""The commands' participant identity unless --identity says otherwise."""
CLIENT_FACTORY_KEY: Final = "client_factory"
"""``main(obj={CLIENT_FACTORY_KEY: factory})`` makes every sender command build its client
with ``await factory(settings)`` instead of joining LiveKit: the seam tests and other transports
use."""

SENDER_EPILOG: Final = """\b
Connection: --url/--api-key/--api-secret, or LIVEKIT_URL, LIVEKIT_API_KEY,
LIVEKIT_API_SECRET. The command joins the room as a data-only sender (a dependent
participant that never counts as the user or the agent), sends one request,
prints the ack and leaves.

\b
Exit status:
  0  the agent acknowledged the request
  1  the agent refused it (the error code is printed), or no agent was found
  2  usage error
  3  no ack in time (with --wait-playout: the speech did not end in time)
  4  LiveKit could not be reached
"""


@dataclass(frozen=True)
class SenderSettings:
    """What a sender command's options say: where to join, as whom, and the client's options.

    Attributes:
        room: The room the agent is in.
        url: The LiveKit server (``--url`` / ``LIVEKIT_URL``).
        api_key: Its API key.
        api_secret: Its API secret.
        identity: This sender's identity.
        options: The client's own keyword options (:func:`client_options` makes them).
    """

    room: str
    url: str | None = None
    api_key: str | None = None
    api_secret: str | None = None
    identity: str | None = None
    options: ClientOptions = field(default_factory=lambda: ClientOptions())


ClientFactory = Callable[[SenderSettings], Awaitable[ContextClient]]


async def connect_client(settings: SenderSettings) -> ContextClient:
    """The default client factory: join the room with :meth:`ContextClient.connect`."""
    return await ContextClient.connect(
        settings.url,
        settings.api_key,
        settings.api_secret,
        settings.room,
        identity=settings.identity,
        **settings.options,
    )


def exit_code_for(exc: ContextError) -> int:
    """The exit status for a failed request (see the commands' --help)."""
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT
    if exc.code is ErrorCode.LIVEKIT_UNAVAILABLE and exc.ack is None:
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


def sender_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--room", required=True, callback=name, help="The room the agent is in."),
        click.option(
            "--agent-code",
            callback=name,
            envvar=AGENT_CODE_ENV,
            show_envvar=True,
            help="Send to the agent publishing this code; others refuse the request.",
        ),
        click.option(
            "--agent-identity",
            callback=name,
            help="Send to this participant instead of looking for the agent.",
        ),
        click.option(
            "--identity",
            callback=name,
            default=CLI_IDENTITY,
            show_default=True,
            help="This sender's identity; the agent must trust it unless --secret signs. "
            "Commands running at once need different identities.",
        ),
        click.option(
            "--rpc/--data",
            "use_rpc",
            default=DEFAULT_VIA == "rpc",
            help="Send over RPC (default: the response is the ack) or as a data packet "
            "(the ack comes back on imaginex.context.ack).",
        ),
        click.option(
            "--timeout",
            type=FiniteFloatRange(min=0.0, min_open=True),
            default=DEFAULT_TIMEOUT_S,
            show_default=True,
            help="Seconds to wait for the ack to each attempt.",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            default=DEFAULT_RETRIES,
            show_default=True,
            help="Attempts after the first, with the same request id (never applied twice).",
        ),
        click.option(
            "--agent-wait",
            type=FiniteFloatRange(min=0.0),
            default=DEFAULT_AGENT_TIMEOUT_S,
            show_default=True,
            help="Seconds to wait for the agent to join the room.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON."),
        click.option(
            "--secret",
            callback=not_empty,
            envvar=CONTEXT_SECRET_ENV,
            show_envvar=True,
            help="Sign the request with this shared secret (ContextPlugin(secret=...)).",
        ),
        click.option("--url", envvar=LIVEKIT_URL_ENV, show_envvar=True, help="LiveKit URL."),
        click.option("--api-key", envvar=LIVEKIT_API_KEY_ENV, show_envvar=True, help="API key."),
        click.option(
            "--api-secret", envvar=LIVEKIT_API_SECRET_ENV, show_envvar=True, help="API secret."
        ),
        click.option("-v", "--verbose", is_flag=True, help="Show log lines (includes text)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_sender(
    ctx: click.Context,
    options: dict[str, Any],
    request: dict[str, Any],
    *,
    playout_timeout: float | None = None,
    audio: AudioClip | None = None,
) -> None:
    """Check everything that can be checked offline, then connect and send ``request``.

    ``playout_timeout``: also wait that long for the end of the speech; None does not wait.
    ``audio``: a clip to stream to the agent first (``speak --audio``), named in the request.
    """
    settings = settings_from(options)
    if audio is not None:
        request["audio"] = {"stream_id": "pending"}  # a stand-in, checked like the real one
    try:
        # the request the agent would refuse is refused here, before joining the room
        prepared = prepare_request(request, agent_code=settings.options.get("agent_code"))
        check_request_size(prepared, secret=settings.options.get("secret"))
    except ContextError as exc:
        raise click.UsageError(exc.message, ctx) from None
    factory = client_factory(ctx, settings, verbose=options["verbose"])

    async def action(client: ContextClient) -> SuccessAck | SpeakResult:
        if audio is not None:
            prepared["audio"] = await client.send_clip(audio.data, mime_type=audio.mime_type)
        ack = await client.send(prepared)
        if playout_timeout is None:
            return ack
        try:
            finished = await client.wait_for_playout(prepared["id"], timeout=playout_timeout)
        except PlayoutTimeoutError as exc:
            raise PlayoutTimeoutError(
                exc.message, request_id=exc.request_id, accepted=ack, why=exc.why
            ) from None
        except SpeechFailedError as exc:
            raise SpeechFailedError(exc.event, accepted=ack) from None
        return SpeakResult(ack=ack, finished=finished)

    ctx.exit(asyncio.run(send(factory, settings, action, as_json=options["as_json"])))


def with_id(request: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    """``request`` with ``--id`` in it, when one was given (else the client picks one)."""
    if request_id is not None:
        request["id"] = request_id
    return request


def client_options(options: Mapping[str, Any]) -> ClientOptions:
    """The one mapping from a sender command's options to the client's keyword options.

    Options left out on the command line are left out here, so the client's own defaults
    apply.
    """
    mapped = ClientOptions(
        via="rpc" if options["use_rpc"] else "data",
        timeout=options["timeout"],
        retries=options["retries"],
        agent_timeout=options["agent_wait"],
    )
    if options["agent_code"] is not None:
        mapped["agent_code"] = options["agent_code"]
    if options["agent_identity"] is not None:
        mapped["agent_identity"] = options["agent_identity"]
    if options["secret"] is not None:
        mapped["secret"] = options["secret"]
    return mapped


def settings_from(options: Mapping[str, Any]) -> SenderSettings:
    """The settings a sender command's options give."""
    return SenderSettings(
        room=options["room"],
        url=options["url"],
        api_key=options["api_key"],
        api_secret=options["api_secret"],
        identity=options["identity"],
        options=client_options(options),
    )


def client_factory(ctx: click.Context, settings: SenderSettings, *, verbose: bool) -> ClientFactory:
    """The client factory (the test seam's, or joining LiveKit once its settings are there)."""
    factory: ClientFactory = connect_client
    if isinstance(ctx.obj, dict) and CLIENT_FACTORY_KEY in ctx.obj:
        factory = ctx.obj[CLIENT_FACTORY_KEY]
    if factory is connect_client:
        if not settings.url:
            raise click.UsageError("No LiveKit URL: pass --url or set LIVEKIT_URL.", ctx)
        if not is_livekit_url(settings.url):
            raise click.UsageError(
                "The LiveKit URL must be a ws://, wss://, http:// or https:// URL.", ctx
            )
        if not settings.api_key or not settings.api_secret:
            raise click.UsageError(
                "No LiveKit API key and secret: pass --api-key and --api-secret or set "
                "LIVEKIT_API_KEY and LIVEKIT_API_SECRET.",
                ctx,
            )
        api_secret_warning_once(settings.api_key, settings.api_secret)
    # the Rust SDK warns on every connection retry; the outcome is reported once, below
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR)
    return factory


async def send(
    factory: ClientFactory,
    settings: SenderSettings,
    action: Callable[[ContextClient], Awaitable[SuccessAck | SpeakResult]],
    *,
    as_json: bool,
) -> int:
    try:
        client = await factory(settings)
    except ContextError as exc:
        return report_error(exc, as_json)
    try:
        async with client:
            result = await action(client)
    except ContextError as exc:
        return report_error(exc, as_json)
    report_success(result, as_json)
    return EXIT_OK


def report_success(result: SuccessAck | SpeakResult, as_json: bool) -> None:
    ack = result.ack if isinstance(result, SpeakResult) else result
    if as_json:
        doc: dict[str, Any] = ack.model_dump(mode="json")
        if isinstance(result, SpeakResult):
            doc = {"ack": doc, "speech_finished": result.finished.model_dump(mode="json")}
        click.echo(json.dumps(doc, indent=2))
        return
    parts = [f"ok: {ack.message}", f"id={ack.id}"]
    if ack.data.speech_id:
        parts.append(f"speech_id={ack.data.speech_id}")
    if ack.data.key:
        parts.append(f"key={ack.data.key}")
    parts.extend(control_details(ack))
    if ack.duplicate:
        parts.append("(duplicate: applied by an earlier attempt)")
    click.echo("  ".join(parts))
    for item in ack.data.history or ():
        cut = " (interrupted)" if item.interrupted else ""
        click.echo(f"{item.created_at}  {item.role}: {item.text}{cut}")
    if isinstance(result, SpeakResult):
        finished = result.finished
        played = f" after {finished.played_s:g} s" if finished.played_s is not None else ""
        how = "interrupted" if finished.interrupted else "played out"
        click.echo(f"{how}{played}: speech_id={finished.speech_id}")


def control_details(ack: SuccessAck) -> list[str]:
    """What a v1.1 ack reports beyond success, as ``name=value`` words."""
    data = ack.data
    parts: list[str] = []
    if data.interrupted is not None:
        parts.append(f"interrupted={str(data.interrupted).lower()}")
    if data.cancelled is not None:
        parts.append(f"cancelled={data.cancelled}")
    if data.io is not None:
        parts.extend(f"{switch}={'on' if on else 'off'}" for switch, on in data.io)
    if data.removed is not None:
        parts.append(f"removed={str(data.removed).lower()}")
    if data.history is not None:
        parts.append(f"items={len(data.history)}")
    if data.truncated:
        parts.append("(truncated to fit one packet)")
    return parts


def report_error(exc: ContextError, as_json: bool) -> int:
    if as_json:
        doc: dict[str, Any]
        if exc.ack is not None:
            doc = exc.ack.model_dump(mode="json")
        else:
            doc = {"success": False, "id": exc.request_id, "error": exc.code.value}
            doc["message"] = exc.message
            if exc.retry_after is not None:
                doc["retry_after"] = exc.retry_after
            if isinstance(exc, SpeechFailedError):  # v1.3: the agent's own word on why
                doc["speech_failed"] = exc.event.model_dump(mode="json")
        click.echo(json.dumps(doc, indent=2))
    else:
        line = f"error: {exc.code.value}: {exc.message}"
        if exc.retry_after is not None:
            line += f" (retry after {exc.retry_after:g} s)"
        if exc.request_id is not None:
            line += f" [id={exc.request_id}]"
        click.echo(line, err=True)
    return exit_code_for(exc)


@click.command(epilog=SENDER_EPILOG)
@click.argument("text", callback=visible_text, required=False, metavar="TEXT")
@click.option("--interrupt", is_flag=True, help="Cut the agent's current speech first.")
@click.option(
    "--if-idle", is_flag=True, help="Say it only if nobody is speaking (else refused: BUSY)."
)
@click.option("--no-interruptions", is_flag=True, help="The user cannot barge in on it.")
@click.option(
    "--end-call-after",
    is_flag=True,
    help="Hang up once it has played out (not if the user cut it).",
)
@click.option(
    "--no-history", is_flag=True, help="Keep it out of the LLM's context and the history."
)
@click.option(
    "--start-within",
    type=FiniteFloatRange(min=0.0, min_open=True, max=MAX_START_WITHIN_S),
    metavar="SECONDS",
    help="Cancel it if it has not started playing this long after the agent applied it "
    f"(speech_failed: not_started). [default: the agent's, {DEFAULT_START_WITHIN_S:g}]",
)
@click.option(
    "--audio",
    type=click.Path(exists=True, dir_okay=False),
    help="Play this recorded clip (WAV, MP3, Ogg/Opus, FLAC, AAC; at most "
    f"{MAX_CLIP_BYTES // (1024 * 1024)} MiB and {MAX_CLIP_S:g} s) instead of synthesized "
    "speech; TEXT is then optional, its transcript.",
)
@click.option("--wait-playout", is_flag=True, help="Wait until it has played out (or was cut).")
@playout_timeout_option("the speech")
@request_id_option
@sender_options
@click.pass_context
def speak(
    ctx: click.Context,
    /,
    text: str | None,
    interrupt: bool,
    if_idle: bool,
    no_interruptions: bool,
    end_call_after: bool,
    no_history: bool,
    start_within: float | None,
    audio: str | None,
    wait_playout: bool,
    playout_timeout: float,
    request_id: str | None,
    **options: Any,
) -> None:
    """Make the agent say TEXT now, through its TTS (or play --audio), and print the ack.

    By default the speech queues behind what the agent is saying and waits for the user to
    finish; --interrupt cuts in instead.

    \b
    Examples:
      imaginex-context speak --room shop-42 "Your order has shipped!"
      imaginex-context speak --room shop-42 --agent-code A12345678 --interrupt \\
          --wait-playout "We will close in five minutes."
      imaginex-context speak --room shop-42 --json "Hello" | jq .data.speech_id
      imaginex-context speak --room shop-42 --audio disclaimer.mp3 "This call is recorded."
    """
    if interrupt and if_idle:
        raise click.UsageError("--interrupt and --if-idle contradict each other.", ctx)
    if text is None and audio is None:
        raise click.UsageError("Missing argument 'TEXT' (or an --audio clip to play).", ctx)
    clip: AudioClip | None = None
    if audio is not None:
        try:
            clip = AudioClip.of(audio)
        except ContextError as exc:
            raise click.UsageError(exc.message, ctx) from None
    request: dict[str, Any] = {
        "type": "speak",
        "allow_interruptions": not no_interruptions,
        "interrupt": interrupt,
    }
    if text is not None:
        request["message"] = text
    if start_within is not None:
        request["start_within_s"] = start_within
    if if_idle:
        request["mode"] = "if_idle"
    if end_call_after:
        request["end_call_after"] = True
    if no_history:
        request["add_to_history"] = False
    playout = playout_timeout if wait_playout else None
    run_sender(ctx, options, with_id(request, request_id), playout_timeout=playout, audio=clip)


@click.command("add-context", epilog=SENDER_EPILOG)
@click.argument("text", callback=visible_text)
@click.option(
    "--key", callback=name, help="A later add-context with the same key replaces this one."
)
@click.option(
    "--role",
    type=click.Choice(get_args(ContextRole)),
    default=DEFAULT_CONTEXT_ROLE,
    show_default=True,
    help="Chat role of the context message.",
)
@click.option("--reply", is_flag=True, help="Let the agent respond to it right away.")
@click.option(
    "--ttl", type=FiniteFloatRange(min=0.0, min_open=True), help="Seconds until it expires."
)
@request_id_option
@sender_options
@click.pass_context
def add_context(
    ctx: click.Context,
    /,
    text: str,
    key: str | None,
    role: ContextRole,
    reply: bool,
    ttl: float | None,
    request_id: str | None,
    **options: Any,
) -> None:
    """Give the agent TEXT as background knowledge for its next replies; nothing is spoken.

    \b
    Examples:
      imaginex-context add-context --room shop-42 --key customer \\
          "Customer John Smith is a premium member since 2021."
      imaginex-context add-context --room shop-42 --role developer "Answer in French."
    """
    request: dict[str, Any] = {
        "type": "add_context",
        "context": text,
        "role": role,
        "trigger_reply": reply,
    }
    optional = {"key": key, "ttl_s": ttl}
    request.update({field: value for field, value in optional.items() if value is not None})
    run_sender(ctx, options, with_id(request, request_id))
