"""WXLOGIN_LOG_FORMAT=json: one JSON object per line, with the call's context as fields."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
from pathlib import Path

import grpc
import pytest

from runtime import log_context
from runtime.logs import BufferedStreamHandler, JsonFormatter
from tests.conftest import ServiceFactory, b64_secret_key
from tests.log_support import json_logs
from tests.support import APP_A, APPS_ENV, Emulator, run_to_exit
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("service.auth", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_line_of_json_with_the_fixed_fields() -> None:
    """time (UTC, ms), level, logger, message; a newline in the message cannot split the line."""
    line = JsonFormatter().format(record("two\nlines %s", "here", request_id="r-1", user_id="u1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines here"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "service.auth"
    assert entry["request_id"] == "r-1"
    assert entry["user_id"] == "u1"
    assert "caller" not in entry  # only what is known
    assert entry["time"].endswith("Z")
    assert len(entry["time"]) == len("2025-01-31T08:00:00.000Z")


def test_an_exception_is_a_field_of_the_same_line() -> None:
    """A traceback stays inside its record's one line, as the `exception` field."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("crashed")
        made.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(made))
    assert entry["message"] == "crashed"
    assert "RuntimeError: boom" in entry["exception"]


def test_json_lines_go_through_the_buffered_handler_whole() -> None:
    """Through the servers' buffered handler, many records come out as whole JSON lines."""
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, flush_interval=60)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(log_context.ContextFilter())
    logger = logging.getLogger("test.json.buffered")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    call = log_context.begin("req-buffered")
    try:
        for index in range(300):
            logger.info("line %d %s", index, "x" * 40)
    finally:
        log_context.end(call)
        logger.removeHandler(handler)
        handler.close()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(entries) == 300
    assert {entry["request_id"] for entry in entries} == {"req-buffered"}


async def test_the_caller_is_a_field_not_part_of_the_message(
    start_service: ServiceFactory, emu: Emulator, tmp_path: Path
) -> None:
    """With a callers file, each line of a call names its caller in the `caller` field."""
    key = "json-caller-key-0123456789"
    callers = tmp_path / "callers.toml"
    callers.write_text(
        f'[callers.orders]\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        'rpcs = ["*"]\napps = ["*"]\n'
    )
    async with (
        start_service(callers_file=callers) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        code = await emu.code(APP_A, "json-ann")
        with json_logs() as lines:
            reply = await stub.Login(
                auth_pb2.LoginRequest(app_id=APP_A, code=code),
                metadata=(("x-wxlogin-caller-key", key),),
            )
    login = next(e for e in lines.of("service.auth") if e["message"].startswith("login "))
    assert login["caller"] == "orders"
    assert login["user_id"] == reply.user.user_id
    assert "caller=" not in login["message"]
    assert key not in lines.text


@pytest.mark.parametrize("module", ["service", "clients.edge"])
async def test_an_unknown_log_format_fails_at_start(module: str) -> None:
    """WXLOGIN_LOG_FORMAT other than text or json: exit 2 with one line naming the variable."""
    env = {
        "WXLOGIN_LOG_FORMAT": "yaml",
        "WXLOGIN_APPS": APPS_ENV,
        "WXLOGIN_SECRET_KEY": b64_secret_key(),
    }
    exited = await run_to_exit(module, env=env)
    assert exited.returncode == 2
    assert "WXLOGIN_LOG_FORMAT" in exited.stderr
    assert "expected text or json" in exited.stderr
