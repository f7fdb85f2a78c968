"""Dev-only tooling: the dev stack (`make run`), its child processes, the demo (`make demo`).

May import everything; nothing in `service/`, `clients/` or `runtime/` imports it.
"""
