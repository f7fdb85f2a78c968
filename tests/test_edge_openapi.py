"""The edge against its own OpenAPI document: schemathesis-generated and malformed requests."""

from __future__ import annotations

import asyncio
from collections import Counter

import hypothesis
import hypothesis.errors
import schemathesis
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from tests.conftest import ServiceFactory
from tests.edge_support import running_edge
from tests.support import APP_A, APPS

# Per operation and mode; six operations x two modes keeps the run to seconds.
MAX_EXAMPLES = 25
# "Schema-valid data must get 2xx" does not fit this API: a well-formed login
# for an app that isn't configured, or encryptedData that isn't real, is
# rightly 400 (APP_UNKNOWN, DECRYPT_FAILED) whatever the schema could say.
EXCLUDED_CHECKS = [positive_data_acceptance]
# Logout's token names the session to end and any token is fine (idempotent,
# documented); "invalid auth must be 401" does not apply to it.
EXCLUDED_FOR = {"POST /v1/logout": [ignored_auth]}


def drive(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    failures: list[str],
    seen: Counter[str],
) -> None:
    """Send one operation's generated cases in one mode and check every answer."""
    excluded = EXCLUDED_CHECKS + EXCLUDED_FOR.get(operation.label, [])

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: CI must not flake
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=10)
        seen[f"{operation.label} {mode.value} {response.status_code}"] += 1
        try:
            # The default checks: no 5xx, documented status, content type,
            # headers and body schema, negative data rejected, auth enforced.
            case.validate_response(response, excluded_checks=excluded)
        except (AssertionError, FailureGroup) as failure:
            failures.append(
                f"{operation.label} [{mode.value}] -> {response.status_code}: {failure}"
            )

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # GET /healthz and friends take no input: nothing to make malformed.
        assert mode is GenerationMode.NEGATIVE, operation.label


def fuzz(base_url: str) -> tuple[list[str], Counter[str]]:
    """Drive every documented operation with positive and negative cases."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=10)
    failures: list[str] = []
    seen: Counter[str] = Counter()
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            drive(result.ok(), mode, base_url, failures, seen)
    return failures, seen


async def test_edge_conforms_to_its_openapi_document(start_service: ServiceFactory) -> None:
    """Generated valid and malformed requests get no 5xx and no answer outside the document."""
    # One app: a login without app_id goes all the way to (emulated) WeChat.
    async with (
        start_service(apps={APP_A: APPS[APP_A]}) as service,
        running_edge(f"127.0.0.1:{service.port}") as base_url,
    ):
        # In a thread: schemathesis is synchronous, and the edge and the
        # service answer it from this event loop.
        failures, seen = await asyncio.to_thread(fuzz, base_url)
    assert failures == [], "\n\n".join(failures)
    # Not vacuous: every operation was driven, and malformed bodies were sent.
    for label in ("POST /v1/login", "GET /v1/session", "POST /v1/user-data/decrypt"):
        assert any(key.startswith(f"{label} positive") for key in seen), seen
    assert any(key.startswith("POST /v1/login negative 400") for key in seen), seen
    assert any(key.startswith("POST /v1/login positive 401") for key in seen), seen
    assert any(key.startswith("POST /v1/logout positive 204") for key in seen), seen
    assert any(key.startswith("GET /readyz positive 200") for key in seen), seen
    assert not any(key.endswith(("500", "502", "503", "504")) for key in seen), seen
