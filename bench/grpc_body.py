"""gRPC's length-prefixed message framing, for load generators that only send bytes."""

from __future__ import annotations

import struct

# 1 byte "compressed" flag (0: not compressed) + 4 byte big-endian message length.
_PREFIX = struct.Struct(">BI")

# What h2load must send for the server to treat a POST as a gRPC call.
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def frame(payload: bytes) -> bytes:
    """One uncompressed gRPC message, as it travels in HTTP/2 DATA frames."""
    return _PREFIX.pack(0, len(payload)) + payload
