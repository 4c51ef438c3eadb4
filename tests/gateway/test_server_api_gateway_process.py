"""``imaginex-context gateway --delivery server-api``: what it refuses to start without, and the
reply route it serves (a real process over real HTTP on loopback; LiveKit at a closed port)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp

from imaginex_context_plugin.replies import (
    REPLY_SIGNATURE_HEADER,
    REPLY_TIMESTAMP_HEADER,
    reply_signature,
)
from tests.gateway.test_gateway_process import (
    EXIT_TIMEOUT_S,
    SECRET,
    Running,
    clean_env,
    command,
    free_port,
    open_logs,
    run_to_exit,
    wait_until_serving,
)


def _env(**extra: str) -> dict[str, str]:
    return clean_env(
        LIVEKIT_URL="ws://127.0.0.1:1",
        LIVEKIT_API_KEY="devkey",
        LIVEKIT_API_SECRET="devsecret-0123456789abcdef0123456789abcdef",
        IMAGINEX_API_SECRET=SECRET,
        **extra,
    )


async def test_server_api_delivery_refuses_to_start_without_what_it_needs() -> None:
    port = str(free_port())
    cases = [
        (["--delivery", "server-api"], {}, "--delivery server-api and --public-url go together"),
        (["--public-url", "http://127.0.0.1:1"], {}, "go together"),
        (
            ["--delivery", "server-api", "--public-url", f"http://127.0.0.1:{port}"],
            {},
            "needs a signing secret (IMAGINEX_SIGNING_SECRET)",
        ),
        (
            ["--delivery", "server-api", "--public-url", "gateway.internal:8089"],
            {"IMAGINEX_SIGNING_SECRET": "s" * 32},
            "--public-url must be an http(s) URL",
        ),
    ]
    for args, extra, expected in cases:
        code, output = await run_to_exit(["gateway", "--port", port, *args], _env(**extra))
        assert code != 0, args
        assert expected in output, output
        assert "Traceback" not in output


async def test_the_server_api_gateway_serves_the_reply_route(tmp_path: Path) -> None:
    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    args = ["--delivery", "server-api", "--public-url", f"http://127.0.0.1:{port}"]
    with open_logs(tmp_path / "stdout.log", stderr_path) as (stdout, stderr):
        process = await asyncio.create_subprocess_exec(
            *command(),
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
            env=_env(IMAGINEX_SIGNING_SECRET="s" * 32),
            stdout=stdout,
            stderr=stderr,
        )
    running = Running(process, f"http://127.0.0.1:{port}", stderr_path)
    try:
        await wait_until_serving(running)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                running.base_url + "/v1/internal/replies", json={"room": "r", "ack": "{}"}
            ) as response,
        ):
            assert response.status == 401
            body = await response.json()
        assert body["error"] == "UNAUTHORIZED"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


async def test_replicas_on_redis_hand_on_a_reply_nobody_here_waits_for(
    tmp_path: Path, redis_url: str
) -> None:
    """With ``--redis-url`` a reply the process is not waiting for is verified and published
    for the other replicas (``imaginex:replies``), instead of refused."""
    from redis.asyncio import Redis

    signing = "s" * 32
    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    args = ["--delivery", "server-api", "--public-url", f"http://127.0.0.1:{port}"]
    listener = Redis.from_url(redis_url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("imaginex:replies")
    with open_logs(tmp_path / "stdout.log", stderr_path) as (stdout, stderr):
        process = await asyncio.create_subprocess_exec(
            *command(),
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            *args,
            env=_env(IMAGINEX_SIGNING_SECRET=signing),
            stdout=stdout,
            stderr=stderr,
        )
    running = Running(process, f"http://127.0.0.1:{port}", stderr_path)
    try:
        await wait_until_serving(running)
        ack = json.dumps({"type": "ack", "id": "elsewhere-1", "success": True})
        body = json.dumps({"room": "r", "ack": ack}).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            REPLY_TIMESTAMP_HEADER: str(stamp),
            REPLY_SIGNATURE_HEADER: reply_signature(body, stamp, signing),
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                running.base_url + "/v1/internal/replies", data=body, headers=headers
            ) as response,
        ):
            assert response.status == 200, await response.text()
        message = None
        deadline = time.monotonic() + 5.0
        while message is None and time.monotonic() < deadline:
            # the subscription's own confirmation comes first, read as None
            message = await pubsub.get_message(timeout=1.0)
        assert message is not None
        assert json.loads(message["data"]) == ["r", "elsewhere-1", ack]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
