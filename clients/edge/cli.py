"""The `wxlogin-edge` console script: the edge (a clear line without the server extra)."""

from __future__ import annotations

import sys


def main() -> int:
    """Run the edge (`python -m clients.edge`); exit 1 naming what to install if it cannot."""
    try:
        from clients.edge.__main__ import main as run
    except ModuleNotFoundError as error:
        # `pip install wxlogin` is the client library alone; the programs need the server's.
        print(
            f"wxlogin-edge: the Python package {error.name!r} is missing: "
            "install the servers with pip install 'wxlogin[server]'",
            file=sys.stderr,
        )
        return 1
    return run()
