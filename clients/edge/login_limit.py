"""POST /v1/login per client address: a token bucket, so junk codes cannot spend WeChat's quota.

Every login costs a jscode2session call against the app's WeChat quota, junk
code or not. The client address is the TCP peer, unless the peer is one of the
configured proxies (WXLOGIN_EDGE_TRUSTED_PROXIES): then X-Forwarded-For is
read from the right, skipping our own proxies, and the first other address is
the client. An X-Forwarded-For from anyone else is ignored: it is whatever the
client wants it to be.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from runtime.token_bucket import TokenBuckets

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# An X-Forwarded-For entry is an address; anything longer is not one.
_MAX_ADDRESS = 64


class LoginLimit:
    """Logins per second per client address, with a burst."""

    def __init__(self, rate: float, burst: float, trusted_proxies: Sequence[Network] = ()) -> None:
        self._buckets = TokenBuckets(rate, burst)
        self._trusted = tuple(trusted_proxies)

    def wait(self, request: web.Request) -> float:
        """0.0 if this request may log in now, else the seconds until its address may again."""
        return self._buckets.take(self.client_address(request))

    def client_address(self, request: web.Request) -> str:
        """Who is asking: the peer, or for a trusted proxy, the address it forwarded for."""
        peer = request.remote or "-"
        if not self._is_trusted(peer):
            return peer
        forwarded = [
            hop.strip()
            for header in request.headers.getall("X-Forwarded-For", [])
            for hop in header.split(",")
            if hop.strip()
        ]
        for hop in reversed(forwarded):
            if not self._is_trusted(hop):
                return hop[:_MAX_ADDRESS]
        # Only our proxies all the way: the leftmost one is as close as we get.
        return forwarded[0][:_MAX_ADDRESS] if forwarded else peer

    def _is_trusted(self, address: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)
