"""Child processes that die with their parent, and the one stdout line that names their port."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

# "emulator listening on http://127.0.0.1:9090", "wxlogin service listening on port 50051"
LISTENING = re.compile(rb"listening on (?:port |https?://)?(?:\S*:)?(\d+)")


def dies_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv`, run so that the kernel SIGTERMs it when its parent dies.

    If the parent is killed hard (SIGKILL, a crash), no child is left behind
    holding a port or the data dir's lock. util-linux's setpriv sets
    PR_SET_PDEATHSIG and execs the command (same pid, so "parent" stays us).
    Not a preexec_fn: that forces fork() instead of vfork(), and grpcio >= 1.80
    crashes a forked child of a process with live channels (grpc issue 43055).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]
