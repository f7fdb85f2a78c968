"""gRPC over TLS and mTLS with certificates made at test time; rotation while serving."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from clients import (
    CallerForbidden,
    CallerUnauthenticated,
    ServiceUnavailable,
    SessionInvalid,
    TlsConfig,
    connect,
)
from clients.edge.config import EdgeConfig
from devtools.pki import CertificateAuthority, Issued
from service.app import RunningService
from service.settings import ConfigError, Settings
from service.tls import ReloadingServerCredentials, TlsFiles
from tests.conftest import ServiceFactory, b64_secret_key
from tests.edge_support import running_edge
from tests.support import APP_A, APPS_ENV, Emulator

BACKEND_ID = "spiffe://wxlogin.test/backend"


@dataclass(frozen=True)
class Pki:
    """One CA with a server and client certificates, and strangers to it."""

    ca: CertificateAuthority
    other_ca: CertificateAuthority
    server: Issued
    backend: Issued  # client certificate naming BACKEND_ID
    nobody: Issued  # client certificate from our CA that names no caller
    stranger: Issued  # client certificate from another CA
    expired: Issued  # client certificate from our CA, expired


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "pki")
    other = CertificateAuthority(tmp_path / "other", "some other CA")
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.server(),
        backend=ca.issue("backend", uris=(BACKEND_ID,), dns=("backend.internal",), client=True),
        nobody=ca.issue("nobody", dns=("nobody.internal",), client=True),
        stranger=other.issue("stranger", uris=(BACKEND_ID,), client=True),
        expired=ca.issue("expired", uris=(BACKEND_ID,), client=True, expired=True),
    )


def client_tls(pki: Pki, cert: Issued | None = None, roots: bytes | None = None) -> TlsConfig:
    return TlsConfig(
        root_certificates=roots or pki.ca.cert_pem,
        certificate_chain=None if cert is None else cert.cert_pem,
        private_key=None if cert is None else cert.key_pem,
    )


@pytest_asyncio.fixture
async def tls_service(start_service: ServiceFactory, pki: Pki) -> AsyncIterator[RunningService]:
    """The service over TLS (no client certificates asked for)."""
    async with start_service(tls_cert=pki.server.cert_file, tls_key=pki.server.key_file) as running:
        yield running


@pytest_asyncio.fixture
async def mtls_service(start_service: ServiceFactory, pki: Pki) -> AsyncIterator[RunningService]:
    """The service over mTLS: client certificates signed by our CA are required."""
    async with start_service(
        tls_cert=pki.server.cert_file,
        tls_key=pki.server.key_file,
        tls_client_ca=pki.ca.cert_file,
    ) as running:
        yield running


async def check(port: int, tls: TlsConfig | None, token: str = "wxl1_" + "T" * 43) -> str:
    """What CheckSession of an unknown token says over this channel: a reason, or SessionInvalid."""
    async with connect(f"localhost:{port}", tls=tls) as client:
        client.deadlines = type(client.deadlines)(check_session=3.0)
        try:
            await client.check_session(token)
        except SessionInvalid:
            return "SESSION_INVALID"  # the call got through and was answered
        except ServiceUnavailable:
            return "REFUSED"  # no connection: the handshake failed
    return "OK"


async def test_tls_serves_and_plaintext_is_refused(
    tls_service: RunningService, pki: Pki, emu: Emulator
) -> None:
    """A client trusting our CA logs in over TLS; a plaintext client or one trusting no CA fails."""
    async with connect(f"localhost:{tls_service.port}", tls=client_tls(pki)) as client:
        result = await client.login(await emu.code(APP_A, "tia"), app_id=APP_A)
        assert (await client.check_session(result.token)).user.app_id == APP_A
    assert await check(tls_service.port, None) == "REFUSED"
    assert await check(tls_service.port, client_tls(pki, roots=pki.other_ca.cert_pem)) == "REFUSED"


async def test_mtls_requires_a_client_certificate_from_our_ca(
    mtls_service: RunningService, pki: Pki
) -> None:
    """Under mTLS: our CA's certificate works; none, another CA's or an expired one is refused."""
    port = mtls_service.port
    assert await check(port, client_tls(pki, pki.backend)) == "SESSION_INVALID"
    assert await check(port, client_tls(pki)) == "REFUSED"
    assert await check(port, client_tls(pki, pki.stranger)) == "REFUSED"
    assert await check(port, client_tls(pki, pki.expired)) == "REFUSED"


async def test_a_certificate_identity_is_a_caller(
    start_service: ServiceFactory, pki: Pki, tmp_path: Path
) -> None:
    """A SAN URI in the callers file authenticates without a key; grants apply; others refused."""
    callers = tmp_path / "callers.toml"
    edge_key = "edge-key-for-tls-tests-01"
    await asyncio.to_thread(
        callers.write_text,
        f"""
[callers.backend]
identity = "{BACKEND_ID}"
rpcs = ["CheckSession"]
apps = ["{APP_A}"]

[callers.edge]
key_sha256 = "{hashlib.sha256(edge_key.encode()).hexdigest()}"
rpcs = ["*"]
apps = ["*"]
""",
    )
    async with start_service(
        tls_cert=pki.server.cert_file,
        tls_key=pki.server.key_file,
        tls_client_ca=pki.ca.cert_file,
        callers_file=callers,
        grpc_listen="0.0.0.0:0",  # TLS and callers: secure enough to listen beyond loopback
    ) as running:
        target = f"localhost:{running.port}"
        assert await check(running.port, client_tls(pki, pki.backend)) == "SESSION_INVALID"
        async with connect(target, tls=client_tls(pki, pki.backend)) as backend:
            with pytest.raises(CallerForbidden):
                await backend.login("some-code", app_id=APP_A)
        async with connect(target, tls=client_tls(pki, pki.nobody)) as nobody:
            with pytest.raises(CallerUnauthenticated):
                await nobody.check_session("wxl1_" + "T" * 43)
        # A key decides when one is sent, whatever the certificate says.
        async with connect(target, tls=client_tls(pki, pki.nobody), caller_key=edge_key) as edge:
            with pytest.raises(SessionInvalid):
                await edge.check_session("wxl1_" + "T" * 43)


async def replace_files(issued: Issued, into: Issued) -> None:
    """Put `issued`'s certificate and key where `into`'s are, each by an atomic rename."""

    def write() -> None:
        for source, target in ((issued.key_pem, into.key_file), (issued.cert_pem, into.cert_file)):
            temporary = target.with_suffix(".new")
            temporary.write_bytes(source)
            os.replace(temporary, target)

    await asyncio.to_thread(write)


async def test_rotated_certificates_are_served_without_dropping_calls(
    tls_service: RunningService, pki: Pki, emu: Emulator
) -> None:
    """New files are picked up at the next handshake; open channels and calls in flight go on."""
    async with connect(f"localhost:{tls_service.port}", tls=client_tls(pki)) as old_client:
        token = (await old_client.login(await emu.code(APP_A, "rot"), app_id=APP_A)).token
        await emu.fault(latency_ms=1500, times=1)
        in_flight = asyncio.ensure_future(
            old_client.login(await emu.code(APP_A, "rot2"), app_id=APP_A)
        )
        await asyncio.sleep(0.3)  # the login now waits on WeChat
        await replace_files(pki.other_ca.server("rotated"), into=pki.server)
        new_roots = client_tls(pki, roots=pki.other_ca.cert_pem)
        assert await check(tls_service.port, new_roots, token) == "OK"
        assert await check(tls_service.port, client_tls(pki), token) == "REFUSED"
        assert (await in_flight).user.app_id == APP_A
        assert (await old_client.check_session(token)).user.app_id == APP_A


async def test_a_broken_rotation_keeps_the_old_certificates(
    tls_service: RunningService, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate next to a key that is not its own: logged, and the old pair stays in use."""
    rotated = pki.other_ca.server("half")

    def write_cert_only() -> None:
        pki.server.cert_file.write_bytes(rotated.cert_pem)

    await asyncio.to_thread(write_cert_only)
    assert await check(tls_service.port, client_tls(pki)) == "SESSION_INVALID"
    assert "TLS certificates not reloaded" in caplog.text
    assert "is not the key of" in caplog.text


def test_reload_reports_whether_anything_changed(pki: Pki) -> None:
    """reload() (SIGHUP) is False for the same files and True once they hold a new pair."""
    credentials = ReloadingServerCredentials(TlsFiles(pki.server.cert_file, pki.server.key_file))
    assert credentials.credentials() is not None
    assert not credentials.reload()
    replacement = pki.ca.server("replacement")
    pki.server.cert_file.write_bytes(replacement.cert_pem)
    pki.server.key_file.write_bytes(replacement.key_pem)
    assert credentials.reload()


async def test_the_edge_calls_over_mtls(
    mtls_service: RunningService, pki: Pki, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """WXLOGIN_UPSTREAM_CA/_CERT/_KEY make the edge's channel mTLS."""
    config = EdgeConfig.from_env(
        {
            "WXLOGIN_UPSTREAM": f"localhost:{mtls_service.port}",
            "WXLOGIN_UPSTREAM_CA": str(pki.ca.cert_file),
            "WXLOGIN_UPSTREAM_CERT": str(pki.backend.cert_file),
            "WXLOGIN_UPSTREAM_KEY": str(pki.backend.key_file),
        }
    )
    async with running_edge(config.upstream, security=config.security) as edge:
        body = {"code": await emu.code(APP_A, "ed"), "app_id": APP_A}
        async with http.post(f"{edge}/v1/login", json=body) as response:
            assert response.status == 200, await response.text()


# -- configuration --------------------------------------------------------------------------------


def tls_env(pki: Pki, **overrides: str) -> dict[str, str]:
    return {
        "WXLOGIN_APPS": APPS_ENV,
        "WXLOGIN_SECRET_KEY": b64_secret_key(),
        "WXLOGIN_TLS_CERT": str(pki.server.cert_file),
        "WXLOGIN_TLS_KEY": str(pki.server.key_file),
        **overrides,
    }


def test_tls_settings_come_in_pairs(pki: Pki) -> None:
    """Cert without key, key without cert, a client CA without TLS: each names its variable."""
    settings = Settings.from_env(tls_env(pki, WXLOGIN_TLS_CLIENT_CA=str(pki.ca.cert_file)))
    assert settings.tls
    assert settings.tls_client_ca == pki.ca.cert_file
    for env, variable in (
        (tls_env(pki, WXLOGIN_TLS_KEY=""), "WXLOGIN_TLS_KEY"),
        (tls_env(pki, WXLOGIN_TLS_CERT=""), "WXLOGIN_TLS_CERT"),
        (
            tls_env(pki, WXLOGIN_TLS_CERT="", WXLOGIN_TLS_KEY="", WXLOGIN_TLS_CLIENT_CA="x"),
            "WXLOGIN_TLS_CLIENT_CA",
        ),
        (tls_env(pki, WXLOGIN_TLS_CERT="/nonexistent.pem"), "WXLOGIN_TLS_CERT"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert caught.value.variable == variable


async def test_unusable_certificates_fail_the_start(
    start_service: ServiceFactory, pki: Pki, tmp_path: Path
) -> None:
    """Not PEM, or a key that is not the certificate's: ConfigError naming the variable."""
    garbage = tmp_path / "garbage.pem"
    await asyncio.to_thread(garbage.write_text, "not a certificate")
    other_key = pki.ca.server("other").key_file
    for overrides, variable in (
        ({"tls_cert": garbage, "tls_key": pki.server.key_file}, "WXLOGIN_TLS_CERT"),
        ({"tls_cert": pki.server.cert_file, "tls_key": garbage}, "WXLOGIN_TLS_KEY"),
        ({"tls_cert": pki.server.cert_file, "tls_key": other_key}, "WXLOGIN_TLS_KEY"),
    ):
        with pytest.raises(ConfigError) as caught:
            async with start_service(**overrides):
                pass
        assert caught.value.variable == variable
        assert "PRIVATE KEY" not in str(caught.value)


async def test_tls_and_callers_listen_beyond_loopback_quietly(
    start_service: ServiceFactory, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TLS without callers on 0.0.0.0 still fails, naming what is missing; both: no warning."""
    caplog.set_level(logging.INFO)
    tls = {"tls_cert": pki.server.cert_file, "tls_key": pki.server.key_file}
    with pytest.raises(ConfigError) as caught:
        async with start_service(grpc_listen="0.0.0.0:0", **tls):
            pass
    assert caught.value.variable == "WXLOGIN_ALLOW_INSECURE"
    assert "WXLOGIN_CALLERS_FILE" in caught.value.problem
    assert "WXLOGIN_TLS_CERT" not in caught.value.problem
    callers = tmp_path / "callers.toml"
    await asyncio.to_thread(
        callers.write_text, '[callers.a]\nidentity = "x"\nrpcs = ["*"]\napps = ["*"]\n'
    )
    async with start_service(grpc_listen="0.0.0.0:0", callers_file=callers, **tls) as running:
        assert running.port
    assert "INSECURE" not in caplog.text
