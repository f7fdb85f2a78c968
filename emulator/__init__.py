"""A local stand-in for WeChat's APIs, for development, tests and benchmarks.

WeChat's endpoints, as documented: ``GET /sns/jscode2session``; ``POST
/cgi-bin/stable_token`` (normal mode: the same token until ``--access-token-overlap``
seconds (300) before expiry, then a new one while the old one still works; force mode:
the old ones fail with 40001 at once, at most 20 a day (45009) and 30 s apart (45011));
``POST /wxa/business/getuserphonenumber?access_token=`` (phone codes are single use, 5
minutes); ``GET /wxa/checksession`` and ``GET /wxa/resetusersessionkey`` (``signature =
hmac_sha256(key=session_key, msg="")`` hex of the user's current session_key, else 87009).
Tokens superseded by a forced refresh answer 40001, expired ones 42001, unknown ones 40014.

And a ``/_dev`` control API:

- ``POST /_dev/login {"appid","user"}`` plays ``wx.login()`` and returns a fresh code;
  ``POST /_dev/user-data`` encrypts user data under the user's current session_key;
  ``POST /_dev/users`` sets a user up (``unionid``, ``blocked``).
- ``POST /_dev/users`` also takes ``phone`` and ``country_code`` (digits; "86" by default);
  ``POST /_dev/phone-code {"appid","user","ttl"}`` plays the getPhoneNumber button for
  such a user and returns a phone code.
- ``GET /_dev/access-tokens`` shows token lifetimes and forced refreshes per app;
  ``POST /_dev/access-tokens/invalidate {"appid"}`` makes the current token fail with
  40001 while normal-mode stable_token still answers it (only force mode helps);
  ``POST /_dev/clock {"advance": seconds}`` moves the emulator's time forward.
- ``POST /_dev/faults {"latency_ms","errcode","http_status","drop","times","use_code",
  "endpoint"}`` queues deterministic faults for the next requests to ``endpoint``
  (``jscode2session`` by default, or ``stable_token``, ``getuserphonenumber``,
  ``checksession``, ``resetusersessionkey``), in order; ``DELETE /_dev/faults`` forgets
  them. ``use_code`` does the real work (spends the code) before the answer goes wrong
  (a reply lost after WeChat acted).
- ``POST /_dev/chaos {"rate": 0.3, "seed": 42, "kinds": [...], "stall_ms": 2000}``
  makes each jscode2session request (that no queued fault took) fail with
  probability ``rate``; the kind is drawn from ``kinds`` by an RNG seeded with
  ``seed`` (chosen and answered when omitted), so a seed and an order of requests
  always give the same faults. Kinds: ``busy`` (errcode -1, code not spent),
  ``http5xx`` (HTTP 500, 502 or 503 with an HTML body, code not spent), ``drop``
  (the code is spent, then the connection closes with no answer), ``stall``
  (``stall_ms`` of silence, then the normal answer). ``GET /_dev/chaos`` shows the
  setting and the faults injected per kind; ``DELETE /_dev/chaos`` stops it.
- ``GET /_dev/stats`` counts requests per endpoint: ``jscode2session_requests``,
  ``stable_token_requests``, ``getuserphonenumber_requests``, ``checksession_requests``,
  ``resetusersessionkey_requests`` (``POST /_dev/stats/reset`` zeroes them).
"""

from emulator.app import init_app

__all__ = ["init_app"]
