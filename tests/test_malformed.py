"""Malformed input at both doors: ErrorInfo or a 4xx, few log lines, and no token in them."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from clients.edge.server import _QuietServerLog
from runtime.ratelimited_log import RateLimitedLog
from service.app import RunningService
from tests.edge_support import FakeUpstream, running_edge
from tests.log_support import captured_logs
from tests.support import APP_A, child, error_info
from wxlogin.v1 import auth_pb2

# Token-shaped, as the service hands them out (wxl1_ + 43 URL-safe characters).
TOKEN = "wxl1_" + "Tk9" * 14 + "Z"
TOKEN_BODY = TOKEN.removeprefix("wxl1_")
METHODS = ("Login", "CheckSession", "DecryptUserData", "RevokeSession")
# Bytes that no request message parses from (each is a DecodeError for all four types).
NOT_A_MESSAGE = {
    "truncated": auth_pb2.CheckSessionRequest(token=TOKEN).SerializeToString()[:-1],
    "bad_utf8_string": b"\x0a\x02\xff\xfe",
    "overlong_varint": b"\x08" + b"\xff" * 11,
    "field_number_zero": b"\x00",
    "random": b"\xde\xad\xbe\xef" * 16,
    "open_group": b"\x0b",
}
FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")


def logged_text(records: list[logging.LogRecord]) -> str:
    """Everything these records put in a log, tracebacks included."""
    return "\n".join(FORMAT.format(record) for record in records)


def assert_no_token(text: str) -> None:
    assert TOKEN not in text, "a token reached the log"
    assert TOKEN_BODY not in text, "a token (without its prefix) reached the log"


# -- the rate-limited log helper ----------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_cause_per_interval_then_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cause logs once per interval; its next line says how many it held back."""
    clock = FakeClock()
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), interval=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger="test.quiet")
    assert quiet.log(logging.WARNING, "a", "cause a happened")
    for _ in range(5):
        clock.now += 10
        assert not quiet.log(logging.WARNING, "a", "cause a happened")
    assert quiet.log(logging.WARNING, "b", "cause b happened")  # another cause: its own budget
    clock.now += 10  # 60 s after the first line of "a"
    assert quiet.log(logging.WARNING, "a", "cause a happened")
    clock.now += 60
    assert quiet.log(logging.WARNING, "a", "cause a happened")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "cause a happened",
        "cause b happened",
        "cause a happened (5 more like this not logged in the last 60s)",
        "cause a happened",
    ]
    assert [record.levelno for record in caplog.records] == [logging.WARNING] * 4


def test_admit_counts_what_it_holds_back() -> None:
    """admit() says None while a cause is quiet and the held-back count when it may speak again."""
    clock = FakeClock()
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), interval=5.0, clock=clock)
    assert quiet.admit("x") == 0
    assert [quiet.admit("x") for _ in range(3)] == [None, None, None]
    clock.now += 4.9
    assert quiet.admit("x") is None
    clock.now += 0.1
    assert quiet.admit("x") == 4


def test_the_number_of_causes_it_remembers_is_bounded() -> None:
    """Many distinct causes never grow its memory past the bound; the newest are kept."""
    clock = FakeClock()
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), 60.0, clock=clock, max_causes=8)
    for number in range(100):
        assert quiet.admit(f"cause {number}") == 0
    assert quiet.remembered() <= 8
    assert quiet.admit("cause 99") is None  # still remembered, still quiet


def test_a_disabled_level_is_neither_logged_nor_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A line below the logger's level costs nothing and does not use up the cause's budget."""
    caplog.set_level(logging.WARNING, logger="test.quiet")
    quiet = RateLimitedLog(logging.getLogger("test.quiet"), interval=60.0, clock=FakeClock())
    assert not quiet.log(logging.DEBUG, "a", "debug detail")
    assert quiet.log(logging.WARNING, "a", "worth a warning")
    assert [record.getMessage() for record in caplog.records] == ["worth a warning"]


# -- gRPC: bytes that are not the request message -------------------------------------------------


async def call_raw(port: int, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    """Send `payload` as the request of `method`, unserialized; return the error it earns."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/wxlogin.v1.AuthService/{method}")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(payload, timeout=10)
        return raised.value


@pytest.mark.parametrize("payload", NOT_A_MESSAGE.values(), ids=list(NOT_A_MESSAGE))
async def test_bytes_that_are_not_the_request_are_bad_request_with_error_info(
    service: RunningService, payload: bytes
) -> None:
    """Every RPC answers undecodable bytes INVALID_ARGUMENT/BAD_REQUEST, naming no class."""
    for method in METHODS:
        info = error_info(await call_raw(service.port, method, payload))
        assert (info.code, info.reason, info.domain) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "BAD_REQUEST",
            "wxlogin",
        ), method
        assert info.message
        for internal in ("DecodeError", "protobuf", "Error parsing", "class", "Traceback"):
            assert internal not in info.message
        assert_no_token(info.message)


async def test_a_flood_of_undecodable_requests_logs_one_line_per_rpc_without_traceback(
    service: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    """Many bad bodies carrying a token: one line per RPC, no traceback, no token."""
    caplog.set_level(logging.DEBUG)
    start = len(caplog.records)
    for method in METHODS:
        for _ in range(15):
            await call_raw(service.port, method, NOT_A_MESSAGE["truncated"])
    records = caplog.records[start:]
    text = logged_text(records)
    assert_no_token(text)
    assert "Traceback" not in text
    assert not [record for record in records if record.exc_info]
    lines = [
        record
        for record in records
        if record.levelno >= logging.INFO and record.name.startswith(("service", "grpc"))
    ]
    for method in METHODS:
        assert len([r for r in lines if method in r.getMessage()]) == 1, (method, text)
    assert len(lines) == len(METHODS), text


async def test_the_line_about_undecodable_bytes_has_the_call_s_request_id(
    service: RunningService,
) -> None:
    """Logged inside the call, not in the deserializer: the line can be found by request id."""
    with captured_logs("text", logging.INFO) as stream:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            call = channel.unary_unary("/wxlogin.v1.AuthService/CheckSession")
            with pytest.raises(grpc.aio.AioRpcError):
                await call(
                    NOT_A_MESSAGE["truncated"],
                    timeout=10,
                    metadata=(("x-request-id", "req-undecodable-1"),),
                )
    lines = [line for line in stream.getvalue().splitlines() if "request bytes are not" in line]
    assert len(lines) == 1, stream.getvalue()
    assert lines[0].endswith("answered BAD_REQUEST request_id=req-undecodable-1")


async def test_decodable_requests_carrying_tokens_in_odd_places_log_no_token(
    service: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens in every string field, odd characters, absurd lengths: ErrorInfo, no token logged."""
    caplog.set_level(logging.DEBUG)
    odd = [TOKEN, TOKEN + "\x00", TOKEN + "\n" + "x" * 5000, " " + TOKEN]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        calls: list[tuple[str, bytes]] = []
        for value in odd:
            calls += [
                ("Login", auth_pb2.LoginRequest(app_id=value, code=value).SerializeToString()),
                ("Login", auth_pb2.LoginRequest(app_id=APP_A, code=value).SerializeToString()),
                ("CheckSession", auth_pb2.CheckSessionRequest(token=value).SerializeToString()),
                (
                    "DecryptUserData",
                    auth_pb2.DecryptUserDataRequest(
                        token=value, encrypted_data=value, iv=value, raw_data=value, signature=value
                    ).SerializeToString(),
                ),
            ]
        for method, payload in calls:
            call = channel.unary_unary(f"/wxlogin.v1.AuthService/{method}")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(payload, timeout=10, metadata=(("x-request-id", TOKEN),))
            assert error_info(raised.value).domain == "wxlogin"
    assert_no_token(logged_text(caplog.records))


# -- the HTTP edge: requests aiohttp cannot parse, and where a careless client puts a token ------


def request(line: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    return line + b"\r\nHost: edge\r\n" + headers + b"\r\n" + body


T = TOKEN.encode()
MALFORMED_HTTP = {
    "control_char_in_authorization": request(
        b"GET /v1/session HTTP/1.1", b"Authorization: Bearer " + T + b"\x01\r\n"
    ),
    "nul_in_authorization": request(
        b"GET /v1/session HTTP/1.1", b"Authorization: Bearer " + T + b"\x00\r\n"
    ),
    "authorization_over_the_header_limit": request(
        b"GET /v1/session HTTP/1.1", b"Authorization: Bearer " + T + b"A" * 9000 + b"\r\n"
    ),
    "header_without_colon": request(b"GET /v1/session HTTP/1.1", b"Bearer " + T + b"\r\n"),
    "space_before_colon": request(
        b"GET /v1/session HTTP/1.1", b"Authorization : Bearer " + T + b"\r\n"
    ),
    "control_char_in_host": b"GET /v1/session HTTP/1.1\r\nHost: " + T + b"\x01\r\n\r\n",
    "space_in_url_with_token": request(b"GET /v1/session?access_token=" + T + b" x HTTP/1.1"),
    "control_char_in_url_with_token": request(
        b"GET /v1/session?access_token=" + T + b"\x01 HTTP/1.1"
    ),
    "nul_in_url_with_token": request(b"GET /v1/session?access_token=" + T + b"\x00 HTTP/1.1"),
    "8bit_url_with_token": request(b"GET /v1/session?access_token=" + T + b"\xff HTTP/1.1"),
    "url_over_the_line_limit": request(
        b"GET /v1/session?access_token=" + T + b"A" * 9000 + b" HTTP/1.1"
    ),
    "bad_version": request(b"GET /v1/session?access_token=" + T + b" HTTP/9.x"),
    "bad_method": request(b"G\x01T /v1/session?access_token=" + T + b" HTTP/1.1"),
    "bad_absolute_url": request(b"GET http://[" + T + b"/v1/session HTTP/1.1"),
    "token_as_method": request(T + b" /v1/session HTTP/1.1"),
    "content_length_is_a_token": request(
        b"POST /v1/login HTTP/1.1", b"Content-Length: " + T + b"\r\n"
    ),
    "bad_chunk_size": request(
        b"POST /v1/login HTTP/1.1",
        b"Transfer-Encoding: chunked\r\n",
        T + b"\r\n" + T + b"\r\n0\r\n\r\n",
    ),
    "bad_gzip_body": request(
        b"POST /v1/login HTTP/1.1",
        b"Content-Encoding: gzip\r\nContent-Length: 48\r\n",
        T,
    ),
    "bad_brotli_body": request(
        b"POST /v1/login HTTP/1.1",
        b"Content-Encoding: br\r\nContent-Length: 48\r\n",
        T,
    ),
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + T,
    "tls_hello": b"\x16\x03\x01\x02\x00" + T + b"\r\n\r\n",
    "body_cut_short": request(
        b"POST /v1/login HTTP/1.1", b"Content-Length: 100\r\n", b'{"code": "' + T
    ),
}
# Requests whose sender goes away before the edge can answer.
HANG_UP = {MALFORMED_HTTP["body_cut_short"]}


@pytest_asyncio.fixture
async def edge_port(fake: FakeUpstream) -> AsyncIterator[int]:
    """An edge in-process on a free port, calling the fake upstream."""
    async with running_edge(fake.target) as url:
        yield int(url.rsplit(":", 1)[1])


async def send_raw(port: int, data: bytes, *, hang_up: bool = False) -> bytes:
    """Write `data` on a fresh connection and read the answer up to the edge's close.

    With `hang_up`, close at once instead, as a client that goes away mid-request.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if hang_up:
            return b""
        return await asyncio.wait_for(reader.read(), 20)
    except ConnectionResetError:
        return b""  # the edge closed on us: an answer too
    finally:
        writer.close()


def closing(data: bytes) -> bytes:
    """The request asking the edge to close after answering (so a read to EOF ends)."""
    return data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP answer, None when the edge just closed."""
    if not response:
        return None
    parts = response.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1])


@pytest.mark.parametrize("data", MALFORMED_HTTP.values(), ids=list(MALFORMED_HTTP))
async def test_malformed_http_is_a_4xx_with_no_traceback_and_no_token_logged(
    edge_port: int, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """What aiohttp cannot parse gets a 4xx or a close; no token and no traceback in the log."""
    caplog.set_level(logging.DEBUG)
    status = status_of(await send_raw(edge_port, data, hang_up=data in HANG_UP))
    assert status is None or 400 <= status < 500, status
    await asyncio.sleep(0.1)  # aiohttp logs some of these just after answering
    text = logged_text(caplog.records)
    assert_no_token(text)
    assert "Traceback" not in text
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_flood_of_one_malformed_request_logs_one_line(
    edge_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The same unparseable request many times: one line from the edge, not one per request."""
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        answer = await send_raw(edge_port, MALFORMED_HTTP["control_char_in_url_with_token"])
        assert status_of(answer) == 400
    await asyncio.sleep(0.1)
    lines = [
        record
        for record in caplog.records
        if record.name.startswith("aiohttp.server") and record.levelno >= logging.INFO
    ]
    assert len(lines) == 1, logged_text(lines)


def test_a_bugs_traceback_on_the_aiohttp_server_log_keeps_frames_not_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug's traceback on aiohttp's server log is kept, once per interval, without its text."""
    logger = logging.getLogger("test.aiohttp.server")
    quiet = _QuietServerLog(RateLimitedLog(logger, clock=FakeClock()))
    logger.addFilter(quiet)
    caplog.set_level(logging.DEBUG, logger=logger.name)
    try:
        for _ in range(3):
            try:
                raise RuntimeError(f"bad header {TOKEN}")
            except RuntimeError:
                logger.exception("Error handling request from %s", "10.0.0.1")
    finally:
        logger.removeFilter(quiet)
    text = logged_text(caplog.records)
    assert len(caplog.records) == 1
    assert "Traceback" in text
    assert "test_malformed.py" in text  # the frames are there
    assert "builtins.RuntimeError" in text
    assert_no_token(text)


ROUTABLE_WITH_TOKEN = {
    "token_in_query": request(b"GET /v1/session?access_token=" + T + b" HTTP/1.1"),
    "token_in_encoded_query": request(b"GET /v1/session%3Faccess_token=" + T + b" HTTP/1.1"),
    "token_as_path_segment": request(b"GET /v1/session/" + T + b" HTTP/1.1"),
    "token_bare_in_path": request(b"GET /v1/" + TOKEN_BODY.encode() + b" HTTP/1.1"),
    "token_as_request_id": request(b"GET /v1/session HTTP/1.1", b"X-Request-Id: " + T + b"\r\n"),
    "token_and_newline_in_path": request(b"GET /v1/" + T + b"%0Afake%20line HTTP/1.1"),
}


@pytest.mark.parametrize("data", ROUTABLE_WITH_TOKEN.values(), ids=list(ROUTABLE_WITH_TOKEN))
async def test_access_log_never_carries_a_token_from_the_url_or_request_id(
    edge_port: int, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A token in the query, the path (even percent-encoded) or X-Request-Id is never logged."""
    caplog.set_level(logging.DEBUG)
    status = status_of(await send_raw(edge_port, closing(data)))
    assert status in (401, 404)
    await asyncio.sleep(0.1)
    access = [record for record in caplog.records if record.name == "aiohttp.access"]
    assert len(access) == 1
    assert "\n" not in access[0].getMessage()  # no forged line from a %0A in the path
    assert_no_token(logged_text(caplog.records))


async def test_server_header_names_no_versions(edge_port: int) -> None:
    """Every answer, aiohttp's own 400s included, says Server: wxlogin-edge, no versions."""
    answers = [
        await send_raw(edge_port, request(b"GET " + path + b" HTTP/1.1", b"Connection: close\r\n"))
        for path in (b"/healthz", b"/no-such-route", b"/v1/session")
    ]
    # HTTP that does not parse is answered by aiohttp itself, before any app code.
    answers.append(await send_raw(edge_port, b"FOO /v1/login HTTP/1.1\r\n\r\n"))
    for response in answers:
        head = response.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nserver: wxlogin-edge" in head, head
        assert b"aiohttp" not in head
        assert b"python" not in head


async def test_the_edge_process_logs_no_token_and_no_traceback_for_malformed_requests(
    fake: FakeUpstream,
) -> None:
    """`python -m clients.edge` at DEBUG: after every malformed request, stderr has no token."""
    env = {
        "WXLOGIN_HTTP_LISTEN": "127.0.0.1:0",
        "WXLOGIN_UPSTREAM": fake.target,
        "WXLOGIN_LOG_LEVEL": "DEBUG",
    }
    async with child("clients.edge", env=env) as (process, port):
        routable = [closing(data) for data in ROUTABLE_WITH_TOKEN.values()]
        for data in [*MALFORMED_HTTP.values(), *routable]:
            status = status_of(await send_raw(port, data, hang_up=data in HANG_UP))
            assert status is None or 400 <= status < 500, status
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert process.stderr is not None
        stderr = (await asyncio.wait_for(process.stderr.read(), 10)).decode(errors="replace")
    assert "rejected malformed HTTP requests" in stderr  # the filter is on in the process too
    assert_no_token(stderr)
    assert "Traceback" not in stderr
