"""How a client proves itself to wxlogin: TLS trust and client certificate, and its caller key.

From the environment (the edge, the demo, any backend that wants it):

    WXLOGIN_UPSTREAM_CA     PEM roots that sign wxlogin's certificate (unset: the system's)
    WXLOGIN_UPSTREAM_CERT   PEM client certificate, for mTLS (with WXLOGIN_UPSTREAM_KEY)
    WXLOGIN_UPSTREAM_KEY    its private key
    WXLOGIN_CALLER_KEY      the caller key, sent as metadata x-wxlogin-caller-key

Any of the first three turns TLS on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from runtime.config import ConfigError

CALLER_KEY_METADATA = "x-wxlogin-caller-key"
# What a gRPC metadata value may hold, and nothing that could break a header.
_CALLER_KEY = re.compile(r"[!-~]{16,256}")


def is_caller_key(value: str) -> bool:
    """True when `value` can be a caller key: 16-256 printable ASCII characters, no spaces."""
    return _CALLER_KEY.fullmatch(value) is not None


@dataclass(frozen=True)
class TlsConfig:
    """A TLS channel to wxlogin: roots to trust, and optionally a client certificate (mTLS)."""

    root_certificates: bytes | None = None  # None: the system's roots
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> TlsConfig:
        """Read the PEM files (any may be None); OSError if one cannot be read."""
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return cls(
            root_certificates=None if ca is None else Path(ca).read_bytes(),
            certificate_chain=None if cert is None else Path(cert).read_bytes(),
            private_key=None if key is None else Path(key).read_bytes(),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """grpc's credentials for a secure channel with these certificates."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True)
class UpstreamConfig:
    """TLS (None: plaintext) and caller key (None: none) for calling wxlogin."""

    tls: TlsConfig | None = None
    caller_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UpstreamConfig:
        """Read WXLOGIN_UPSTREAM_CA/_CERT/_KEY and WXLOGIN_CALLER_KEY; ConfigError on a bad one."""
        files = {
            name: (env.get(name) or "").strip() or None
            for name in ("WXLOGIN_UPSTREAM_CA", "WXLOGIN_UPSTREAM_CERT", "WXLOGIN_UPSTREAM_KEY")
        }
        cert, key = files["WXLOGIN_UPSTREAM_CERT"], files["WXLOGIN_UPSTREAM_KEY"]
        if (cert is None) != (key is None):
            missing = "WXLOGIN_UPSTREAM_KEY" if key is None else "WXLOGIN_UPSTREAM_CERT"
            raise ConfigError(missing, "a client certificate needs both _CERT and _KEY")
        tls = None
        if any(files.values()):
            for name, path in files.items():
                if path is not None and not Path(path).is_file():
                    raise ConfigError(name, f"no such file: {path}")
            tls = TlsConfig.from_files(files["WXLOGIN_UPSTREAM_CA"], cert, key)
        caller_key = (env.get("WXLOGIN_CALLER_KEY") or "").strip() or None
        if caller_key is not None and not is_caller_key(caller_key):
            # Never echo it: it is a secret.
            raise ConfigError(
                "WXLOGIN_CALLER_KEY", "expected 16-256 printable ASCII characters, no spaces"
            )
        return cls(tls, caller_key)
