"""Run-time helpers that the service, the clients and the tools share; imports none of them.

config.py    ConfigError and the parsers every WXLOGIN_* reader uses (listen addresses, ...)
logs.py      log set-up: one line per record on stderr, written in blocks (text or JSON)
log_context.py  the call a log line belongs to (request id, user_id), on every record
metrics_server.py  Prometheus /metrics on a thread of its own (service and edge)
serve.py     serve until SIGTERM/SIGINT, then drain (WXLOGIN_DRAIN_SECONDS)
workers.py   WXLOGIN_WORKERS: a parent supervising N workers on one SO_REUSEPORT address
process.py   child processes that die with their parent, and their "listening on" line
"""
