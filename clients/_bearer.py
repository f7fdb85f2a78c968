"""The one reading of `Authorization: Bearer <token>`, shared by the edge and the auth helpers."""

from __future__ import annotations

_SCHEME = "bearer"


def bearer_token(authorization: str | None) -> str | None:
    """The token of a Bearer credential (scheme case-insensitive, RFC 6750), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _SCHEME or not token:
        return None
    return token
