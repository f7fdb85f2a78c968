"""(d) Malformed requests: junk HTTP to the edge, junk gRPC to the service, then the logs.

Every request is built from a seeded RNG, so a run can be repeated. Each category of
junk carries a valid token of its own (a real login's) somewhere in the request, so a
token found in a log afterwards says which kind of junk put it there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from bench.chaos.load import client_for
from bench.chaos.results import Context, scenario, target
from bench.chaos.stack import Running, running
from bench.fixtures import AUTH, login_json
from devtools.devstack import DEV_APP
from wxlogin.v1 import auth_pb2

KEY = "malformed"
TITLE = "Malformed HTTP and gRPC requests"
READ_TIMEOUT = 10.0  # seconds an answer to one junk request may take
TOKEN_SHAPE = re.compile(r"wxl1_[A-Za-z0-9_-]{43}")
LOGS = ("service-1", "edge")

# -- HTTP junk ----------------------------------------------------------------------------------

HttpMaker = Callable[[random.Random, bytes], bytes]
ROUTES = (b"/v1/login", b"/v1/session", b"/v1/user-data/decrypt", b"/v1/logout")


def _request(
    method: bytes, path: bytes, headers: list[bytes], body: bytes = b"", *, length: bool = True
) -> bytes:
    """A raw HTTP/1.1 request; `Connection: close`, so every answer ends with EOF."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += headers
    if length and body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _random_body(rng: random.Random, token: bytes) -> bytes:
    content_type = rng.choice(
        [b"application/json", b"application/octet-stream", b"text/plain; charset=utf-16", b""]
    )
    headers = [b"Authorization: Bearer " + token]
    if content_type:
        headers.append(b"Content-Type: " + content_type)
    path = rng.choice([b"/v1/login", b"/v1/user-data/decrypt", b"/v1/logout"])
    return _request(b"POST", path, headers, rng.randbytes(rng.randint(1, 2048)))


def _bad_json(rng: random.Random, token: bytes) -> bytes:
    body = rng.choice(
        [
            b'{"code": "' + token + b'"',
            b'{"code": ' + token + b"}",
            b'{"code": 12345}',
            b'{"code": null}',
            b'{"code": ""}',
            b"[]",
            b'"' + token + b'"',
            b"null",
            b"1e999",
            b'{"code": NaN}',
            b"[" * 50_000,
            b'{"code": "\\ud800' + token + b'"}',
            b'\xef\xbb\xbf{"code": "' + token + b'"}',
            b'{"code": "\xff\xfe' + token + b'"}',
            b'{"code": "a", "code": "' + token + b'"}',
            b'{"code": "x", "app_id": "' + token + b'"}',
            b'{"code": {"$gt": ""}, "app_id": ["' + token + b'"]}',
            b'{"encryptedData": 1, "iv": []}',
            b'{"encryptedData": "' + token + b'", "iv": "' + token + b'"}',
            b'{"encryptedData": "!!!", "iv": "AAAAAAAAAAAAAAAAAAAAAA==", "rawData": "'
            + token
            + b'", "signature": "'
            + token
            + b'"}',
        ]
    )
    path = b"/v1/user-data/decrypt" if b"encryptedData" in body else b"/v1/login"
    headers = [b"Content-Type: application/json", b"Authorization: Bearer " + token]
    return _request(b"POST", path, headers, body)


def _bad_headers(rng: random.Random, token: bytes) -> bytes:
    headers = rng.choice(
        [
            [b"Authorization: Bearer"],
            [b"Authorization: Bearer "],
            [b"Authorization: Bearer  " + token],
            [b"Authorization: bearer " + token + b"x"],
            [b"Authorization: Basic " + base64.b64encode(b"user:" + token)],
            [b"Authorization: Bearer " + token + b" " + token],
            [b"Authorization: Bearer " + token[:-1]],
            [b"Authorization: Bearer " + token + b"\xff\xfe"],
            [b"Authorization: Bearer \xe4\xbd\xa0\xe5\xa5\xbd" + token],
            [b"Authorization: Bearer " + token, b"Authorization: Bearer other"],
            [b"Content-Length: -1"],
            [b"Content-Length: abc"],
            [b"Content-Length: 2", b"Content-Length: 3"],
            [b"Transfer-Encoding: chunked", b"", b"zz"],
            [b"Transfer-Encoding: gzip, chunked"],
            [b"NoColonHere " + token],
            [b"Bad Name: " + token],
            [b": " + token],
            [b"X-Folded: a", b" continued " + token],
            [b"Host: " + token],
            [b"Content-Type: application/json; charset=" + token],
        ]
    )
    path = rng.choice([b"/v1/session", b"/v1/logout"])
    return _request(b"GET" if path == b"/v1/session" else b"POST", path, headers)


def _control_chars(rng: random.Random, token: bytes) -> bytes:
    choice = rng.randrange(7)
    if choice == 0:
        return _request(b"GET", b"/v1/session\x00" + token, [])
    if choice == 1:
        return _request(b"GET", b"/v1/\x1b[31m" + token, [])
    if choice == 2:
        return _request(b"GET", b"/v1/session%00?x=" + token, [])
    if choice == 3:
        return _request(b"GET", b"/v1/session", [b"Authorization: Bearer " + token + b"\x00"])
    if choice == 4:
        return _request(b"GET", b"/v1/session", [b"User-Agent: \x1b[2J\x7f" + token])
    if choice == 5:
        return _request(b"GET", b"/v1/session", [b"Authorization: Bearer " + token + b"\rX-A: 1"])
    body = b'{"code": "\\u0000\\n\\r\\u001b[31m' + token + b'"}'
    return _request(b"POST", b"/v1/login", [b"Content-Type: application/json"], body)


def _long_headers(rng: random.Random, token: bytes) -> bytes:
    size = rng.choice([9_000, 70_000, 256_000])
    choice = rng.randrange(6)
    if choice == 0:
        return _request(b"GET", b"/v1/session", [b"X-Long: " + b"a" * size + token])
    if choice == 1:
        headers = [b"X-H%d: %s" % (n, token) for n in range(rng.choice([200, 5_000]))]
        return _request(b"GET", b"/v1/session", headers)
    if choice == 2:
        return _request(b"GET", b"/v1/session?q=" + b"a" * size + b"&t=" + token, [])
    if choice == 3:
        return _request(b"GET", b"/v1/session", [b"Authorization: Bearer " + token * 200])
    if choice == 4:
        body = b'{"code": "' + b"a" * 70_000 + token + b'"}'
        return _request(b"POST", b"/v1/login", [b"Content-Type: application/json"], body)
    return _request(b"GET", b"/v1/session", [b"X-Request-Id: " + b"r" * size])


def _token_in_query(rng: random.Random, token: bytes) -> bytes:
    method, path = rng.choice(
        [
            (b"GET", b"/v1/session?token=" + token),
            (b"GET", b"/v1/session?access_token=" + token),
            (b"POST", b"/v1/login?code=" + token + b"&token=" + token),
            (b"GET", b"/v1/session/" + token),
            (b"GET", b"/" + token),
            (b"POST", b"/v1/logout?token=" + token),
            (b"GET", b"/v1/session;token=" + token),
            (b"GET", b"/healthz?token=" + token),
            (b"GET", b"/openapi.json?t=" + token),
            (b"GET", b"/v1/session?" + token),
        ]
    )
    body = login_json("not-a-code") if method == b"POST" else b""
    return _request(method, path, [b"Content-Type: application/json"], body)


def _bad_request_line(rng: random.Random, token: bytes) -> bytes:
    return rng.choice(
        [
            b"GARBAGE\r\n\r\n",
            rng.randbytes(64).replace(b"\n", b"?") + b"\r\n\r\n",
            b"GET /v1/session?t=" + token + b" HTTP/9.9\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"get /v1/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"FOO /v1/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET http://x/v1/session?t=" + token + b" HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET  /v1/session  HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT " + token + b":443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/session HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            # Empty lines before the request line are to be skipped (RFC 9112 2.2).
            b"\r\n\r\nGET /v1/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /v1/session?t=" + token + b" HTTP/1.1\nHost: x\nConnection: close\n\n",
        ]
    )


def _wrong_method(rng: random.Random, token: bytes) -> bytes:
    method, path = rng.choice(
        [
            (b"PUT", b"/v1/login"),
            (b"DELETE", b"/v1/session"),
            (b"GET", b"/v1/login?code=" + token),
            (b"OPTIONS", b"*"),
            (b"TRACE", b"/"),
            (b"PATCH", b"/v1/logout"),
            (b"HEAD", b"/v1/session"),
            (b"GET", b"/v2/login"),
        ]
    )
    return _request(method, path, [b"Authorization: Bearer " + token])


def _http_request_id(rng: random.Random, token: bytes) -> bytes:
    request_id = rng.choice([token, token + b"\x01", b"Bearer " + token, b"id-" + token])
    headers = [b"X-Request-Id: " + request_id, b"Authorization: Bearer not-" + token[5:]]
    return _request(b"GET", b"/v1/session", headers)


HTTP_KINDS: Mapping[str, HttpMaker] = {
    "random body": _random_body,
    "bad JSON": _bad_json,
    "bad headers": _bad_headers,
    "control characters": _control_chars,
    "over-long headers, URL, body": _long_headers,
    "token in the query or path": _token_in_query,
    "bad request line": _bad_request_line,
    "wrong method or route": _wrong_method,
    "token as X-Request-Id": _http_request_id,
}

# -- gRPC junk ----------------------------------------------------------------------------------

METHODS = ("Login", "CheckSession", "DecryptUserData", "RevokeSession")


@dataclass(frozen=True)
class GrpcJunk:
    """One raw gRPC call: method path, body bytes, metadata."""

    path: str
    body: bytes
    metadata: tuple[tuple[str, str | bytes], ...] = ()


GrpcMaker = Callable[[random.Random, str], GrpcJunk]


def _check(token: str) -> bytes:
    return auth_pb2.CheckSessionRequest(token=token).SerializeToString()


def _grpc_random(rng: random.Random, token: str) -> GrpcJunk:
    body = rng.randbytes(rng.randint(0, 1024))
    if rng.random() < 0.3:  # random bytes with the token's bytes in them
        body = body[: len(body) // 2] + token.encode() + body[len(body) // 2 :]
    return GrpcJunk(AUTH + rng.choice(METHODS), body)


def _grpc_bad_wire(rng: random.Random, token: str) -> GrpcJunk:
    valid = _check(token)
    choice = rng.randrange(8)
    if choice == 0:
        body = valid[: rng.randint(1, len(valid) - 1)]  # truncated mid-string
    elif choice == 1:
        flipped = bytearray(valid)
        flipped[rng.randrange(2)] = rng.randrange(256)  # the tag or the length byte
        body = bytes(flipped)
    elif choice == 2:
        body = b"\x0a\xff\xff\xff\xff\x0f" + token.encode()  # length far past the end
    elif choice == 3:
        body = b"\x0b" + valid  # a group start that never ends
    elif choice == 4:
        body = b"\x08" + b"\xff" * 11  # a varint longer than 10 bytes
    elif choice == 5:
        body = b"\x00\x01" + valid  # field number 0
    elif choice == 6:
        body = b"\x08\x01" + valid  # field 1 as a varint, then as a string
    else:
        body = valid + b"\x0a"  # a tag with no length after it
    return GrpcJunk(AUTH + rng.choice(METHODS), body)


def _grpc_bad_utf8(rng: random.Random, token: str) -> GrpcJunk:
    junk = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    value = token.encode() + junk
    field = rng.choice([1, 2, 3])  # token / code, encrypted_data / app_id, iv
    body = bytes([field << 3 | 2, len(value)]) + value
    return GrpcJunk(AUTH + rng.choice(METHODS), body)


def _grpc_odd_values(rng: random.Random, token: str) -> GrpcJunk:
    choice = rng.randrange(12)
    check = AUTH + "CheckSession"
    if choice == 0:
        return GrpcJunk(check, _check(token + "\x00"))
    if choice == 1:
        return GrpcJunk(check, _check(token + "\n" + token))
    if choice == 2:
        return GrpcJunk(check, _check(token * 1000))
    if choice == 3:
        return GrpcJunk(check, _check("\u202e" + token + "\U0001f600" * 50))
    if choice == 4:
        return GrpcJunk(check, _check(token.upper()))
    login = AUTH + "Login"
    if choice == 5:
        return GrpcJunk(login, auth_pb2.LoginRequest(app_id=token, code="x").SerializeToString())
    if choice == 6:
        return GrpcJunk(
            login, auth_pb2.LoginRequest(app_id=DEV_APP, code=token).SerializeToString()
        )
    if choice == 7:
        odd = auth_pb2.LoginRequest(app_id=DEV_APP, code="\x00\r\n\x1b[2J" + token)
        return GrpcJunk(login, odd.SerializeToString())
    decrypt = AUTH + "DecryptUserData"
    if choice == 8:
        request = auth_pb2.DecryptUserDataRequest(token=token, encrypted_data=token, iv=token)
        return GrpcJunk(decrypt, request.SerializeToString())
    if choice == 9:
        request = auth_pb2.DecryptUserDataRequest(
            token=token,
            encrypted_data="A" * 32,
            iv="AAAAAAAAAAAAAAAAAAAAAA==",
            raw_data=token,
            signature=token,
        )
        return GrpcJunk(decrypt, request.SerializeToString())
    if choice == 10:
        request = auth_pb2.DecryptUserDataRequest(token=token, encrypted_data="!!!", iv="?")
        return GrpcJunk(decrypt, request.SerializeToString())
    revoke = auth_pb2.RevokeSessionRequest(token=token + "x").SerializeToString()
    return GrpcJunk(AUTH + "RevokeSession", revoke)


def _grpc_metadata(rng: random.Random, token: str) -> GrpcJunk:
    metadata: tuple[tuple[str, str | bytes], ...] = rng.choice(
        [
            (("x-wxlogin-caller-key", token),),
            (("authorization", "Bearer " + token),),
            (("x-request-id", "r" * 10_000),),
            (("x-junk-bin", rng.randbytes(100)),),
            (("x-wxlogin-caller-key-bin", token.encode() + b"\xff"),),
            (("cookie", "token=" + token),),
        ]
    )
    return GrpcJunk(AUTH + "CheckSession", _check("not-a-token"), metadata)


def _grpc_unknown_method(rng: random.Random, token: str) -> GrpcJunk:
    path = rng.choice(
        [
            AUTH + "Nope",
            AUTH,
            "/x/y",
            AUTH + "Login/extra",
            AUTH + token,
            "/wxlogin.v1.AuthService.Login",
        ]
    )
    return GrpcJunk(path, _check(token))


def _grpc_request_id(rng: random.Random, token: str) -> GrpcJunk:
    return GrpcJunk(AUTH + "CheckSession", _check("not-a-token"), (("x-request-id", token),))


GRPC_KINDS: Mapping[str, GrpcMaker] = {
    "random bytes": _grpc_random,
    "broken protobuf wire format": _grpc_bad_wire,
    "invalid UTF-8 in string fields": _grpc_bad_utf8,
    "odd values (control chars, huge, token elsewhere)": _grpc_odd_values,
    "odd metadata": _grpc_metadata,
    "unknown method": _grpc_unknown_method,
    "token as x-request-id": _grpc_request_id,
}

# -- sending ------------------------------------------------------------------------------------


def _round_robin(count: int, kinds: Mapping[str, Any]) -> Iterator[tuple[int, str]]:
    names = list(kinds)
    for index in range(count):
        yield index, names[index % len(names)]


async def _http_one(host: str, port: int, raw: bytes) -> str:
    """Send one raw request on its own connection; the answer's status, or what happened."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return "connect failed"
    try:
        try:
            writer.write(raw)
            await writer.drain()
        except OSError:
            pass  # the edge may answer and close before reading all of a huge request
        try:
            answer = await asyncio.wait_for(reader.read(1024), READ_TIMEOUT)
        except TimeoutError:
            return "timeout"
        except OSError:
            answer = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not answer:
        return "closed without answer"
    parts = answer.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "garbled answer"
    return parts[1].decode()


async def _http_junk(
    stack: Running, count: int, concurrency: int, seed: int, tokens: Mapping[str, str]
) -> dict[str, Any]:
    host, port = stack.edge_url.removeprefix("http://").rsplit(":", 1)
    rng = random.Random(seed)
    jobs = _round_robin(count, HTTP_KINDS)
    by_status: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in HTTP_KINDS}

    async def worker() -> None:
        # One shared iterator: requests are made in one order whatever the interleaving.
        for _, kind in jobs:
            raw = HTTP_KINDS[kind](rng, tokens[f"http {kind}"].encode())
            status = await _http_one(host, int(port), raw)
            by_status[status] += 1
            by_kind[kind][status] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    server_errors = sum(n for status, n in by_status.items() if status.startswith("5"))
    return {
        "sent": count,
        "by_status": dict(by_status.most_common()),
        "server_errors": server_errors,
        "by_kind": {
            kind: {
                "sent": sum(counted.values()),
                "5xx": sum(n for status, n in counted.items() if status.startswith("5")),
                "statuses": dict(counted.most_common()),
            }
            for kind, counted in by_kind.items()
        },
    }


async def _grpc_junk(
    stack: Running, count: int, concurrency: int, seed: int, tokens: Mapping[str, str]
) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    jobs = _round_robin(count, GRPC_KINDS)
    by_code: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {kind: Counter() for kind in GRPC_KINDS}
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:

        async def worker() -> None:
            for _, kind in jobs:
                junk = GRPC_KINDS[kind](rng, tokens[f"grpc {kind}"])
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    junk.path
                )
                try:
                    await call(junk.body, timeout=READ_TIMEOUT, metadata=junk.metadata or None)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                by_code[code] += 1
                by_kind[kind][code] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    bad = ("INTERNAL", "UNKNOWN")
    return {
        "sent": count,
        "by_code": dict(by_code.most_common()),
        "internal_or_unknown": sum(by_code[code] for code in bad),
        "by_kind": {
            kind: {
                "sent": sum(counted.values()),
                "internal_or_unknown": sum(counted[code] for code in bad),
                "codes": dict(counted.most_common()),
            }
            for kind, counted in by_kind.items()
        },
    }


async def _healthy(stack: Running, deadline: float) -> dict[str, bool]:
    """A real login still works, through the gRPC service and through the edge."""
    async with client_for(stack.grpc_target, deadline) as client:
        try:
            await client.login(await stack.emulator.code("chaos-d-after"), app_id=DEV_APP)
            grpc_ok = True
        except Exception:
            grpc_ok = False
    body = login_json(await stack.emulator.code("chaos-d-after-edge"))
    async with stack.http.post(
        stack.edge_url + "/v1/login", data=body, headers={"Content-Type": "application/json"}
    ) as answer:
        edge_ok = answer.status == 200 and "token" in await answer.json()
    return {"grpc_login": grpc_ok, "edge_login": edge_ok}


def _search_logs(logs: Mapping[str, str], tokens: Mapping[str, str]) -> dict[str, Any]:
    """Which known tokens each log holds (by the junk kind that carried them), and any token."""
    found: dict[str, dict[str, int]] = {}
    for name, text in logs.items():
        hits = {kind: text.count(token) for kind, token in tokens.items() if token in text}
        found[name] = hits
    shaped = {match for text in logs.values() for match in TOKEN_SHAPE.findall(text)}
    known = set(tokens.values())
    return {
        "tokens_found": sum(1 for token in known if any(token in text for text in logs.values())),
        "by_log": found,
        "token_shaped_strings": len(shaped),
        "unknown_token_shaped_strings": len(shaped - known),
        "log_bytes": {name: len(text) for name, text in logs.items()},
    }


async def run(ctx: Context) -> dict[str, Any]:
    """Junk to the edge, then junk to the service; is the stack still well; are logs clean?"""
    plan = ctx.plan
    async with running(ctx.workdir, KEY, ctx.http) as stack:
        tokens: dict[str, str] = {}
        async with client_for(stack.grpc_target, plan.login_deadline) as client:
            for kind in [f"http {k}" for k in HTTP_KINDS] + [f"grpc {k}" for k in GRPC_KINDS]:
                code = await stack.emulator.code(f"chaos-d-{len(tokens)}")
                tokens[kind] = (await client.login(code, app_id=DEV_APP)).token
        ctx.log(f"  {plan.junk_http:,} junk HTTP requests to the edge")
        http = await _http_junk(
            stack, plan.junk_http, plan.junk_concurrency, plan.junk_seed, tokens
        )
        ctx.log(f"  {plan.junk_grpc:,} junk gRPC requests to the service")
        grpc_figures = await _grpc_junk(
            stack, plan.junk_grpc, plan.junk_concurrency, plan.junk_seed, tokens
        )
        health = await _healthy(stack, plan.login_deadline)
    # Read after the stack stopped: service and edge write their logs in blocks.
    leaks = _search_logs(stack.logs(*LOGS), tokens)
    healthy = all(health.values())
    return scenario(
        KEY,
        TITLE,
        figures={"http": http, "grpc": grpc_figures, "logs": leaks, "healthy_after": health},
        targets=[
            target("malformed_http_5xx", "edge: 5xx answers = 0", http["server_errors"], 0),
            target(
                "malformed_grpc_internal",
                "service: INTERNAL/UNKNOWN answers = 0",
                grpc_figures["internal_or_unknown"],
                0,
            ),
            target(
                "malformed_tokens_in_logs",
                "tokens found in service and edge logs = 0",
                leaks["tokens_found"],
                0,
            ),
            target(
                "malformed_healthy_after",
                "a login works afterwards (gRPC and edge)",
                1 if healthy else 0,
                1,
                at_least=True,
            ),
        ],
    )
