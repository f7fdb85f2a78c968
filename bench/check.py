"""Real-client checks of a sample of requests: load generators only see HTTP status.

h2load counts an HTTP 200 as success even when the gRPC status in the trailers says
otherwise, so after every h2load run the same request is sent again `samples` times with
grpc.aio and each answer must be exactly what the scenario expects (for the unknown-token
scenario that is UNAUTHENTICATED with reason SESSION_INVALID). wrk runs get the same
treatment over aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass(frozen=True)
class Expect:
    """The answer every sampled gRPC call must get."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str = ""  # google.rpc.ErrorInfo reason, for an expected failure


@dataclass(frozen=True)
class CheckResult:
    """How many sampled requests were checked, how many were wrong, and the first wrong one."""

    sampled: int
    errors: int
    first_error: str = ""

    def as_json(self) -> dict[str, object]:
        return {"sampled": self.sampled, "errors": self.errors, "first_error": self.first_error}


def _reason(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


async def _gather_checks(
    samples: int, concurrency: int, one: Callable[[int], Awaitable[str]]
) -> CheckResult:
    """Run `one(i)` for every sample, `concurrency` at a time; it returns "" when right."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded(index: int) -> str:
        async with gate:
            return await one(index)

    problems = [p for p in await asyncio.gather(*(guarded(i) for i in range(samples))) if p]
    return CheckResult(samples, len(problems), problems[0] if problems else "")


async def grpc_sample(
    target: str,
    path: str,
    bodies: Sequence[bytes],
    expect: Expect,
    *,
    samples: int,
    concurrency: int = 16,
    metadata: Sequence[tuple[str, str]] = (),
) -> CheckResult:
    """Send protobuf `bodies` (cycled) `samples` times and compare each status with `expect`."""
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)

        async def one(index: int) -> str:
            try:
                await call(bodies[index % len(bodies)], timeout=10, metadata=tuple(metadata))
            except grpc.aio.AioRpcError as error:
                got, reason = error.code(), _reason(error)
            else:
                got, reason = grpc.StatusCode.OK, ""
            if got != expect.code or (expect.reason and reason != expect.reason):
                wanted = f"{expect.code.name} {expect.reason!r}"
                return f"{path}: got {got.name} {reason!r}, expected {wanted}"
            return ""

        return await _gather_checks(samples, concurrency, one)


async def http_sample(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    bodies: Sequence[bytes] = (),
    expect_status: int = 200,
    samples: int,
    concurrency: int = 16,
) -> CheckResult:
    """Send the request `samples` times (POSTing `bodies` in turn) and compare each status."""

    async def one(index: int) -> str:
        data = bodies[index % len(bodies)] if bodies else None
        async with http.request(method, url, headers=headers, data=data) as response:
            text = await response.text()
            if response.status != expect_status:
                got = f"{response.status} {text[:200]!r}"
                return f"{method} {url}: got {got}, expected {expect_status}"
        return ""

    return await _gather_checks(samples, concurrency, one)
