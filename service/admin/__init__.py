"""wxlogin-admin, the operator's CLI: users, sessions, log out everywhere, keys, access tokens.

`python -m service.admin --help` (or the `wxlogin-admin` console script). It reads
the service's own configuration (Settings.from_env), works on the service's
MongoDB through the store (service/store/operators.py), and never prints a
token or a session_key.
"""

from service.admin._cli import main, run

__all__ = ["main", "run"]
