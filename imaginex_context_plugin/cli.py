"""The ``imaginex-context`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import unicodedata
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import click
import jwt.warnings

from ._env import (
    AGENT_CODE_ENV,
    AGENT_DIRECTORY_ENV,
    API_SECRETS_FILE_ENV,
    CONTEXT_SECRET_ENV,
    GATEWAY_BODY_TIMEOUT_ENV,
    GATEWAY_HEADER_TIMEOUT_ENV,
    GATEWAY_MAX_CONNECTIONS_ENV,
    LIVEKIT_API_KEY_ENV,
    LIVEKIT_API_SECRET_ENV,
    LIVEKIT_URL_ENV,
    RECONCILE_INTERVAL_ENV,
    REDIS_URL_ENV,
)
from ._livekit.settings import is_livekit_url, short_api_secret_note
from .errors import did_you_mean
from .protocol import (
    DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_REASON_LENGTH,
    SESSION_EVENT_TYPES,
    AgentStateEvent,
    AgentTranscriptEvent,
    ContextDroppedEvent,
    ContextRole,
    ContextUsedEvent,
    ConversationItemEvent,
    ErrorCode,
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
from .sender import (
    ALL_EVENTS,
    DEFAULT_AGENT_TIMEOUT_S,
    DEFAULT_PLAYOUT_TIMEOUT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_VIA,
    ContextClient,
    ContextError,
    PlayoutTimeoutError,
    SpeakResult,
    Via,
    check_request_size,
    prepare_request,
)
from .version import __version__


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf``, which FloatRange lets through
    (``nan`` compares false with every bound, so ``--agent-wait nan`` would wait forever)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


# characters that show nothing on their own: an argument made only of these is empty to the
# person reading it, whatever str.strip() says
_INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
_BLANK_LETTERS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_text(text: str) -> bool:
    """Whether ``text`` has a character that shows (not only spaces, controls, zero-width)."""
    return any(
        unicodedata.category(char) not in _INVISIBLE_CATEGORIES and char not in _BLANK_LETTERS
        for char in text
    )


def _visible_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not has_visible_text(value):
        raise click.BadParameter("must contain visible text.", ctx, param)
    return value


def _name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A room, identity, code, key or id: not blank, no control characters."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("must not be empty.", ctx, param)
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in value):
        raise click.BadParameter("must not contain control characters.", ctx, param)
    return value


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # an empty --secret would silently send unsigned requests
    if value is not None and not value:
        raise click.BadParameter("must not be empty.", ctx, param)
    return value


_KEY_LENGTH_WARNING: Final[type[Warning] | None] = getattr(
    jwt.warnings, "InsecureKeyLengthWarning", None
)
"""PyJWT's warning about an HMAC key under 32 bytes (PyJWT before 2.10 has none)."""


def _api_secret_warning_once(api_key: str, api_secret: str) -> None:
    """Say once, in one line, that the API secret is short; not at all for LiveKit's dev keys.

    PyJWT warns on every token it signs with a short key (two lines each, and a command signs
    several): with ``livekit-server --dev``'s own ``devkey`` / ``secret``, a key the user did
    not choose, that is only noise.
    """
    if _KEY_LENGTH_WARNING is not None:
        warnings.filterwarnings("ignore", category=_KEY_LENGTH_WARNING)
    note = short_api_secret_note(api_key, api_secret)
    if note is not None:
        click.echo(f"warning: {note}", err=True)


def run() -> None:
    """The ``imaginex-context`` process: :func:`main`, then exit without native teardown.

    LiveKit's native library can abort the process while the interpreter tears it down (seen
    on a real server, about one run in five: a Rust panic after the ack was printed, and a
    non-zero exit status instead of 0). By the time ``main`` returns every room is closed and
    every result printed, so the process leaves at once and its exit status stays true.
    """
    code: int = 0
    try:
        main()
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
            code = 1
        else:
            code = done.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imaginex-context")
def main() -> None:
    """Drive a running LiveKit voice agent from outside: speak, add context, control the call."""


@main.command()
@click.option("--pace", default=0.3, show_default=True, help="Seconds between scripted steps.")
@click.option("-v", "--verbose", is_flag=True, help="Show the plugin's log lines too.")
def demo(pace: float, verbose: bool) -> None:
    """Run an agent session with the plugin in-process and feed it a scripted sequence.

    Needs no LiveKit server and no API keys: the messages take the same code path that bytes
    from a room take, and the answers are printed instead of published.
    """
    from .demo import run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    asyncio.run(run_demo(pace_s=pace))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8089, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--secrets-file",
    type=click.Path(dir_okay=False),
    envvar=API_SECRETS_FILE_ENV,
    help="File of agent_code=secret lines (or a JSON object): one tenant per secret.",
)
@click.option(
    "--identity",
    default=None,
    help="Participant identity in the rooms, distinct per replica [default: imaginex-gateway; "
    "with --redis-url imaginex-gateway-<random>]. Unsigned, agents must trust it.",
)
@click.option(
    "--redis-url",
    default=None,
    envvar=REDIS_URL_ENV,
    show_envvar=True,
    help="Redis shared by gateway replicas (Idempotency-Key records, rate limits); needs "
    "IMAGINEX_SIGNING_SECRET.",
)
@click.option(
    "--agent-directory",
    is_flag=True,
    envvar=AGENT_DIRECTORY_ENV,
    show_envvar=True,
    help="Find agents in a directory kept from LiveKit's webhooks (point LiveKit's webhook at "
    "/livekit/webhook) instead of listing every room per request; in Redis with --redis-url.",
)
@click.option(
    "--reconcile-interval",
    default=30.0,
    show_default=True,
    type=FiniteFloatRange(min=0.0, min_open=True),
    envvar=RECONCILE_INTERVAL_ENV,
    show_envvar=True,
    help="Seconds between reconciliations of the agent directory with RoomService.",
)
@click.option(
    "--delivery",
    type=click.Choice(["room", "server-api"]),
    default="room",
    show_default=True,
    help="room: join each room and call the agent by RPC; server-api: RoomService.SendData, "
    "no room joined, the agents post their answers to --public-url (they must allow it with "
    "ContextPlugin(reply_urls=...)); needs IMAGINEX_SIGNING_SECRET.",
)
@click.option(
    "--public-url",
    default=None,
    help="With --delivery server-api: the gateway's URL as the agents reach it, e.g. "
    "http://gateway.internal:8089.",
)
@click.option(
    "--max-rooms",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Room connections held at once; at the cap the least recently used idle one is closed.",
)
@click.option(
    "--max-concurrent-joins",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Room joins under way at once (a fan-out to many new rooms joins them in this many "
    "lanes).",
)
@click.option(
    "--sender",
    default="imaginex-gateway",
    show_default=True,
    help="The sender signed messages name, the same on every replica.",
)
@click.option(
    "--no-sender",
    is_flag=True,
    help="Sign without naming a sender (protocol v1 envelopes), for agents older than protocol "
    "v1.2, which refuse envelopes naming one; not with --redis-url.",
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=FiniteFloatRange(min=0.0, min_open=True),
    help="Seconds the agents have to answer.",
)
@click.option(
    "--rate-limit",
    default=10.0,
    show_default=True,
    help="Requests per second per api-secret (0 turns it off).",
)
@click.option("--burst", default=50, show_default=True, help="Requests at once per api-secret.")
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=FiniteFloatRange(min=0.0, min_open=True),
    envvar=GATEWAY_HEADER_TIMEOUT_ENV,
    show_envvar=True,
    help="Seconds a client has to send a request's headers (and idle keep-alive limit).",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=FiniteFloatRange(min=0.0, min_open=True),
    envvar=GATEWAY_BODY_TIMEOUT_ENV,
    show_envvar=True,
    help="Seconds a client has to send a request's body.",
)
@click.option(
    "--max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    envvar=GATEWAY_MAX_CONNECTIONS_ENV,
    show_envvar=True,
    help="Open connections at most; more are answered 503 and closed.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (includes message text).")
def gateway(
    host: str,
    port: int,
    secrets_file: str | None,
    identity: str | None,
    redis_url: str | None,
    agent_directory: bool,
    reconcile_interval: float,
    delivery: str,
    public_url: str | None,
    max_rooms: int,
    max_concurrent_joins: int,
    sender: str,
    no_sender: bool,
    timeout: float,
    rate_limit: float,
    burst: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    verbose: bool,
) -> None:
    """Serve the platform's REST API (/v1/agent/{agent_code}/speak, /add-context, and the
    call-control endpoints /end-call, /interrupt, ...) over LiveKit.

    Reads LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET and IMAGINEX_API_SECRET (or a
    secrets file), and optionally IMAGINEX_SIGNING_SECRET to sign messages for the agents
    and IMAGINEX_REDIS_URL (--redis-url) to run as one of several replicas.
    """
    from .gateway.app import run_gateway
    from .gateway.config import ConfigError, GatewayConfig
    from .security import RateLimit

    if (delivery == "server-api") != (public_url is not None):
        raise click.ClickException("--delivery server-api and --public-url go together.")
    try:
        config = GatewayConfig.from_env(secrets_file=secrets_file, redis_url=redis_url)
        limit = RateLimit(per_second=rate_limit, burst=burst) if rate_limit > 0 else None
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _api_secret_warning_once(config.livekit.api_key, config.livekit.api_secret)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_gateway(
            config,
            host=host,
            port=port,
            identity=identity,
            delivery_timeout=timeout,
            rate_limit=limit,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
            sender=None if no_sender else sender,
            agent_directory=agent_directory,
            reconcile_interval=reconcile_interval,
            public_url=public_url,
            max_rooms=max_rooms,
            max_concurrent_joins=max_concurrent_joins,
        )
    except ConfigError as exc:  # checked before anything starts
        raise click.ClickException(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# sender commands: speak, add-context

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
"""The agent refused the request (an error ack), or no agent was found in the room."""
EXIT_USAGE: Final = 2  # click's own exit status for usage errors
EXIT_TIMEOUT: Final = 3
"""No ack in time (or, with --wait-playout, the speech did not end in time)."""
EXIT_UNAVAILABLE: Final = 4
"""LiveKit could not be reached."""
SECRET_ENV: Final = CONTEXT_SECRET_ENV
CLI_IDENTITY: Final = "imaginex-context-cli"
"""The commands' participant identity unless --identity says otherwise."""
CLIENT_FACTORY_KEY: Final = "client_factory"
"""``main(obj={CLIENT_FACTORY_KEY: factory})`` makes ``speak`` and ``add-context`` build their
client with ``await factory(settings)`` instead of joining LiveKit: the seam tests and other
transports use."""

_SENDER_EPILOG: Final = """\b
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
    """What the ``speak`` / ``add-context`` options say about reaching the agent."""

    room: str
    url: str | None = None
    api_key: str | None = None
    api_secret: str | None = None
    identity: str | None = None
    agent_code: str | None = None
    agent_identity: str | None = None
    via: Via = DEFAULT_VIA
    secret: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    agent_timeout: float = DEFAULT_AGENT_TIMEOUT_S


ClientFactory = Callable[[SenderSettings], Awaitable[ContextClient]]


async def connect_client(settings: SenderSettings) -> ContextClient:
    """The default client factory: join the room with :meth:`ContextClient.connect`."""
    return await ContextClient.connect(
        settings.url,
        settings.api_key,
        settings.api_secret,
        settings.room,
        identity=settings.identity,
        agent_identity=settings.agent_identity,
        agent_code=settings.agent_code,
        via=settings.via,
        secret=settings.secret,
        timeout=settings.timeout,
        retries=settings.retries,
        agent_timeout=settings.agent_timeout,
    )


def exit_code_for(exc: ContextError) -> int:
    """The exit status for a failed request (see the commands' --help)."""
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT
    if exc.code is ErrorCode.LIVEKIT_UNAVAILABLE and exc.ack is None:
        return EXIT_UNAVAILABLE
    return EXIT_REFUSED


def _sender_options(command: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--room", required=True, callback=_name, help="The room the agent is in."),
        click.option(
            "--agent-code",
            callback=_name,
            envvar=AGENT_CODE_ENV,
            show_envvar=True,
            help="Send to the agent publishing this code; others refuse the request.",
        ),
        click.option(
            "--agent-identity",
            callback=_name,
            help="Send to this participant instead of looking for the agent.",
        ),
        click.option(
            "--identity",
            callback=_name,
            default=CLI_IDENTITY,
            show_default=True,
            help="This sender's identity; the agent must trust it unless --secret signs. "
            "Commands running at once need different identities.",
        ),
        click.option(
            "--rpc/--data",
            "use_rpc",
            default=True,
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
            callback=_not_empty,
            envvar=SECRET_ENV,
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


def _run_sender(
    ctx: click.Context,
    options: dict[str, Any],
    request: dict[str, Any],
    *,
    playout_timeout: float | None = None,
) -> None:
    """Check everything that can be checked offline, then connect and send ``request``.

    ``playout_timeout``: also wait that long for the end of the speech; None does not wait.
    """
    settings = _settings(options)
    try:
        # the request the agent would refuse is refused here, before joining the room
        prepared = prepare_request(request, agent_code=settings.agent_code)
        check_request_size(prepared, secret=settings.secret)
    except ContextError as exc:
        raise click.UsageError(exc.message, ctx) from None
    factory = _factory(ctx, settings, verbose=options["verbose"])

    async def action(client: ContextClient) -> SuccessAck | SpeakResult:
        ack = await client.send(prepared)
        if playout_timeout is None:
            return ack
        try:
            finished = await client.wait_for_playout(prepared["id"], timeout=playout_timeout)
        except PlayoutTimeoutError as exc:
            raise PlayoutTimeoutError(
                exc.message, request_id=exc.request_id, accepted=ack
            ) from None
        return SpeakResult(ack=ack, finished=finished)

    ctx.exit(asyncio.run(_send(factory, settings, action, as_json=options["as_json"])))


def _settings(options: dict[str, Any]) -> SenderSettings:
    return SenderSettings(
        room=options["room"],
        url=options["url"],
        api_key=options["api_key"],
        api_secret=options["api_secret"],
        identity=options["identity"],
        agent_code=options["agent_code"],
        agent_identity=options["agent_identity"],
        via="rpc" if options["use_rpc"] else "data",
        secret=options["secret"],
        timeout=options["timeout"],
        retries=options["retries"],
        agent_timeout=options["agent_wait"],
    )


def _factory(ctx: click.Context, settings: SenderSettings, *, verbose: bool) -> ClientFactory:
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
        _api_secret_warning_once(settings.api_key, settings.api_secret)
    # the Rust SDK warns on every connection retry; the outcome is reported once, below
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR)
    return factory


async def _send(
    factory: ClientFactory,
    settings: SenderSettings,
    action: Callable[[ContextClient], Awaitable[SuccessAck | SpeakResult]],
    *,
    as_json: bool,
) -> int:
    try:
        client = await factory(settings)
    except ContextError as exc:
        return _report_error(exc, as_json)
    try:
        async with client:
            result = await action(client)
    except ContextError as exc:
        return _report_error(exc, as_json)
    _report_success(result, as_json)
    return EXIT_OK


def _report_success(result: SuccessAck | SpeakResult, as_json: bool) -> None:
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
    parts.extend(_control_details(ack))
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


def _control_details(ack: SuccessAck) -> list[str]:
    """What a v1.1 ack reports beyond success, as ``name=value`` words."""
    data = ack.data
    parts: list[str] = []
    if data.interrupted is not None:
        parts.append(f"interrupted={str(data.interrupted).lower()}")
    if data.cancelled is not None:
        parts.append(f"cancelled={data.cancelled}")
    if data.io is not None:
        parts.extend(f"{name}={'on' if on else 'off'}" for name, on in data.io)
    if data.removed is not None:
        parts.append(f"removed={str(data.removed).lower()}")
    if data.history is not None:
        parts.append(f"items={len(data.history)}")
    if data.truncated:
        parts.append("(truncated to fit one packet)")
    return parts


def _report_error(exc: ContextError, as_json: bool) -> int:
    if as_json:
        doc: dict[str, Any]
        if exc.ack is not None:
            doc = exc.ack.model_dump(mode="json")
        else:
            doc = {"success": False, "id": exc.request_id, "error": exc.code.value}
            doc["message"] = exc.message
            if exc.retry_after is not None:
                doc["retry_after"] = exc.retry_after
        click.echo(json.dumps(doc, indent=2))
    else:
        line = f"error: {exc.code.value}: {exc.message}"
        if exc.retry_after is not None:
            line += f" (retry after {exc.retry_after:g} s)"
        if exc.request_id is not None:
            line += f" [id={exc.request_id}]"
        click.echo(line, err=True)
    return exit_code_for(exc)


@main.command(epilog=_SENDER_EPILOG)
@click.argument("text", callback=_visible_text)
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
@click.option("--wait-playout", is_flag=True, help="Wait until it has played out (or was cut).")
@click.option(
    "--playout-timeout",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_PLAYOUT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the end of the speech, with --wait-playout.",
)
@click.option(
    "--id",
    "request_id",
    callback=_name,
    help="Request id; the agent applies an id once. [default: random]",
)
@_sender_options
@click.pass_context
def speak(
    ctx: click.Context,
    /,
    text: str,
    interrupt: bool,
    if_idle: bool,
    no_interruptions: bool,
    end_call_after: bool,
    no_history: bool,
    wait_playout: bool,
    playout_timeout: float,
    request_id: str | None,
    **options: Any,
) -> None:
    """Make the agent say TEXT now, through its TTS, and print the ack.

    By default the speech queues behind what the agent is saying and waits for the user to
    finish; --interrupt cuts in instead.

    \b
    Examples:
      imaginex-context speak --room shop-42 "Your order has shipped!"
      imaginex-context speak --room shop-42 --agent-code A12345678 --interrupt \\
          --wait-playout "We will close in five minutes."
      imaginex-context speak --room shop-42 --json "Hello" | jq .data.speech_id
    """
    if interrupt and if_idle:
        raise click.UsageError("--interrupt and --if-idle contradict each other.", ctx)
    request: dict[str, Any] = {
        "type": "speak",
        "message": text,
        "allow_interruptions": not no_interruptions,
        "interrupt": interrupt,
    }
    if if_idle:
        request["mode"] = "if_idle"
    if end_call_after:
        request["end_call_after"] = True
    if no_history:
        request["add_to_history"] = False
    if request_id is not None:
        request["id"] = request_id
    _run_sender(ctx, options, request, playout_timeout=playout_timeout if wait_playout else None)


@main.command("add-context", epilog=_SENDER_EPILOG)
@click.argument("text", callback=_visible_text)
@click.option(
    "--key", callback=_name, help="A later add-context with the same key replaces this one."
)
@click.option(
    "--role",
    type=click.Choice(["system", "developer", "user", "assistant"]),
    default="system",
    show_default=True,
    help="Chat role of the context message.",
)
@click.option("--reply", is_flag=True, help="Let the agent respond to it right away.")
@click.option(
    "--ttl", type=FiniteFloatRange(min=0.0, min_open=True), help="Seconds until it expires."
)
@click.option(
    "--id",
    "request_id",
    callback=_name,
    help="Request id; the agent applies an id once. [default: random]",
)
@_sender_options
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
    optional = {"key": key, "id": request_id, "ttl_s": ttl}
    request.update({name: value for name, value in optional.items() if value is not None})
    _run_sender(ctx, options, request)


# ---------------------------------------------------------------------------------------------
# call control (protocol v1.1): end-call, interrupt, cancel, update-io, update-instructions,
# reset-instructions, user-message, get-history

_request_id_option = click.option(
    "--id",
    "request_id",
    callback=_name,
    help="Request id; the agent applies an id once. [default: random]",
)


def _with_id(request: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        request["id"] = request_id
    return request


@main.command("end-call", epilog=_SENDER_EPILOG)
@click.option("--now", is_flag=True, help="Cut what is playing and drop the queue, then end.")
@click.option(
    "--reason",
    callback=_visible_text,
    help=f"Why (at most {MAX_REASON_LENGTH} characters); sent in call_ended and the log.",
)
@_request_id_option
@_sender_options
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
    _run_sender(ctx, options, _with_id(request, request_id))


@main.command(epilog=_SENDER_EPILOG)
@click.option(
    "--force", is_flag=True, help="Also stop speech that does not allow interruptions."
)
@_request_id_option
@_sender_options
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
    _run_sender(ctx, options, _with_id({"type": "interrupt", "force": force}, request_id))


@main.command(epilog=_SENDER_EPILOG)
@click.argument("target_id", callback=_name)
@_request_id_option
@_sender_options
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
    _run_sender(ctx, options, _with_id({"type": "cancel", "target_id": target_id}, request_id))


@main.command("update-io", epilog=_SENDER_EPILOG)
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
@_request_id_option
@_sender_options
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
    given = {name: value for name, value in switches.items() if value is not None}
    if not given:
        raise click.UsageError(
            "Give at least one of --agent-audio, --user-audio or --transcription "
            "(or their --no- forms).",
            ctx,
        )
    _run_sender(ctx, options, _with_id({"type": "update_io", **given}, request_id))


@main.command("update-instructions", epilog=_SENDER_EPILOG)
@click.argument("instructions", callback=_visible_text)
@click.option("--replace", is_flag=True, help="Replace the agent's instructions (default: add).")
@_request_id_option
@_sender_options
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
    _run_sender(ctx, options, _with_id(request, request_id))


@main.command("reset-instructions", epilog=_SENDER_EPILOG)
@_request_id_option
@_sender_options
@click.pass_context
def reset_instructions(ctx: click.Context, /, request_id: str | None, **options: Any) -> None:
    """Give the current agent its own instructions back.

    \b
    Examples:
      imaginex-context reset-instructions --room shop-42
    """
    _run_sender(ctx, options, _with_id({"type": "reset_instructions"}, request_id))


@main.command("user-message", epilog=_SENDER_EPILOG)
@click.argument("text", callback=_visible_text)
@click.option("--no-respond", is_flag=True, help="Only add it; the agent does not answer now.")
@click.option("--interrupt", is_flag=True, help="Stop the agent's current speech first.")
@click.option("--wait-playout", is_flag=True, help="Wait until the agent's answer has played.")
@click.option(
    "--playout-timeout",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=DEFAULT_PLAYOUT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the end of the answer, with --wait-playout.",
)
@_request_id_option
@_sender_options
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
    _run_sender(ctx, options, _with_id(request, request_id), playout_timeout=playout)


@main.command("get-history", epilog=_SENDER_EPILOG)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_HISTORY_LIMIT),
    default=DEFAULT_HISTORY_LIMIT,
    show_default=True,
    help="How many of the newest conversation items.",
)
@_sender_options
@click.pass_context
def get_history(ctx: click.Context, /, limit: int, **options: Any) -> None:
    """Print the newest conversation items, oldest first (time, role, text).

    \b
    Examples:
      imaginex-context get-history --room shop-42 --limit 10
      imaginex-context get-history --room shop-42 --json | jq '.data.history'
    """
    _run_sender(ctx, options, {"type": "get_history", "limit": limit})


# ---------------------------------------------------------------------------------------------
# live session events: subscribe, unsubscribe

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


@main.command(epilog=_WATCH_EPILOG)
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
@_sender_options
@click.pass_context
def subscribe(
    ctx: click.Context,
    /,
    event_names: list[SessionEventType],
    interim: bool,
    tool_arguments: bool,
    **options: Any,
) -> None:
    """Watch the call: print the agent's live session events until the call ends.

    \b
    Examples:
      imaginex-context subscribe --room shop-42
      imaginex-context subscribe --room shop-42 --events user_transcript,agent_transcript
      imaginex-context subscribe --room shop-42 --json | jq -c 'select(.type == "user_transcript")'
    """
    settings = _settings(options)
    request = {
        "type": "subscribe",
        "events": event_names,
        "interim": interim,
        "tool_arguments": tool_arguments,
    }
    try:
        check_request_size(prepare_request(request, agent_code=settings.agent_code))
    except ContextError as exc:
        raise click.UsageError(exc.message, ctx) from None
    factory = _factory(ctx, settings, verbose=options["verbose"])
    as_json: bool = options["as_json"]

    async def watch() -> int:
        try:
            client = await factory(settings)
        except ContextError as exc:
            return _report_error(exc, as_json)
        try:
            async with (
                client,
                client.subscribe(
                    events=event_names, interim=interim, tool_arguments=tool_arguments
                ) as events,
            ):
                _print_subscribed(events.ack, as_json)
                async for event in events:
                    _print_event(event, as_json)
        except ContextError as exc:
            return _report_error(exc, as_json)
        return EXIT_OK

    try:
        code = asyncio.run(watch())
    except KeyboardInterrupt:
        # asyncio.run cancelled the watch first, so the subscription was closed (unsubscribed)
        code = EXIT_OK
    ctx.exit(code)


def _print_subscribed(ack: SuccessAck, as_json: bool) -> None:
    if as_json:
        click.echo(ack.model_dump_json())
    else:
        click.echo(f"ok: {ack.message}  events={','.join(ack.data.events or ())}")


def _print_event(event: Event, as_json: bool) -> None:
    if as_json:
        click.echo(event.model_dump_json())
        return
    line = f"{event.timestamp}  {_describe(event)}"
    if event.dropped:
        line += f"  ({event.dropped} events dropped before this one)"
    click.echo(line)


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


@main.command(epilog=_SENDER_EPILOG)
@_request_id_option
@_sender_options
@click.pass_context
def unsubscribe(ctx: click.Context, /, request_id: str | None, **options: Any) -> None:
    """End this identity's subscription (another command's `subscribe` with the same
    --identity stops receiving events). Prints whether there was one (removed=true/false).

    \b
    Examples:
      imaginex-context unsubscribe --room shop-42
    """
    _run_sender(ctx, options, _with_id({"type": "unsubscribe"}, request_id))
