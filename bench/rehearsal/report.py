"""The rehearsal's results as text: one line per phase and the targets, and the README table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.readme_block import rewrite_block
from bench.rehearsal.load import KINDS

BLOCK = "rehearsal:results"
SHORT = {"login": "logins", "check_session": "CheckSession", "http_session": "GET /v1/session",
         "decrypt": "decrypts"}  # fmt: skip


def _cell(phase: dict[str, Any], kind: str) -> str:
    return f"{phase['requests'][kind]} / {phase['failed'][kind]}"


def _reasons(phase: dict[str, Any]) -> str:
    found = [
        f"{kind} {reason} x{count}"
        for kind, counted in phase["failures"].items()
        for reason, count in counted.items()
    ]
    return "; ".join(found) or "none"


def markdown(results: dict[str, Any]) -> str:
    """Per phase: calls / failed by kind, failures by reason, tokens lost, gap, health; then
    the targets."""
    head = ["phase", "s", *(f"{SHORT[k]} (calls / failed)" for k in KINDS)]
    head += ["failures by reason", "tokens lost", "longest login gap", "all healthy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for phase in results["phases"]:
        cells = [phase["phase"], str(phase["seconds"]), *(_cell(phase, k) for k in KINDS)]
        cells += [
            _reasons(phase),
            str(phase["tokens_lost"]),
            f"{phase['longest_login_gap_s']} s",
            "yes" if phase["healthy"] else "NO",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for checked in results["targets"]:
        lines.append(
            f"- {checked['result']}: {checked['text']} ({checked['value']}{checked['unit']})"
        )
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, results: dict[str, Any], note: str) -> bool:
    """Put the table (and `note`, how it was measured) in the README's rehearsal block."""
    return rewrite_block(readme, BLOCK, f"{note}\n\n{markdown(results)}")
