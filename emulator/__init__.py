"""A local stand-in for WeChat's jscode2session API, for development, tests and benchmarks.

Besides ``GET /sns/jscode2session`` it serves a ``/_dev`` control API:

- ``POST /_dev/login {"appid","user"}`` plays ``wx.login()`` and returns a fresh code;
  ``POST /_dev/user-data`` encrypts user data under the user's current session_key;
  ``POST /_dev/users`` sets a user up (``unionid``, ``blocked``).
- ``POST /_dev/faults {"latency_ms","errcode","http_status","drop","times","use_code"}``
  queues deterministic faults for the next jscode2session requests, in order;
  ``DELETE /_dev/faults`` forgets them. ``use_code`` spends the code before the
  answer goes wrong (a reply lost after WeChat acted).
- ``POST /_dev/chaos {"rate": 0.3, "seed": 42, "kinds": [...], "stall_ms": 2000}``
  makes each jscode2session request (that no queued fault took) fail with
  probability ``rate``; the kind is drawn from ``kinds`` by an RNG seeded with
  ``seed`` (chosen and answered when omitted), so a seed and an order of requests
  always give the same faults. Kinds: ``busy`` (errcode -1, code not spent),
  ``http5xx`` (HTTP 500, 502 or 503 with an HTML body, code not spent), ``drop``
  (the code is spent, then the connection closes with no answer), ``stall``
  (``stall_ms`` of silence, then the normal answer). ``GET /_dev/chaos`` shows the
  setting and the faults injected per kind; ``DELETE /_dev/chaos`` stops it.
- ``GET /_dev/stats`` counts jscode2session requests (``POST /_dev/stats/reset``).
"""

from emulator.app import init_app

__all__ = ["init_app"]
