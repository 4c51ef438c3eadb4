"""The lean HTTP/1.1 client behind every ``RoomService`` call (``_livekit/http1.py``), against
servers on 127.0.0.1 that write exactly the bytes scripted here: what it sends, every way an
answer may be framed, connections kept and reused, the keep-alive race, answers cut short or
malformed, deadlines, the connection cap, and TLS. LiveKit itself: the live suite
(``tests/integration/test_server_rpc_live.py`` and ``test_send_data_live.py``)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from imaginex_context_plugin._livekit.http1 import USER_AGENT, Http1Client, Http1Error

# the gateway runs this client on uvloop when installed (gateway/event_loop.py)
pytestmark = pytest.mark.both_event_loops

Answer = Callable[[int], Awaitable[bytes | None]]
"""Given the request's number (from 1), the bytes to write back (None: close at once)."""


def ok(body: bytes = b"answer", *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Scripted:
    """A server that reads each request and writes the scripted answer."""

    answer: Answer
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    close_after_answer: bool = False
    byte_at_a_time: bool = False
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = await self.answer(len(self.requests))
                if out is None:
                    return
                step = 1 if self.byte_at_a_time else len(out)
                for i in range(0, len(out), step):
                    writer.write(out[i : i + step])
                    await writer.drain()
                if self.close_after_answer:
                    return
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    async def default(_: int) -> bytes:
        return ok()

    server = Scripted(default)
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()


def client_for(server: Scripted, **options: object) -> Http1Client:
    return Http1Client(f"ws://127.0.0.1:{server.port}/prefix", **options)  # type: ignore[arg-type]


async def test_a_post_is_sent_as_http_1_1_and_its_answer_read(scripted: Scripted) -> None:
    client = client_for(scripted)
    try:
        status, body = await client.post(
            "/twirp/x/Y", b"\x00\x01body", {"Authorization": "Bearer t"}, timeout=5
        )
    finally:
        await client.aclose()
    assert (status, body) == (200, b"answer")
    assert scripted.requests == [
        b"POST /prefix/twirp/x/Y HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{scripted.port}\r\n".encode()
        + f"User-Agent: {USER_AGENT}\r\n".encode()
        + b"Content-Length: 6\r\nAuthorization: Bearer t\r\n\r\n\x00\x01body"
    ]


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"hello"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\nT: v\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"hello"),
    ],
    ids=["content-length", "chunked", "chunked-with-trailer", "after-100-continue"],
)
async def test_every_framing_is_read_even_a_byte_at_a_time(
    scripted: Scripted, answer: bytes
) -> None:
    async def dribble(_: int) -> bytes:
        return answer

    scripted.answer = dribble
    scripted.byte_at_a_time = True
    client = client_for(scripted)
    try:
        for _ in range(2):  # and the connection is kept for the next request
            assert await client.post("/p", b"", {}, timeout=5) == (200, b"hello")
    finally:
        await client.aclose()
    assert scripted.connections == 1


async def test_an_answer_ended_by_closing_the_connection_is_read_and_not_reused(
    scripted: Scripted,
) -> None:
    async def until_eof(_: int) -> bytes:
        return b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nupstream down"

    scripted.answer = until_eof
    scripted.close_after_answer = True
    client = client_for(scripted)
    try:
        assert await client.post("/p", b"", {}, timeout=5) == (502, b"upstream down")
        assert await client.post("/p", b"", {}, timeout=5) == (502, b"upstream down")
    finally:
        await client.aclose()
    assert scripted.connections == 2


async def test_connections_are_kept_and_shared_by_concurrent_requests(scripted: Scripted) -> None:
    client = client_for(scripted)
    try:
        for _ in range(3):
            answers = await asyncio.gather(
                *(client.post("/p", b"", {}, timeout=5) for _ in range(8))
            )
            assert answers == [(200, b"answer")] * 8
    finally:
        await client.aclose()
    assert len(scripted.requests) == 24
    assert client.connections_made == scripted.connections <= 8


async def test_the_keep_alive_race_is_one_more_try_on_a_new_connection(
    scripted: Scripted,
) -> None:
    """The server answered and then dropped the kept connection, as servers do with idle ones:
    the next request meets a closed connection before any answer, and goes on a new one."""
    client = client_for(scripted)
    scripted.close_after_answer = True
    try:
        assert await client.post("/p", b"1", {}, timeout=5) == (200, b"answer")
        await asyncio.sleep(0.1)  # the server has closed it by now
        assert await client.post("/p", b"2", {}, timeout=5) == (200, b"answer")
    finally:
        await client.aclose()
    assert [r[-1:] for r in scripted.requests] == [b"1", b"2"]
    assert client.connections_made == 2


@pytest.mark.parametrize(
    "answer",
    [None, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
    ids=["closed-before-answering", "closed-mid-body"],
)
async def test_an_answer_cut_short_on_a_new_connection_is_a_connection_error(
    scripted: Scripted, answer: bytes | None
) -> None:
    async def cut(_: int) -> bytes | None:
        return answer

    scripted.answer = cut
    scripted.close_after_answer = True
    client = client_for(scripted)
    try:
        with pytest.raises(ConnectionError):
            await client.post("/p", b"", {}, timeout=5)
    finally:
        await client.aclose()
    assert len(scripted.requests) == 1  # not sent again: it may have been acted on


@pytest.mark.parametrize(
    "answer",
    [
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000,
    ],
    ids=["not-http", "bad-header", "bad-length", "too-large", "bad-chunk", "huge-head"],
)
async def test_a_malformed_answer_is_an_http1_error_and_drops_the_connection(
    scripted: Scripted, answer: bytes
) -> None:
    async def malformed(_: int) -> bytes:
        return answer

    scripted.answer = malformed
    client = client_for(scripted)
    try:
        with pytest.raises(Http1Error):
            await client.post("/p", b"", {}, timeout=5)

        async def fine(_: int) -> bytes:
            return ok()

        scripted.answer = fine
        assert await client.post("/p", b"", {}, timeout=5) == (200, b"answer")
    finally:
        await client.aclose()
    assert client.connections_made == 2


async def test_a_deadline_ends_the_request_and_its_connection(scripted: Scripted) -> None:
    late = asyncio.Event()

    async def first_late(n: int) -> bytes:
        if n == 1:
            await late.wait()
            return ok(b"late answer")
        return ok()

    scripted.answer = first_late
    client = client_for(scripted)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.TimeoutError):
            await client.post("/p", b"", {}, timeout=0.2)
        assert asyncio.get_running_loop().time() - started < 1.0
        late.set()  # the late answer goes to the dropped connection, not to the next request
        await asyncio.sleep(0.05)
        assert await client.post("/p", b"", {}, timeout=5) == (200, b"answer")
    finally:
        await client.aclose()
    assert client.connections_made == 2


async def test_at_most_max_connections_are_open_and_the_rest_wait(scripted: Scripted) -> None:
    async def slow(_: int) -> bytes:
        await asyncio.sleep(0.05)
        return ok()

    scripted.answer = slow
    client = client_for(scripted, max_connections=2)
    try:
        answers = await asyncio.gather(*(client.post("/p", b"", {}, timeout=5) for _ in range(6)))
    finally:
        await client.aclose()
    assert answers == [(200, b"answer")] * 6
    assert scripted.most_open == 2
    assert client.connections_made == 2  # the waiting requests took the released ones


async def test_a_line_break_in_a_header_is_refused_and_nothing_is_sent(
    scripted: Scripted,
) -> None:
    client = client_for(scripted)
    try:
        with pytest.raises(ValueError, match="line break"):
            await client.post("/p", b"", {"Authorization": "x\r\nInjected: 1"}, timeout=5)
    finally:
        await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(ConnectionError):
        await client.post("/p", b"", {}, timeout=5)
    assert scripted.requests == []


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Http1Client("ftp://example.com")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed key and certificate for localhost (Debian's openssl)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_https(certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)

    async def answer(_: int) -> bytes:
        return ok(b"secure")

    server = Scripted(answer)
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_side)
    port = listening.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert))
    trusting.check_hostname = False  # the certificate names localhost, we dial 127.0.0.1
    client = Http1Client(f"wss://127.0.0.1:{port}", ssl_context=trusting)
    untrusting = Http1Client(f"https://127.0.0.1:{port}")
    try:
        assert await client.post("/p", b"", {}, timeout=5) == (200, b"secure")
        with pytest.raises(ssl.SSLError):
            await untrusting.post("/p", b"", {}, timeout=5)
    finally:
        await client.aclose()
        await untrusting.aclose()
        listening.close()
