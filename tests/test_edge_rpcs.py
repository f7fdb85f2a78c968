"""The edge's caller entry: every RPC its routes call, granted by the dev stack, the
rehearsal and the README's example (one missing answered its route 500 CALLER_FORBIDDEN)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from bench.rehearsal.stack import CALLERS as REHEARSAL_CALLERS
from clients.edge import app as edge_app
from devtools.devstack import DEV_CALLERS

ROOT = Path(__file__).resolve().parents[1]


def called_rpcs() -> set[str]:
    """The RPC names the edge's routes pass to `_timed` (every upstream call goes through it)."""
    tree = ast.parse(Path(edge_app.__file__).read_text())
    return {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_timed"
        and isinstance(node.args[1], ast.Constant)
    }


def test_rpcs_names_every_rpc_the_routes_call() -> None:
    assert called_rpcs() == set(edge_app.RPCS)
    assert len(edge_app.RPCS) == 6


def test_the_dev_stack_and_the_rehearsal_grant_the_edge_every_one() -> None:
    assert set(DEV_CALLERS["edge"]) == set(edge_app.RPCS)
    assert set(REHEARSAL_CALLERS["edge"]) == set(edge_app.RPCS)


def test_the_readme_example_grants_the_edge_every_one() -> None:
    """The callers file of "Setting it up" (a heredoc in a shell block), read as TOML."""
    readme = (ROOT / "README.md").read_text()
    heredoc = re.search(r"<<CALLERS\n(.*?)\nCALLERS\n", readme, flags=re.DOTALL)
    assert heredoc is not None, "the README's callers file example is gone"
    callers = tomllib.loads(re.sub(r"\$\(.*\)", "x", heredoc.group(1)))["callers"]
    assert set(callers["edge"]["rpcs"]) == set(edge_app.RPCS)
