"""Which configured app a request is for."""

from __future__ import annotations

from collections.abc import Mapping

from service.errors import AppUnknown, BadRequest


def resolve_app(apps: Mapping[str, str], app_id: str) -> str:
    """The app a request is for; empty means the only configured app."""
    if not app_id:
        if len(apps) == 1:
            return next(iter(apps))
        raise BadRequest("app_id is required: several apps are configured")
    if app_id not in apps:
        raise AppUnknown(f"app_id {app_id[:64]!r} is not configured")
    return app_id
