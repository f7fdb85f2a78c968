"""gRPC over TLS (and mTLS) with certificates that can be replaced while serving.

Operators rotate certificates by replacing the PEM files (cert-manager, a
cron'd ACME client) and, if they like, sending SIGHUP. grpc asks for the
current certificates at every new handshake (`dynamic_ssl_server_credentials`);
we answer from the files as they are then, so a rotation needs no restart and
drops no call: connections already open keep their session, new ones get the
new certificate. A half-written or mismatched set (a new certificate next to
the old key) is refused and logged, and the previous one stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from runtime.config import ConfigError

log = logging.getLogger(__name__)

_EXPIRY_WARNING = timedelta(days=14)
# A file's identity and version as far as stat() can tell; compared at each handshake.
_Stamp = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files to serve with: certificate chain, its key, and the CA for client certs."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class _Loaded:
    """One consistent set of certificates, read and checked."""

    key: bytes
    chain: bytes
    client_ca: bytes | None


class ReloadingServerCredentials:
    """Server credentials whose certificates follow their files (on change, or on `reload()`).

    grpc calls `_fetch` from its own threads, once per handshake: it only
    compares file stamps and, when they changed, reads and checks the files.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = self._stat()
        # At start a bad set is a configuration error, not a log line.
        self._current = _load(files)
        self._pending: _Loaded | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """What to pass to `server.add_secure_port`."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._current),
            # grpc's docs: the fetcher returns None to keep the configuration;
            # the stubs do not say so.
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=self.files.client_ca is not None,
        )

    def reload(self) -> bool:
        """Re-read the files now (SIGHUP); True when new certificates will be served."""
        with self._lock:
            return self._refresh(force=True)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # grpc: None keeps the current configuration.
        with self._lock:
            self._refresh(force=False)
            pending, self._pending = self._pending, None
        return None if pending is None else _configuration(pending)

    def _refresh(self, *, force: bool) -> bool:
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return False
        # Remember the stamp even when the files are bad: one log line per change,
        # not one per handshake; the next write to any of them is looked at again.
        self._stamp = stamp
        try:
            loaded = _load(self.files)
        except ConfigError as error:
            log.error("TLS certificates not reloaded, the previous ones stay: %s", error)
            return False
        if loaded == self._current:
            return False
        self._current = self._pending = loaded
        log.info("TLS certificates reloaded from %s", self.files.cert)
        return True

    def _stat(self) -> _Stamp:
        stamps = []
        for path in (self.files.cert, self.files.key, self.files.client_ca):
            if path is None:
                continue
            try:
                info = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)


def _configuration(loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(loaded.key, loaded.chain)], root_certificates=loaded.client_ca
    )


def _load(files: TlsFiles) -> _Loaded:
    """Read the files and check that they fit together; ConfigError naming the variable if not."""
    chain = _read("WXLOGIN_TLS_CERT", files.cert)
    key = _read("WXLOGIN_TLS_KEY", files.key)
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise ConfigError("WXLOGIN_TLS_CERT", f"{files.cert} holds no PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        # Never the key's text: only that it is not one we can use.
        raise ConfigError(
            "WXLOGIN_TLS_KEY", f"{files.key} holds no unencrypted PEM private key"
        ) from None
    if _public_der(certificates[0].public_key()) != _public_der(private.public_key()):
        raise ConfigError("WXLOGIN_TLS_KEY", f"{files.key} is not the key of {files.cert}")
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read("WXLOGIN_TLS_CLIENT_CA", files.client_ca)
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(
                "WXLOGIN_TLS_CLIENT_CA", f"{files.client_ca} holds no PEM certificate"
            ) from None
    _warn_if_expiring(certificates[0], files.cert)
    return _Loaded(key=key, chain=chain, client_ca=client_ca)


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _warn_if_expiring(certificate: x509.Certificate, path: Path) -> None:
    """Served anyway (clients decide), but an operator should hear of it now."""
    left = certificate.not_valid_after_utc - datetime.now(UTC)
    if left < _EXPIRY_WARNING:
        log.warning(
            "TLS certificate %s %s",
            path,
            "has EXPIRED: clients will refuse it"
            if left.total_seconds() <= 0
            else f"expires in {left.days} days",
        )


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(variable, f"cannot read {path}: {error.strerror}") from None
